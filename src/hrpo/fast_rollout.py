"""Fast hybrid rollouts: a static KV cache, fused projections, and (on CUDA) a compiled step replayed as a graph.

Same semantics as the eager loop in :mod:`hrpo.rollout` (same sampling noise per row seed, same thinking span,
latents, gate and log-probs); only the decode machinery differs:

* the decoder layers of Llama-family models (llama, qwen2, qwen3, mistral) run from fused copies of their
  weights (q/k/v and gate/up concatenated into one GEMM each; the active LoRA adapters' A matrices stacked under
  W in the same GEMM and their B applied in its fp32 epilogue, never merged into W; rewritten in place every
  call; a projection with neither partner nor adapter reads the parameter itself), taken through public module
  attributes; nothing in transformers or peft is patched;
* keys and values live in a pre-allocated (2, B, kv_heads, L, head_dim) cache per layer; a decode step writes
  slot P + t and attends over the first A slots (all filled ones) with a (B, A) validity mask; the query heads
  of one KV head attend together (folded into the query axis for SDPA, one block of rows in the split-KV
  kernel of :mod:`hrpo.decode_attention`, used on CUDA) instead of repeating keys and values;
* one step (sample + latent + gate + forward) only reads and writes fixed buffers, so on CUDA its layer halves
  and the parts around the layers (sampling, latent, gate, RoPE; final norm, lm_head) are compiled with
  ``torch.compile`` and the step is captured as CUDA graphs per (batch, cache length), one per attended
  length; finished rows keep stepping (masked), and the host checks "all finished" every few steps only,
  without draining the GPU's queue;
* the prefill runs the distinct prompts once through the same layer halves, compiled there for any number and
  length of prompts (one compilation with dynamic shapes).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .decode_attention import decode_attention, supports as supports_decode_kernel
from .gate import HybridGate, gated_mix, thinking_inputs
from .rollout import (MarkerMatcher, Rollout, SamplingConfig, fed_back_vectors, kept_count, position_ids_from_mask,
                      rollout_setup, row_uniforms, rows_repeat, sample_tokens)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
CACHE_BUCKET = 128  # cache lengths are rounded up to a multiple of this, so one graph serves many prompt lengths
ATTEND_BUCKET = 64  # the CUDA graph engine captures one graph per attended length, a multiple of this
SYNC_EVERY = 4  # graph replays between host checks for "every row finished"
CHECK_LAG = 1  # the graph loop acts on the check made this many checks ago (the GPU never waits for the host)


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model) -> str | None:
    """Why the static engine cannot run ``model`` (None when it can)."""
    base = _base_model(model)
    config = getattr(base, "config", None)
    if not hasattr(base, "get_decoder") or not hasattr(base, "get_output_embeddings") or config is None:
        return "a model that is not a transformers causal LM"
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type '{config.model_type}' (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    decoder = base.get_decoder()
    if not all(hasattr(decoder, n) for n in ("rotary_emb", "layers", "norm")):
        return "a decoder without rotary_emb/layers"
    if config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
        return "sliding-window attention"  # Mistral windows every layer whenever the config sets one
    for layer in decoder.layers:
        if getattr(layer.self_attn, "sliding_window", None):
            return "sliding-window attention"
        mlp = layer.mlp
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            return "an MLP other than gate/up/down"
        for module in _projections(layer):
            for adapter in _active_lora(module):
                variant = getattr(module, "lora_variant", {}).get(adapter)
                dora = getattr(module, "use_dora", {}).get(adapter, False)
                if variant is not None or dora:
                    return f"{'DoRA' if dora else type(variant).__name__} adapters (only plain LoRA is fused)"
    for module in (base.get_input_embeddings(), base.get_output_embeddings()):
        if _active_lora(module):
            return "LoRA adapters on the input or output embeddings"
    return None


def _active_lora(module) -> list[str]:
    """The names of the LoRA adapters that change ``module``'s output now (none for a plain module)."""
    if getattr(module, "base_layer", None) is None or module.disable_adapters or module.merged:
        return []
    own = set(getattr(module, "lora_A", {})) | set(getattr(module, "lora_embedding_A", {}))
    return [a for a in module.active_adapters if a in own]


def resolve_engine(engine: str, model, mode: str) -> str:
    """'auto' | 'eager' | 'static' | 'graph' -> the engine that will run (raises for an impossible explicit one)."""
    if engine == "eager":
        return engine
    reason = unsupported_reason(model)
    on_cuda = next(model.parameters()).device.type == "cuda"
    if engine == "auto":
        return "eager" if reason else "graph" if on_cuda else "static"
    if engine not in ("static", "graph"):
        raise ValueError(f"unknown rollout engine '{engine}' (auto, eager, static, graph)")
    if reason:
        raise ValueError(f"rollout_engine={engine} does not support {reason}; use rollout_engine=eager or auto")
    if engine == "graph" and not on_cuda:
        raise ValueError("rollout_engine=graph needs a CUDA device; use static (or auto) on CPU")
    return engine


# ----------------------------------------------------------------------------------------------- weights


def _projections(layer):
    a, m = layer.self_attn, layer.mlp
    return [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]


@dataclass
class LinearParts:
    """What a (peft) linear layer applies now: y = x W^T + b + sum_a s_a (x A_a^T) B_a^T over its active LoRA
    adapters a, each with A_a (r_a, in) in ``lora_a``, B_a (out, r_a) in ``lora_b`` and scaling s_a in ``scales``
    (empty lists without an active, unmerged adapter). Tensors are the module's own (detached, not copied)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    lora_a: list[torch.Tensor] = field(default_factory=list)
    lora_b: list[torch.Tensor] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return sum(a.shape[0] for a in self.lora_a)


def linear_parts(module) -> LinearParts:
    """The :class:`LinearParts` of an ``nn.Linear`` or a peft LoRA ``Linear``.

    The LoRA path is kept apart instead of merged into W: in bf16 an update of LoRA's size is mostly below the
    rounding step of W's entries, so a merged copy would roll out with a different policy than the one trained.
    """
    base = getattr(module, "base_layer", None)
    if base is None:
        return LinearParts(module.weight.detach(), None if module.bias is None else module.bias.detach())
    parts = LinearParts(base.weight.detach(), None if base.bias is None else base.bias.detach())
    lora_biases = []
    for a in _active_lora(module):
        parts.lora_a.append(module.lora_A[a].weight.detach())
        parts.lora_b.append(module.lora_B[a].weight.detach())
        parts.scales.append(module.scaling[a])
        if module.lora_B[a].bias is not None:  # LoraConfig(lora_bias=True)
            lora_biases.append(module.lora_B[a].bias.detach() * module.scaling[a])
    if lora_biases:
        bias = sum(b.float() for b in lora_biases) + (0.0 if parts.bias is None else parts.bias.float())
        parts.bias = bias.to(base.weight.dtype)
    return parts


Copy = tuple  # (target, source, scale): target <- source * scale, cast to the target's dtype


def run_copies(copies: list[Copy]) -> None:
    """Carry out ``copies`` with a few multi-tensor ops (on CUDA a few launches for all the copies of one dtype
    pair between dense tensors, instead of one per copy); a copy whose target is its source is skipped."""
    copies = [c for c in copies if c[0].data_ptr() != c[1].data_ptr()]
    scaled = [c for c in copies if c[2] != 1.0]
    pairs = [(c[0], c[1]) for c in copies if c[2] == 1.0]
    if scaled:  # B * s in the adapter's dtype, then one cast into the target: as peft scales
        products = torch._foreach_mul([c[1] for c in scaled], [float(c[2]) for c in scaled])
        pairs += zip([c[0] for c in scaled], products)
    groups: dict[tuple, tuple[list, list]] = {}  # the multi-tensor kernels take only dense tensors of one dtype
    for target, source in pairs:
        key = (target.dtype, source.dtype, target.is_contiguous() and source.is_contiguous())
        targets, sources = groups.setdefault(key, ([], []))
        targets.append(target)
        sources.append(source)
    for targets, sources in groups.values():
        torch._foreach_copy_(targets, sources)


def fuse(parts: list[LinearParts], name: str, out: dict | None = None,
         copies: list[Copy] | None = None) -> dict[str, torch.Tensor | None]:
    """One linear layer equivalent to ``parts`` side by side (outputs concatenated), LoRA folded in for speed.

    ``name``: the base weights concatenated, then every LoRA A stacked below them (out + R, in), so one GEMM
    gives both x W^T and x A^T; ``name_bias``: the biases (zeros for the A rows); ``name_lora_b``: the B matrices
    times their scaling, block-diagonal (out, R). All in the base weights' dtype: A and B rounded to bf16 change
    the update by ~2^-8 of itself, far below the bf16 step of the output it is added to (a LoRA update merged
    into a bf16 W instead mostly rounds away; see :func:`linear_parts`). A single plain weight is used as it is
    (no copy), so a step reads the parameter itself.

    ``out``: a dict holding an earlier result for parts of the same shapes (e.g. a whole layer's); those
    tensors are overwritten in place (no new memory, addresses kept for a captured graph) and returned.
    ``copies``: a list the writes are appended to (see :func:`run_copies`) instead of being done now.
    """
    lora = [p for p in parts if p.lora_a]
    weight = parts[0].weight
    if out is None:
        out = {name: None, f"{name}_bias": None, f"{name}_lora_b": None}
        if len(parts) == 1 and not lora:
            out[name] = weight
        else:
            rows = sum(p.weight.shape[0] + p.rank for p in parts)
            out[name] = weight.new_empty(rows, weight.shape[1])
        if lora:
            out[f"{name}_lora_b"] = weight.new_zeros(sum(p.weight.shape[0] for p in parts), sum(p.rank for p in lora))
        if any(p.bias is not None for p in parts):
            out[f"{name}_bias"] = weight.new_zeros(out[name].shape[0])  # zero where a part has no bias
    pending = [] if copies is None else copies
    fused, bias, blocks = out[name], out[f"{name}_bias"], out[f"{name}_lora_b"]
    row = 0
    for p in parts:
        pending.append((fused[row:row + p.weight.shape[0]], p.weight, 1.0))
        if p.bias is not None:
            pending.append((bias[row:row + p.weight.shape[0]], p.bias, 1.0))
        row += p.weight.shape[0]
    out_row = col = 0  # the A rows continue below the weights (row); the B blocks sit at (out_row, col)
    for p in parts:
        for a, b, scale in zip(p.lora_a, p.lora_b, p.scales):
            pending.append((fused[row:row + a.shape[0]], a, 1.0))
            pending.append((blocks[out_row:out_row + b.shape[0], col:col + a.shape[0]], b, scale))
            row += a.shape[0]
            col += a.shape[0]
        out_row += p.weight.shape[0]
    if copies is None:
        run_copies(pending)
    return {key: out[key] for key in (name, f"{name}_bias", f"{name}_lora_b")}


def project(x: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    """The fused linear ``name`` of :func:`fuse` on x (..., in) -> (..., out): one GEMM for x W^T + b and
    t = x A^T, then x W^T + b + t B^T accumulated in fp32 and rounded once (addmm)."""
    y = F.linear(x, w[name], w[f"{name}_bias"])
    b = w[f"{name}_lora_b"]
    if b is None:
        return y
    rank = b.shape[1]
    y, t = y.split([y.shape[-1] - rank, rank], dim=-1)
    shape = y.shape
    return torch.addmm(y.reshape(-1, shape[-1]), t.reshape(-1, rank), b.t()).view(shape)


@dataclass
class DecodeWeights:
    """Per-layer fused weights of a Llama-family decoder (tensors the step reads; rewritten in place)."""

    tensors: list[dict[str, torch.Tensor | None]]
    final_norm: torch.Tensor
    lm_head: torch.Tensor
    eps: float
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float


def weights_signature(model) -> tuple:
    """What the layout of :func:`decode_weights` depends on: per projection of the first layer its weight's
    shape, dtype and device, whether it has a bias, and its active LoRA rank (a different signature needs a new
    capture of the step)."""
    layer = _base_model(model).get_decoder().layers[0]
    signature = []
    for module in _projections(layer):
        p = linear_parts(module)
        signature.append((tuple(p.weight.shape), p.weight.dtype, p.weight.device, p.bias is None,
                          p.rank or None))
    return tuple(signature)


def decode_weights(model, into: DecodeWeights | None = None) -> DecodeWeights:
    """Fused copies of ``model``'s decoder weights, with the active LoRA adapters kept unmerged (see :func:`fuse`).

    ``into``: the result of an earlier call on a model of the same :func:`weights_signature`; the current
    weights are written into its tensors in place (what a captured CUDA graph reads; all copies in a few
    multi-tensor ops) and it is returned.
    """
    base = _base_model(model)
    decoder, config = base.get_decoder(), base.config
    layers, copies = [], []
    for i, layer in enumerate(decoder.layers):
        attn, mlp = layer.self_attn, layer.mlp
        old = None if into is None else into.tensors[i]
        fused = {}
        for name, modules in (("qkv", (attn.q_proj, attn.k_proj, attn.v_proj)), ("o", (attn.o_proj,)),
                              ("gate_up", (mlp.gate_proj, mlp.up_proj)), ("down", (mlp.down_proj,))):
            fused.update(fuse([linear_parts(m) for m in modules], name, old, copies))
        plain = {"input_norm": layer.input_layernorm.weight.detach(),
                 "post_norm": layer.post_attention_layernorm.weight.detach(),
                 "q_norm": attn.q_norm.weight.detach() if hasattr(attn, "q_norm") else None,
                 "k_norm": attn.k_norm.weight.detach() if hasattr(attn, "k_norm") else None}
        for key, value in plain.items():
            if old is None or value is None:
                fused[key] = value
            else:
                fused[key] = old[key]
                copies.append((old[key], value, 1.0))
        layers.append(fused)
    final_norm = decoder.norm.weight.detach()
    lm_head = linear_parts(base.get_output_embeddings()).weight
    if into is not None:
        run_copies(copies + [(into.final_norm, final_norm, 1.0), (into.lm_head, lm_head, 1.0)])
        return into
    run_copies(copies)
    attn0 = decoder.layers[0].self_attn
    head_dim = attn0.head_dim
    return DecodeWeights(
        tensors=layers,
        final_norm=final_norm,
        lm_head=lm_head,
        eps=float(getattr(config, "rms_norm_eps", 1e-6)),
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        head_dim=head_dim,
        scaling=float(getattr(attn0, "scaling", head_dim ** -0.5)),
    )


@dataclass
class ConcatenatedGate:
    """A :class:`HybridGate` whose two gate projections run as one GEMM: W_r and W_i stacked into ``weight``
    (2H, H) and their biases into ``bias`` (2H,), copies rewritten in place by :func:`concatenated_gate`
    (Lambda and c are read from the gate). Called as the gate is: (token_embeds, latents) -> (mixed, a)."""

    gate: HybridGate
    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, token_embeds: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = token_embeds.float()
        r_logits, i_logits = F.linear(e, self.weight, self.bias).chunk(2, dim=-1)
        return gated_mix(e, latents, r_logits, i_logits, self.gate.Lambda, self.gate.c, token_embeds.dtype)


def concatenated_gate(gate: HybridGate, into: ConcatenatedGate | None = None) -> ConcatenatedGate:
    """The :class:`ConcatenatedGate` of ``gate`` now; ``into``: an earlier one of the same gate, whose tensors
    (read by a captured graph) are overwritten in place and which is returned."""
    weights = [gate.gate_r.weight.detach(), gate.gate_i.weight.detach()]
    biases = [gate.gate_r.bias.detach(), gate.gate_i.bias.detach()]
    if into is None:
        return ConcatenatedGate(gate, torch.cat(weights), torch.cat(biases))
    hidden = gate.hidden_size
    run_copies([(into.weight[:hidden], weights[0], 1.0), (into.weight[hidden:], weights[1], 1.0),
                (into.bias[:hidden], biases[0], 1.0), (into.bias[hidden:], biases[1], 1.0)])
    return into


def step_gate(gate: HybridGate | None):
    """The gate a decode step calls: ``gate`` as it is, or its :class:`ConcatenatedGate` when
    :data:`OPTIONS` ``.concatenate_gate`` (the same mix; one GEMM of 2H outputs instead of two of H)."""
    return concatenated_gate(gate) if gate is not None and OPTIONS.concatenate_gate else gate


# ----------------------------------------------------------------------------------------------- forward


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


@dataclass
class GraphOptions:
    """How the CUDA-graph engine builds its step (module-level :data:`OPTIONS`; benchmarks compare variants)."""

    # decode-step attention: auto (the split-KV Triton kernel of hrpo.decode_attention on CUDA, else sdpa),
    # triton, sdpa (F.scaled_dot_product_attention) or matmul (two matmuls + fp32 softmax); prefill uses sdpa
    attention: str = "auto"
    compile_layers: bool = True  # torch.compile the decoder layer (one compiled body shared by all layers)
    compile_sampler: bool = True  # torch.compile the step around the layers: sampling, latent, gate, RoPE; lm_head
    compile_prefill: bool = True  # torch.compile the prefill's layer halves, with dynamic shapes
    compile_mode: str | None = None  # torch.compile mode, e.g. "max-autotune-no-cudagraphs"
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager": traced, run as aten ops; for tests)
    concatenate_gate: bool = True  # the hybrid gate's two fp32 projections as one GEMM (see ConcatenatedGate)


OPTIONS = GraphOptions()


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
    decoder = _base_model(model).get_decoder()
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


def last_logits(x, delta, weights: DecodeWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of :func:`decoder_layers` -> (logits (B, V) and normed hidden state (B, H) of the last position)."""
    hidden = rms_norm(x[:, -1] + delta[:, -1], weights.final_norm, weights.eps)
    return F.linear(hidden, weights.lm_head), hidden


def forward(x, positions, slots, mask, weights: DecodeWeights, modules: Modules, kv, layer_fn=decoder_layer):
    """x (B, Q, H) at ``positions`` (B, Q) written to cache ``slots`` (Q,) of each layer's ``kv`` (2, B, Hkv, L, D),
    attending where ``mask`` (B, 1, Q, A) is true over the first A cache positions -> (last logits (B, V), last
    normed hidden (B, H))."""
    cos, sin = modules.rotary(x, positions)
    x, delta = decoder_layers(x, cos, sin, slots, mask, weights, kv, modules.act, layer_fn)
    return last_logits(x, delta, weights)


# ----------------------------------------------------------------------------------------------- state


@dataclass
class DecodeState:
    """Every tensor one decode step reads or writes (fixed addresses, so a CUDA graph can replay the step)."""

    kv: list[torch.Tensor]  # per layer (2, B, Hkv, L, D): keys and values
    valid: torch.Tensor  # (B, L) bool: cache slots a query may attend to
    logits: torch.Tensor  # (B, V) logits of the latest forward
    hidden: torch.Tensor  # (B, H) its last normed hidden state
    positions: torch.Tensor  # (B, 1) RoPE position of the next input
    step: torch.Tensor  # () long: decode step t
    prompt_len: torch.Tensor  # () long: P, so the step writes slot P + t
    row_seeds: torch.Tensor
    finished: torch.Tensor
    marker_state: torch.Tensor
    tokens: torch.Tensor  # (B, N) outputs ...
    real: torch.Tensor
    thinking: torch.Tensor
    logprobs: torch.Tensor
    gate_mean: torch.Tensor
    latents: torch.Tensor | None


def allocate_state(weights: DecodeWeights, batch: int, cache_len: int, max_new: int, hidden_size: int,
                   vocab: int, latents: bool, dtype, device) -> DecodeState:
    kv = (2, batch, weights.num_kv_heads, cache_len, weights.head_dim)
    zeros = lambda *shape, **kw: torch.zeros(*shape, device=device, **kw)  # noqa: E731
    return DecodeState(
        kv=[zeros(*kv, dtype=dtype) for _ in weights.tensors],
        valid=zeros(batch, cache_len, dtype=torch.bool),
        logits=zeros(batch, vocab, dtype=dtype),
        hidden=zeros(batch, hidden_size, dtype=dtype),
        positions=zeros(batch, 1, dtype=torch.long),
        step=zeros((), dtype=torch.long),
        prompt_len=zeros((), dtype=torch.long),
        row_seeds=zeros(batch, dtype=torch.long),
        finished=zeros(batch, dtype=torch.bool),
        marker_state=zeros(batch, dtype=torch.long),
        tokens=zeros(batch, max_new, dtype=torch.long),
        real=zeros(batch, max_new, dtype=torch.bool),
        thinking=zeros(batch, max_new, dtype=torch.bool),
        logprobs=zeros(batch, max_new, dtype=torch.float32),
        gate_mean=torch.ones(batch, max_new, device=device),
        latents=zeros(batch, max_new, hidden_size, dtype=dtype) if latents else None,
    )


@dataclass
class StepSpec:
    """The constant parts of a decode step."""

    sampling: SamplingConfig
    mode: str
    gate: HybridGate | None
    matcher: MarkerMatcher | None
    eos: torch.Tensor  # (E,) long
    pad_token_id: int
    max_new: int


def sample_into(state: DecodeState, spec: StepSpec, embed) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Sample step t from ``state.logits`` and record it in column t; returns (tokens, vectors, thinking)."""
    t = state.step
    column = t.view(1)
    tokens, logprobs, kept_probs, kept_ids = sample_tokens(state.logits, spec.sampling,
                                                           row_uniforms(state.row_seeds, t))
    real = ~state.finished
    tokens = tokens.masked_fill(state.finished, spec.pad_token_id)
    finished = state.finished | (tokens[:, None] == spec.eos).any(dim=-1)
    vectors = None
    if spec.mode != "discrete":
        marker_state = spec.matcher.table[state.marker_state, tokens]
        state.marker_state.copy_(marker_state)
        thinking = ~finished & (marker_state < spec.matcher.done_state) & (t < spec.max_new - 1)
        vocab = state.logits.shape[-1]
        # Llama-family embeddings are unscaled: the weight rows are the embedding outputs (a fixed buffer)
        dense = embed.weight if kept_count(spec.sampling, vocab) == vocab else None
        vectors = fed_back_vectors(spec.mode, kept_probs, kept_ids, embed, dense, state.hidden)
        state.latents.index_copy_(1, column, vectors[:, None].to(state.latents.dtype))
    else:
        thinking = torch.zeros_like(finished)
    state.finished.copy_(finished)
    state.tokens.index_copy_(1, column, tokens[:, None])
    state.real.index_copy_(1, column, real[:, None])
    state.thinking.index_copy_(1, column, thinking[:, None])
    state.logprobs.index_copy_(1, column, logprobs.masked_fill(~real, 0.0)[:, None])
    return tokens, vectors, thinking


def next_inputs(state: DecodeState, spec: StepSpec, embed) -> torch.Tensor:
    """Sample step t, record it, and return the input embedding (B, 1, H) it is fed back as."""
    tokens, vectors, thinking = sample_into(state, spec, embed)
    token_embeds = embed(tokens[:, None])
    inputs, mean_a = thinking_inputs(spec.mode, spec.gate, token_embeds,
                                     None if vectors is None else vectors[:, None], thinking[:, None])
    state.gate_mean.index_copy_(1, state.step.view(1), mean_a)
    return inputs.to(token_embeds.dtype)


def step_inputs(state: DecodeState, spec: StepSpec, modules: Modules):
    """The start of step t: sample, record and build its input (:func:`next_inputs`), mark its cache slot P + t
    valid, and RoPE at its position. Returns (inputs (B, 1, H), slot (1,), cos, sin (B, 1, D))."""
    inputs = next_inputs(state, spec, modules.embed)
    slot = (state.prompt_len + state.step).view(1)
    state.valid.index_fill_(1, slot, True)
    cos, sin = modules.rotary(inputs, state.positions)
    return inputs, slot, cos, sin


def step_outputs(state: DecodeState, x, delta, weights: DecodeWeights) -> None:
    """The end of step t: the next logits and hidden state from the layers' output, and t + 1."""
    logits, hidden = last_logits(x, delta, weights)
    state.logits.copy_(logits)
    state.hidden.copy_(hidden)
    state.positions.add_(1)
    state.step.add_(1)


def decode_step(state: DecodeState, spec: StepSpec, weights: DecodeWeights, modules: Modules, layer_fn,
                start=step_inputs, finish=step_outputs, attend: int | None = None) -> None:
    """One full step t: sample, record, build the next input (gated in the thinking span), forward it,
    attending over the first ``attend`` cache slots (default all; must cover slot P + t). ``layer_fn``,
    ``start`` and ``finish`` may be compiled versions of :func:`decoder_layer`, :func:`step_inputs` and
    :func:`step_outputs`."""
    inputs, slot, cos, sin = start(state, spec, modules)
    x, delta = decoder_layers(inputs, cos, sin, slot, state.valid[:, None, None, :attend], weights, state.kv,
                              modules.act, layer_fn)
    finish(state, x, delta, weights)


def prefill(state: DecodeState, prompt_ids, prompt_mask, group: int, weights: DecodeWeights,
            modules: Modules, layer_fn=decoder_layer) -> None:
    """Run the prompts (B, P) once per distinct prompt (rows in runs of ``group``), fill cache slots [0, P),
    the validity mask, the first logits and positions (``layer_fn``: see :func:`prefill_layer`)."""
    batch, length = prompt_ids.shape
    rows = slice(None, None, group)
    ids, mask = prompt_ids[rows], prompt_mask[rows].bool()
    positions = position_ids_from_mask(mask)
    n, device = ids.shape[0], ids.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    attend = (causal[None] & mask[:, None, :]) | torch.eye(length, dtype=torch.bool, device=device)[None]
    kv_shape = (2, n, weights.num_kv_heads, length, weights.head_dim)
    prompt_kv = [torch.empty(kv_shape, dtype=state.kv[0].dtype, device=device) for _ in weights.tensors]
    slots = torch.arange(length, device=device)
    logits, hidden = forward(modules.embed(ids), positions, slots, attend[:, None], weights, modules, prompt_kv,
                             layer_fn)
    for cache, fresh in zip(state.kv, prompt_kv):
        grouped = cache.view(2, n, group, *cache.shape[2:])  # rows of one prompt side by side
        grouped[..., :length, :].copy_(fresh[:, :, None])
        cache[..., length:, :].zero_()
    state.valid.zero_()
    state.valid[:, :length].copy_(prompt_mask.bool())
    state.logits.copy_(logits.repeat_interleave(group, dim=0))
    state.hidden.copy_(hidden.repeat_interleave(group, dim=0))
    state.positions.copy_(positions[:, -1:].repeat_interleave(group, dim=0) + 1)
    state.prompt_len.fill_(length)


def reset_outputs(state: DecodeState, row_seeds: torch.Tensor) -> None:
    state.step.zero_()
    state.row_seeds.copy_(row_seeds)
    state.finished.zero_()
    state.marker_state.zero_()
    for t in (state.tokens, state.real, state.thinking, state.logprobs):
        t.zero_()
    state.gate_mean.fill_(1.0)
    if state.latents is not None:
        state.latents.zero_()


# ----------------------------------------------------------------------------------------------- engines


@dataclass
class GraphEngine:
    """Captured CUDA graphs of :func:`decode_step`, one per attended length (a multiple of
    :data:`ATTEND_BUCKET` up to the cache length), with the buffers they replay on."""

    key: tuple
    weights: DecodeWeights
    state: DecodeState
    spec: StepSpec
    graphs: dict[int, torch.cuda.CUDAGraph]
    last: torch.cuda.CUDAGraph  # :func:`sample_into` alone: the last column, sampled and never fed back
    compiled: str  # what ran compiled: "layers+sampler+prefill", ..., or "none"
    prefill_layer: object  # the layer function of this engine's prefill (see :func:`prefill_layer`)

    def replay(self, filled: int) -> None:
        """One decode step when cache slots [0, filled) will be written (prompt + this step's input)."""
        self.graphs[attend_length(filled, max(self.graphs))].replay()


_GRAPHS: dict[int, GraphEngine] = {}  # one captured engine per model (the latest shape)


def _compiled(fn, dynamic: bool | None = False):
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # one compiled variant per model shape, not per call
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    return torch.compile(fn, dynamic=dynamic, mode=OPTIONS.compile_mode, backend=OPTIONS.compile_backend)


def _mark_dynamic(t: torch.Tensor | None, *dims: int) -> None:
    import torch._dynamo

    for dim in dims:
        if t is not None and t.shape[dim] > 1:  # size 1 is always specialised by the compiler
            torch._dynamo.mark_dynamic(t, dim)


def prefill_layer(compiled: bool):
    """The decoder layer :func:`prefill` runs: its halves compiled once for every prompt count and length
    (those two dimensions are marked dynamic, the weights' stay static; a count or length of 1 compiles once
    more), or the eager layer."""
    if not compiled:
        return decoder_layer
    pre, post = _compiled(attention_inputs, dynamic=None), _compiled(layer_output, dynamic=None)

    def prompt_pre(x, delta, w, cos, sin, dims):
        for t in (x, delta, cos, sin):  # (n, P, ...)
            _mark_dynamic(t, 0, 1)
        return pre(x, delta, w, cos, sin, dims)

    def prompt_post(x, attn, w, dims, act):
        _mark_dynamic(x, 0, 1)
        _mark_dynamic(attn, 0, 2)  # (n, heads, P, D)
        return post(x, attn, w, dims, act)

    return make_layer(prompt_pre, prompt_post)


def _prefill_layer_for(weights: DecodeWeights, modules: Modules, dtype, device):
    """The prefill layer :data:`OPTIONS` asks for, compiled now on 2 prompts of 8 tokens (a scratch cache) so
    that a compiler error shows while the engine is built; on one, the eager layer (with a warning)."""
    if not OPTIONS.compile_prefill:
        return decoder_layer
    layer_fn = prefill_layer(True)
    try:
        _warm_up_prefill(layer_fn, weights, modules, dtype, device)
    except Exception as err:
        warnings.warn(f"compiling the prefill failed ({type(err).__name__}: {err}); it runs eager")
        return decoder_layer
    return layer_fn


def _warm_up_prefill(layer_fn, weights: DecodeWeights, modules: Modules, dtype, device) -> None:
    n, length = 2, 8
    ids = torch.zeros(n, length, dtype=torch.long, device=device)
    positions = torch.arange(length, device=device).expand(n, length)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    scratch = [torch.zeros(2, n, weights.num_kv_heads, length, weights.head_dim, dtype=dtype, device=device)
               for _ in weights.tensors]
    forward(modules.embed(ids), positions, torch.arange(length, device=device), causal.expand(n, 1, length, length),
            weights, modules, scratch, layer_fn)


def step_functions(compile_layers: bool, compile_sampler: bool):
    """(layer_fn, start, finish) for :func:`decode_step`: the layer halves compiled or not, and the step's
    start and end (sampler, gate, RoPE; final norm, lm_head, counters) compiled or not."""
    layer_fn = make_layer(_compiled(attention_inputs), _compiled(layer_output)) if compile_layers else decoder_layer
    if not compile_sampler:
        return layer_fn, step_inputs, step_outputs
    return layer_fn, _compiled(step_inputs), _compiled(step_outputs)


def _capture_once(model, weights: DecodeWeights, spec: StepSpec, key, batch, cache_len, compile_layers: bool,
                  compile_sampler: bool) -> GraphEngine:
    modules = model_modules(model)
    embed = modules.embed
    state = allocate_state(weights, batch, cache_len, spec.max_new, embed.weight.shape[1],
                           weights.lm_head.shape[0], spec.mode != "discrete", embed.weight.dtype,
                           embed.weight.device)
    layer_fn, start, finish = step_functions(compile_layers, compile_sampler)
    state.valid[:, 0] = True
    lengths = sorted({attend_length(n, cache_len) for n in range(1, cache_len + 1)})
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compile, autotune, allocate; attention plans for every length
        for attend in [cache_len] * 2 + lengths:
            state.step.zero_()
            decode_step(state, spec, weights, modules, layer_fn, start, finish, attend)
        sample_into(state, spec, embed)
    torch.cuda.current_stream().wait_stream(side)
    graphs, pool = {}, torch.cuda.graph_pool_handle()  # one memory pool: the graphs never run at once
    for attend in lengths:
        graphs[attend] = torch.cuda.CUDAGraph()
        state.step.zero_()
        with torch.cuda.graph(graphs[attend], pool=pool):
            decode_step(state, spec, weights, modules, layer_fn, start, finish, attend)
    last = torch.cuda.CUDAGraph()  # eager ops, captured: one launch instead of about a hundred
    with torch.cuda.graph(last, pool=pool):
        sample_into(state, spec, embed)
    prefill_fn = _prefill_layer_for(weights, modules, embed.weight.dtype, embed.weight.device)
    compiled = "+".join(n for n, on in (("layers", compile_layers), ("sampler", compile_sampler),
                                        ("prefill", prefill_fn is not decoder_layer)) if on) or "none"
    return GraphEngine(key=key, weights=weights, state=state, spec=spec, graphs=graphs, last=last,
                       compiled=compiled, prefill_layer=prefill_fn)


def _capture(model, weights: DecodeWeights, spec: StepSpec, key, batch, cache_len) -> GraphEngine:
    """Capture the step, compiled as :data:`OPTIONS` asks; on compiler or capture errors retry with less
    compiled (warning once per failure)."""
    wanted = (OPTIONS.compile_layers, OPTIONS.compile_sampler)
    attempts = list(dict.fromkeys([wanted, (wanted[0], False), (False, False)]))
    for i, (layers, sampler) in enumerate(attempts):
        try:
            return _capture_once(model, weights, spec, key, batch, cache_len, layers, sampler)
        except Exception as err:
            torch.cuda.synchronize()
            if use_decode_kernel(weights.lm_head.device, weights.head_dim):  # the kernel first, then the compiler
                warnings.warn(f"CUDA-graph capture with the split-KV attention kernel failed ({type(err).__name__}: "
                              f"{err}); using SDPA from now on")
                OPTIONS.attention = "sdpa"
                return _capture(model, weights, spec, key, batch, cache_len)
            if i == len(attempts) - 1:
                raise
            warnings.warn(f"CUDA-graph capture with compiled layers={layers} sampler={sampler} failed "
                          f"({type(err).__name__}: {err}); retrying with less compiled")
    raise AssertionError("unreachable")


def _graph_engine(model, spec: StepSpec, batch: int, cache_len: int) -> GraphEngine:
    s = spec.sampling
    key = (batch, cache_len, spec.max_new, spec.mode, id(spec.gate), id(spec.matcher), tuple(spec.eos.tolist()),
           spec.pad_token_id, s.temperature, s.top_k, s.top_p, s.greedy, s.logprob_temperature,
           weights_signature(model))
    engine = _GRAPHS.get(id(model))
    if engine is not None and engine.key == key:
        decode_weights(model, into=engine.weights)  # this call's weights, where the graphs read them
        if isinstance(engine.spec.gate, ConcatenatedGate):
            concatenated_gate(spec.gate, into=engine.spec.gate)
        return engine
    _GRAPHS.pop(id(model), None)
    torch.cuda.empty_cache()
    engine = _capture(model, decode_weights(model), replace(spec, gate=step_gate(spec.gate)), key, batch, cache_len)
    _GRAPHS[id(model)] = engine
    return engine


def _bucket(length: int) -> int:
    return int(math.ceil(length / CACHE_BUCKET) * CACHE_BUCKET)


def attend_length(filled: int, cache_len: int) -> int:
    """Cache slots a graph attends over when [0, filled) hold keys: ``filled`` rounded up to a multiple of
    :data:`ATTEND_BUCKET`, at most ``cache_len`` (attention reads only as much of the cache as is in use)."""
    return min(cache_len, int(math.ceil(filled / ATTEND_BUCKET) * ATTEND_BUCKET))


@torch.no_grad()
def generate_fast(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingConfig, *,
                  gate: HybridGate | None, matcher: MarkerMatcher | None, eos_token_ids: list[int],
                  pad_token_id: int, generator: torch.Generator | None = None,
                  row_seeds: torch.Tensor | None = None, group_size: int = 1, mode: str | None = None,
                  engine: str = "static", sync_every: int | None = None, check_lag: int | None = None) -> Rollout:
    """:func:`hrpo.rollout.generate` on the static engine (``engine='static'``) or its CUDA graph ('graph').

    ``sync_every``, ``check_lag``: see :func:`run_steps` (static defaults 1 and 0; graph :data:`SYNC_EVERY` and
    :data:`CHECK_LAG`). They change only how many masked steps run after every row finished, never the result.
    """
    device = prompt_ids.device
    batch, length = prompt_ids.shape
    max_new = sampling.max_new_tokens
    mode, row_seeds = rollout_setup(mode, gate, matcher, row_seeds, generator, prompt_mask, device)
    if matcher is not None:
        matcher.step(torch.zeros(1, dtype=torch.long, device=device), torch.zeros(1, dtype=torch.long, device=device))
    spec = StepSpec(sampling=sampling, mode=mode, gate=gate, matcher=matcher,
                    eos=torch.tensor(eos_token_ids or [-1], dtype=torch.long, device=device),
                    pad_token_id=pad_token_id, max_new=max_new)
    group = group_size if group_size > 1 and rows_repeat(prompt_ids, prompt_mask, group_size) else 1
    modules = model_modules(model)

    if engine == "graph":
        graph_engine = _graph_engine(model, spec, batch, _bucket(length + max_new))
        state, weights = graph_engine.state, graph_engine.weights
        step_fn = lambda t: graph_engine.replay(length + t + 1)  # noqa: E731
        sync_every, check_lag = sync_every or SYNC_EVERY, CHECK_LAG if check_lag is None else check_lag
        layer_fn, last_fn = graph_engine.prefill_layer, graph_engine.last.replay
    else:
        weights = decode_weights(model)
        spec = replace(spec, gate=step_gate(spec.gate))
        state = allocate_state(weights, batch, length + max_new, max_new, modules.embed.weight.shape[1],
                               weights.lm_head.shape[0], mode != "discrete", modules.embed.weight.dtype, device)
        step_fn = lambda t: decode_step(state, spec, weights, modules, decoder_layer,  # noqa: E731
                                        attend=length + t + 1)
        sync_every, check_lag = sync_every or 1, check_lag or 0
        layer_fn, last_fn = decoder_layer, None
    prefill(state, prompt_ids, prompt_mask, group, weights, modules, layer_fn)
    reset_outputs(state, row_seeds)
    run_steps(state, spec, modules, step_fn, sync_every, check_lag, last_fn)
    return _rollout(state, prompt_ids, prompt_mask)


def _finished_probe(finished: torch.Tensor):
    """Start copying "every row finished" to the host behind the work queued so far; returns what
    :func:`_probe_answer` reads (on CUDA without waiting for the work queued later)."""
    if not finished.is_cuda:
        return bool(finished.all()), None
    flag = torch.empty((), dtype=torch.bool, pin_memory=True)
    flag.copy_(finished.all(), non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return flag, event


def _probe_answer(probe) -> bool:
    flag, event = probe
    if event is not None:
        event.synchronize()
    return bool(flag)


def run_steps(state: DecodeState, spec: StepSpec, modules: Modules, step_fn, sync_every: int,
              check_lag: int = 0, last_fn=None) -> None:
    """Run ``step_fn(t)`` (one :func:`decode_step`) for t < N - 1, then sample the last column (never fed back;
    ``last_fn()`` if given, else :func:`sample_into`) unless every row finished. Every ``sync_every`` steps the
    loop asks whether every row finished and stops on the answer to the question asked ``check_lag`` checks
    earlier: with a lag the host waits only for work queued that long ago, so the GPU always has the next steps
    queued (the extra steps are masked)."""
    probes = []
    for t in range(spec.max_new - 1):
        step_fn(t)
        if (t + 1) % sync_every == 0:
            probes.append(_finished_probe(state.finished))
            if len(probes) > check_lag and _probe_answer(probes[-1 - check_lag]):
                return
    if bool(state.finished.all()):
        return
    if last_fn is None:
        sample_into(state, spec, modules.embed)
    else:
        last_fn()


def _rollout(state: DecodeState, prompt_ids, prompt_mask) -> Rollout:
    """Trim the output buffers to the columns the eager loop would have produced (it stops once all rows end)."""
    real = state.real
    columns = int(real.sum(dim=1).max()) if bool(state.finished.all()) else real.shape[1]
    cut = slice(0, columns)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=state.tokens[:, cut].clone(),
        completion_mask=real[:, cut].clone(),
        thinking_mask=state.thinking[:, cut].clone(),
        latents=None if state.latents is None else state.latents[:, cut].clone(),
        logprobs=state.logprobs[:, cut].clone(),
        gate_mean=state.gate_mean[:, cut].clone(),
    )
