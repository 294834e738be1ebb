"""Fused decoder weights for the fast engines, read through public module attributes (nothing is patched).

q/k/v and gate/up are concatenated into one GEMM each; the active LoRA adapters' A matrices are stacked under W
in the same GEMM and their B applied in its fp32 epilogue, never merged into W. The fused tensors are rewritten
in place on every call (a captured CUDA graph reads them); a projection with neither partner nor adapter reads
the parameter itself. Also: which models the fast engines support, and the hybrid gate as one GEMM.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..gate import HybridGate, gated_mix, mix_inputs
from . import native
from .options import OPTIONS


SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model) -> str | None:
    """Why the static engine cannot run ``model`` (None when it can)."""
    base = base_model(model)
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


_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; for fp32 on a CPU outside compiled code, by :data:`OPTIONS` ``.cpu_linear``:
    "native", hrpo's kernel (:mod:`hrpo.engines.native`) for a decode step's few rows, else oneDNN's; "onednn",
    oneDNN's (at 8 rows about 2x faster than the default GEMM with AVX512, 1.2x with AVX2); "aten", F.linear.
    The same products up to fp32 rounding (another summation order). ``out``: where hrpo's kernel writes the
    result if it runs (a contiguous tensor of the result's shape); check which tensor came back."""
    if x.dtype == torch.float32 and x.device.type == "cpu" and not torch.compiler.is_compiling():
        if OPTIONS.cpu_linear == "native" and native.supports(x, weight, bias):
            return native.linear(x, weight, bias, out=out)
        if OPTIONS.cpu_linear in ("native", "onednn") and _ONEDNN_LINEAR:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


@lru_cache(maxsize=1)
def _warn_without_onednn() -> None:
    warnings.warn("this torch build has no oneDNN linear (torch.ops.mkldnn._linear_pointwise): the CPU decode step "
                  "uses F.linear")


def project(x: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    """The fused linear ``name`` of :func:`fuse` on x (..., in) -> (..., out): one GEMM for x W^T + b and
    t = x A^T, then x W^T + b + t B^T accumulated in fp32 and rounded once (addmm)."""
    y = linear(x, w[name], w[f"{name}_bias"])
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
    layer = base_model(model).get_decoder().layers[0]
    signature = []
    for module in _projections(layer):
        p = linear_parts(module)
        signature.append((tuple(p.weight.shape), p.weight.dtype, p.weight.device, p.bias is None,
                          p.rank or None))
    return tuple(signature)


def merged(parts: LinearParts) -> LinearParts:
    """``parts`` with its LoRA updates merged into a new weight, W + sum_a s_a B_a A_a (no adapter left).

    Only for fp32 weights: there the merge changes an output by fp32 rounding (~1e-7 of it), while in bf16 most of
    a LoRA-sized update would round away (see :func:`linear_parts`)."""
    if not parts.lora_a:
        return parts
    if parts.weight.dtype != torch.float32:
        raise ValueError(f"LoRA is merged only into float32 weights, not {parts.weight.dtype}")
    weight = parts.weight
    for a, b, scale in zip(parts.lora_a, parts.lora_b, parts.scales):
        weight = torch.addmm(weight, b, a, alpha=scale)
    return LinearParts(weight, parts.bias)


def decode_weights(model, into: DecodeWeights | None = None, merge_lora: bool = False) -> DecodeWeights:
    """Fused copies of ``model``'s decoder weights, with the active LoRA adapters kept unmerged (see :func:`fuse`).

    ``into``: the result of an earlier call on a model of the same :func:`weights_signature`; the current
    weights are written into its tensors in place (what a captured CUDA graph reads; all copies in a few
    multi-tensor ops) and it is returned. ``merge_lora``: fp32 weights only; merge the adapters into the fused
    weights instead (see :func:`merged`): one GEMM per projection and no LoRA epilogue, which on a CPU, where a
    decode step's small GEMMs read their weights from memory, saves the epilogue's reads and calls.
    """
    if merge_lora and into is not None:
        raise ValueError("merge_lora builds new tensors; it cannot write into captured ones")
    if OPTIONS.cpu_linear in ("native", "onednn") and not _ONEDNN_LINEAR:
        _warn_without_onednn()
    base = base_model(model)
    decoder, config = base.get_decoder(), base.config
    layers, copies = [], []
    for i, layer in enumerate(decoder.layers):
        attn, mlp = layer.self_attn, layer.mlp
        old = None if into is None else into.tensors[i]
        fused = {}
        for name, modules in (("qkv", (attn.q_proj, attn.k_proj, attn.v_proj)), ("o", (attn.o_proj,)),
                              ("gate_up", (mlp.gate_proj, mlp.up_proj)), ("down", (mlp.down_proj,))):
            parts = [linear_parts(m) for m in modules]
            fused.update(fuse([merged(p) for p in parts] if merge_lora else parts, name, old, copies))
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
        logits = linear(e, self.weight, self.bias)
        # hrpo's kernel where it applies; it returns fp32, the mix's dtype only for fp32 token embeddings
        fp32 = token_embeds.dtype == torch.float32
        fused = native.gated_mix(e, latents, logits, self.gate.Lambda, self.gate.c) if fp32 else None
        if fused is not None:
            return fused
        r_logits, i_logits = logits.chunk(2, dim=-1)
        return gated_mix(e, latents, r_logits, i_logits, self.gate.Lambda, self.gate.c, token_embeds.dtype)

    def mix_inputs(self, token_embeds: torch.Tensor, latents: torch.Tensor,
                   thinking_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`hrpo.gate.mix_inputs` with this gate: ``(inputs_embeds (B, T, H), mean_a (B, T))``, in one call
        of hrpo's kernel where it applies (fp32, one step: :func:`hrpo.engines.native.gate_inputs`)."""
        fused = None
        if token_embeds.dtype == torch.float32:
            fused = native.gate_inputs(token_embeds, latents, thinking_mask, self.weight, self.bias,
                                       self.gate.Lambda, self.gate.c)
        return fused if fused is not None else mix_inputs(self, token_embeds, latents, thinking_mask)


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
