"""Split-KV attention for one decode step (a Triton kernel; used by the CUDA-graph rollout engine).

One query token per row attends over a key/value cache. SDPA's kernels run one program per (row, KV head) and
walk the keys in sequence, which leaves a decode step latency-bound (~15 us per layer at batch 64 on an H200,
whatever the length). Here the keys are split into chunks, each (row, KV head, chunk) is one program, and a
second small kernel merges the chunks by their log-sum-exp (flash-decoding). The query heads that share a KV
head are one block of rows, so each key and value is read once. The step's own key and value can be passed
in: the kernel then writes them into the cache as well (no separate write kernel).

Arithmetic as flash attention: scores and the softmax in fp32, probabilities rounded to the value dtype for the
product with V, accumulation in fp32, one rounding of the output.
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # not installed (or broken): the engine then uses SDPA
    triton = None

BLOCK_N = 64  # keys per inner iteration
TARGET_PROGRAMS = 1024  # split the keys until about this many programs run (a few per multiprocessor)


def available() -> bool:
    """Whether Triton is importable (the kernels then run on CUDA, or on CPU under TRITON_INTERPRET=1)."""
    return triton is not None


if triton is not None:
    NEG = tl.constexpr(-1.0e30)  # "minus infinity" that keeps exp() finite: a chunk without valid keys adds 0

    @triton.jit
    def _partial_kernel(Q, K, V, VALID, ACC, MAX, SUM, NEW, SLOT,
                        stride_qb, stride_qh, stride_qg, stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn, stride_valid, stride_new, stride_nb, stride_nh,
                        n_keys, num_kv_heads, group, scale, CHUNK: tl.constexpr,
                        BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                        PRECISION: tl.constexpr, UPCAST: tl.constexpr, WRITE_NEW: tl.constexpr):
        bh = tl.program_id(0)
        split = tl.program_id(1)
        splits = tl.num_programs(1)
        b = bh // num_kv_heads
        h = bh % num_kv_heads
        rows = tl.arange(0, BLOCK_G)
        dims = tl.arange(0, HEAD_DIM)
        offs = tl.arange(0, BLOCK_N)
        q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qg + dims[None, :],
                    mask=rows[:, None] < group, other=0.0)
        best = tl.full([BLOCK_G], NEG, tl.float32)
        total = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
        start = split * CHUNK
        if WRITE_NEW:  # this step's key and value: attended at cache slot SLOT, and written there by its chunk
            new_at = tl.load(SLOT)
            new_k = tl.load(NEW + b * stride_nb + h * stride_nh + dims)
            new_v = tl.load(NEW + stride_new + b * stride_nb + h * stride_nh + dims)
            owner = (new_at >= start) & (new_at < start + CHUNK)
            tl.store(K + b * stride_kb + h * stride_kh + new_at * stride_kn + dims, new_k, mask=owner & (dims >= 0))
            tl.store(V + b * stride_vb + h * stride_vh + new_at * stride_vn + dims, new_v, mask=owner & (dims >= 0))
        for first in range(0, CHUNK, BLOCK_N):  # CHUNK: a multiple of BLOCK_N
            n = start + first + offs
            inside = n < n_keys
            valid = tl.load(VALID + b * stride_valid + n, mask=inside, other=0) != 0
            k = tl.load(K + b * stride_kb + h * stride_kh + n[:, None] * stride_kn + dims[None, :],
                        mask=inside[:, None], other=0.0)
            if WRITE_NEW:  # the slot's cache entry may be read before the store above lands: use the new key
                k = tl.where((n == new_at)[:, None], new_k[None, :], k)
            if UPCAST:  # Triton's CPU interpreter: bf16 dot is broken there; fp32 of the same products
                scores = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee") * scale
            else:
                scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            scores = tl.where(valid[None, :], scores, NEG)
            new_best = tl.maximum(best, tl.max(scores, 1))
            probs = tl.where(valid[None, :], tl.exp(scores - new_best[:, None]), 0.0)
            rescale = tl.exp(best - new_best)
            total = total * rescale + tl.sum(probs, 1)
            v = tl.load(V + b * stride_vb + h * stride_vh + n[:, None] * stride_vn + dims[None, :],
                        mask=inside[:, None], other=0.0)
            if WRITE_NEW:
                v = tl.where((n == new_at)[:, None], new_v[None, :], v)
            if UPCAST:
                pv = tl.dot(probs.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
            else:
                pv = tl.dot(probs.to(v.dtype), v, input_precision=PRECISION)
            acc = acc * rescale[:, None] + pv
            best = new_best
        slot = (bh * splits + split) * BLOCK_G + rows
        tl.store(ACC + slot[:, None] * HEAD_DIM + dims[None, :], acc)
        tl.store(MAX + slot, best)
        tl.store(SUM + slot, total)

    @triton.jit
    def _merge_kernel(ACC, MAX, SUM, OUT, stride_ob, stride_oh, stride_og, num_kv_heads, group,
                      SPLITS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr):
        bh = tl.program_id(0)
        b = bh // num_kv_heads
        h = bh % num_kv_heads
        rows = tl.arange(0, BLOCK_G)
        dims = tl.arange(0, HEAD_DIM)
        parts = tl.arange(0, BLOCK_S)
        slots = (bh * SPLITS + parts[:, None]) * BLOCK_G + rows[None, :]  # (BLOCK_S, BLOCK_G)
        real = parts[:, None] < SPLITS
        best = tl.load(MAX + slots, mask=real, other=NEG)
        total = tl.load(SUM + slots, mask=real, other=0.0)
        top = tl.max(best, 0)
        weight = tl.exp(best - top[None, :])
        denominator = tl.sum(weight * total, 0)
        out = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
        for s in range(0, SPLITS):
            slot = (bh * SPLITS + s) * BLOCK_G + rows
            w = tl.exp(tl.load(MAX + slot) - top)
            out += w[:, None] * tl.load(ACC + slot[:, None] * HEAD_DIM + dims[None, :])
        out = out / denominator[:, None]
        tl.store(OUT + b * stride_ob + h * stride_oh + rows[:, None] * stride_og + dims[None, :],
                 out.to(OUT.dtype.element_ty), mask=rows[:, None] < group)


def supports(head_dim: int) -> bool:
    """Whether :func:`decode_attention` handles heads of this size (Triton present, a power of two >= 16)."""
    return available() and head_dim >= 16 and head_dim & (head_dim - 1) == 0


def split_plan(rows: int, n_keys: int) -> tuple[int, int]:
    """(number of chunks, keys per chunk) for ``rows`` (batch x KV heads) programs over ``n_keys`` keys."""
    most = max(1, math.ceil(n_keys / BLOCK_N))
    splits = min(most, max(1, math.ceil(TARGET_PROGRAMS / rows)))
    chunk = math.ceil(math.ceil(n_keys / splits) / BLOCK_N) * BLOCK_N
    return math.ceil(n_keys / chunk), chunk


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                     scale: float, new: torch.Tensor | None = None, slot: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, Hq, 1, D), keys/values (B, Hkv, A, D) (any strides, last one 1), valid (B, A) bool (a key a row
    may attend to; at least one per row) -> attention output (B, Hq, 1, D) in q's dtype.

    ``new`` (2, B, Hkv, 1, D) and ``slot`` (1,) long (on the device, so a captured graph reads it each replay):
    this step's key and value, written into keys/values (views of the cache) at position ``slot`` < A by the
    kernel itself, and attended there (no separate cache write)."""
    batch, heads, _, dim = q.shape
    kv_heads, n_keys = keys.shape[1], keys.shape[2]
    if keys.stride(-1) != 1 or values.stride(-1) != 1:
        raise ValueError("decode_attention needs keys and values with a contiguous last dimension")
    write_new = new is not None
    if write_new and (new.shape != (2, batch, kv_heads, 1, dim) or new.stride(-1) != 1 or slot is None):
        raise ValueError(f"decode_attention: new must be (2, {batch}, {kv_heads}, 1, {dim}) with a contiguous last "
                         f"dimension, with a slot; got {tuple(new.shape)}")
    if not write_new:
        new, slot = q, q  # unused pointers (WRITE_NEW is a compile-time switch)
    group = heads // kv_heads
    queries = q.reshape(batch, kv_heads, group, dim)
    block_g = max(16, triton.next_power_of_2(group))
    splits, chunk = split_plan(batch * kv_heads, n_keys)
    partial = torch.empty(batch * kv_heads, splits, block_g, dim, dtype=torch.float32, device=q.device)
    best = torch.empty(batch * kv_heads, splits, block_g, dtype=torch.float32, device=q.device)
    total = torch.empty_like(best)
    out = torch.empty(batch, kv_heads, group, dim, dtype=q.dtype, device=q.device)
    precision = "ieee" if q.dtype == torch.float32 else None  # fp32 inputs: no tf32 rounding
    _partial_kernel[(batch * kv_heads, splits)](
        queries, keys, values, valid, partial, best, total, new, slot,
        queries.stride(0), queries.stride(1), queries.stride(2), keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), valid.stride(0),
        new.stride(0) if write_new else 0, new.stride(1) if write_new else 0, new.stride(2) if write_new else 0,
        n_keys, kv_heads, group, scale, CHUNK=chunk, BLOCK_G=block_g, BLOCK_N=BLOCK_N, HEAD_DIM=dim,
        PRECISION=precision, UPCAST=q.device.type != "cuda", WRITE_NEW=write_new)
    _merge_kernel[(batch * kv_heads,)](
        partial, best, total, out, out.stride(0), out.stride(1), out.stride(2), kv_heads, group,
        SPLITS=splits, BLOCK_G=block_g, BLOCK_S=triton.next_power_of_2(splits), HEAD_DIM=dim)
    return out.view(batch, heads, 1, dim)


def reference_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """What :func:`decode_attention` computes, in fp64 with plain ops (the oracle of its tests and GPU check):
    same shapes in, (B, Hq, 1, D) fp64 out."""
    group = q.shape[1] // keys.shape[1]
    k = keys.double().repeat_interleave(group, dim=1)
    v = values.double().repeat_interleave(group, dim=1)
    scores = (q.double() @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
