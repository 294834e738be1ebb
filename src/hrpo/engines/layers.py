"""The decoder-layer math of the fast engines (Llama-family: RMSNorm, RoPE, grouped-query attention, SwiGLU).

Keys and values live in a pre-allocated (2, B, kv_heads, L, head_dim) cache per layer; a decode step writes its
slot and attends over the first A slots with a validity mask. The query heads of one KV head attend together
(folded into the query axis for SDPA; one block of rows in the split-KV kernel of
:mod:`hrpo.engines.decode_attention`, used on CUDA) instead of repeating keys and values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .decode_attention import decode_attention, supports as supports_decode_kernel
from .options import OPTIONS
from .weights import DecodeWeights, base_model, linear, project


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama/Qwen RMSNorm, computed in fp32 and cast back, as transformers does."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x (B, heads, Q, D) with cos/sin (B, Q, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def use_decode_kernel(device: torch.device, head_dim: int) -> bool:
    """Whether decode steps attend with :func:`hrpo.decode_attention.decode_attention` (see :data:`OPTIONS`)."""
    wanted = OPTIONS.attention == "triton" or (OPTIONS.attention == "auto" and device.type == "cuda")
    return wanted and supports_decode_kernel(head_dim)


def fold_mask(mask: torch.Tensor, group: int, dtype) -> torch.Tensor:
    """(B, 1, Q, L) bool -> (B, 1, group * Q, L) additive mask (0 / -inf) for :func:`grouped_attention`."""
    batch, _, length, keys = mask.shape
    folded = mask[:, :, None].expand(batch, 1, group, length, keys).reshape(batch, 1, group * length, keys)
    return torch.zeros(folded.shape, dtype=dtype, device=mask.device).masked_fill(~folded, float("-inf"))


def grouped_attention(q, keys, values, mask, scale: float) -> torch.Tensor:
    """q (B, Hq, Q, D), keys/values (B, Hkv, L, D), mask (B, 1, G*Q, L) from :func:`fold_mask` -> (B, Hq, Q, D).

    The G = Hq/Hkv query heads that share a KV head are folded into the query axis, so keys and values are read
    once per KV head (no repeat).
    """
    batch, heads, length, dim = q.shape
    kv_heads = keys.shape[1]
    q = q.reshape(batch, kv_heads, (heads // kv_heads) * length, dim)
    if OPTIONS.attention == "matmul":
        scores = torch.matmul(q, keys.transpose(-1, -2)).float() * scale + mask.float()
        out = torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values)
    else:
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(batch, heads, length, dim)


def attention_inputs(x, delta, w: dict, cos, sin, dims: DecodeWeights):
    """x (B, Q, H) plus the previous layer's MLP output ``delta`` (None for the first layer) -> (the residual
    stream x + delta, rotated q (B, Hq, Q, D), this layer's new keys and values stacked (2, B, Hkv, Q, D))."""
    if delta is not None:  # the previous layer's last residual add, fused here with this layer's norm
        x = x + delta
    batch, length, _ = x.shape
    nh, nkv, hd = dims.num_heads, dims.num_kv_heads, dims.head_dim
    h = rms_norm(x, w["input_norm"], dims.eps)
    q, k, v = project(h, w, "qkv").split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q, k, v = q.view(batch, length, nh, hd), k.view(batch, length, nkv, hd), v.view(batch, length, nkv, hd)
    if w["q_norm"] is not None:
        q, k = rms_norm(q, w["q_norm"], dims.eps), rms_norm(k, w["k_norm"], dims.eps)
    fresh = torch.stack([rotate(k.transpose(1, 2), cos, sin), v.transpose(1, 2)])
    return x, rotate(q.transpose(1, 2), cos, sin), fresh


def layer_output(x, attn, w: dict, dims: DecodeWeights, act):
    """x (B, Q, H) and the attention output (B, Hq, Q, D) -> (x + o(attn), the MLP's output on it); the MLP's
    residual add is left to the next layer (or the final norm)."""
    batch, length, _ = x.shape
    x = x + project(attn.transpose(1, 2).reshape(batch, length, -1), w, "o")
    h = rms_norm(x, w["post_norm"], dims.eps)
    gate, up = project(h, w, "gate_up").chunk(2, dim=-1)
    return x, project(act(gate) * up, w, "down")


def make_layer(pre=attention_inputs, post=layer_output):
    """A decoder layer from its two halves (either may be compiled). The cache write and the attention between
    them stay outside the compiler: compiled in-place writes to a graph input copied the whole cache each step,
    and the attended length may then differ between captured graphs without a recompilation."""

    def layer(x, delta, w: dict, kv, slots, mask, cos, sin, dims: DecodeWeights, act):
        """One decoder layer on x + delta (B, Q, H) -> (x', delta'). Writes its keys/values for the Q positions
        at cache ``slots`` (Q,) of ``kv`` (2, B, Hkv, L, D), then attends over its first ``mask.shape[-1]``
        positions."""
        x, q, fresh = pre(x, delta, w, cos, sin, dims)
        length = mask.shape[-1]
        keys, values = kv[0, :, :, :length], kv[1, :, :, :length]
        if mask.dim() == 2:  # (B, A) validity: one decode token per row, on the split-KV kernel, which also
            # writes this step's keys and values into the cache (one kernel less per layer)
            attn = decode_attention(q, keys, values, mask, dims.scaling, new=fresh, slot=slots)
        else:
            kv.index_copy_(3, slots, fresh)
            attn = grouped_attention(q, keys, values, mask, dims.scaling)
        return post(x, attn, w, dims, act)

    return layer


decoder_layer = make_layer()


@dataclass
class Modules:
    """The model pieces the engine calls as they are (embedding, rotary embedding, activation)."""

    embed: torch.nn.Module
    rotary: torch.nn.Module
    act: object


def model_modules(model) -> Modules:
    decoder = base_model(model).get_decoder()
    return Modules(embed=model.get_input_embeddings(), rotary=decoder.rotary_emb, act=decoder.layers[0].mlp.act_fn)


def decoder_layers(x, cos, sin, slots, mask, weights: DecodeWeights, kv, act, layer_fn=decoder_layer):
    """x (B, Q, H) with its RoPE ``cos``/``sin`` (B, Q, D) through every layer (see :func:`forward`) -> (the
    residual stream, the last layer's MLP output), both (B, Q, H): their sum is the last hidden state."""
    if x.shape[1] == 1 and use_decode_kernel(x.device, weights.head_dim):
        mask = mask[:, 0, 0]
    else:
        mask = fold_mask(mask, weights.num_heads // weights.num_kv_heads, x.dtype)
    delta = None
    for i, w in enumerate(weights.tensors):
        x, delta = layer_fn(x, delta, w, kv[i], slots, mask, cos, sin, weights, act)
    return x, delta


def last_logits(x, delta, weights: DecodeWeights, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of :func:`decoder_layers` -> (logits (B, V) and normed hidden state (B, H) of the last position).
    ``out``: a (B, V) tensor the logits may be written into (returned then; see :func:`linear`)."""
    hidden = rms_norm(x[:, -1] + delta[:, -1], weights.final_norm, weights.eps)
    return linear(hidden, weights.lm_head, out=out), hidden


def forward(x, positions, slots, mask, weights: DecodeWeights, modules: Modules, kv, layer_fn=decoder_layer):
    """x (B, Q, H) at ``positions`` (B, Q) written to cache ``slots`` (Q,) of each layer's ``kv`` (2, B, Hkv, L, D),
    attending where ``mask`` (B, 1, Q, A) is true over the first A cache positions -> (last logits (B, V), last
    normed hidden (B, H))."""
    cos, sin = modules.rotary(x, positions)
    x, delta = decoder_layers(x, cos, sin, slots, mask, weights, kv, modules.act, layer_fn)
    return last_logits(x, delta, weights)
