"""The static engine's decode loop: a static KV cache, fused projections, one :func:`decode_step` per token.

Same semantics as the eager loop of :mod:`hrpo.engines.eager` (same sampling noise per row seed, same thinking
span, latents, gate and log-probs); ``engine='graph'`` replays the same step as CUDA graphs
(:mod:`hrpo.engines.graph`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..gate import HybridGate
from ..latent import LatentConfig, check_latent, noise_scale
from ..sampling import MarkerMatcher, Rollout, SamplingConfig, rollout_setup, rows_repeat
from . import native
from .graph import CHECK_LAG, SYNC_EVERY, captured_engine
from .layers import decoder_layer, model_modules
from .options import OPTIONS
from .state import (StepSpec, action_shape, allocate_state, collect_rollout, decode_step, fill_rope, prefill,
                    reset_outputs, run_steps)
from .weights import decode_weights, step_gate, weights_signature

CACHE_BUCKET = 128  # cache lengths are rounded up to a multiple of this, so one graph serves many prompt lengths


def merge_lora_here(model) -> bool:
    """Whether the static engine merges LoRA for this rollout: fp32 weights on a CPU (see :data:`OPTIONS`)."""
    return OPTIONS.merge_lora_on_cpu and all(dtype == torch.float32 and device.type == "cpu"
                                             for _, dtype, device, _, _ in weights_signature(model))


def rope_is_static(rotary) -> bool:
    """Whether the rotary module's frequencies never depend on the positions asked for (transformers' "dynamic" and
    "longrope" recompute them from the largest), so a rollout's RoPE can be computed once (:func:`fill_rope`)."""
    return getattr(rotary, "rope_type", None) not in ("dynamic", "longrope")


def native_layers(weights, state, modules, batch: int, group: int = 1,
                  prompt_len: int = 0) -> native.DecodeLayers | None:
    """The decode step's layers as one call of hrpo's CPU kernel where :data:`OPTIONS` ``.native_layers`` asks
    (and ``.attention`` is "auto": an explicit attention keeps the aten layers) and the step qualifies
    (:func:`hrpo.engines.native.layers_unsupported`), else None (the aten ops). ``group``, ``prompt_len``: rows
    in runs of ``group`` share their prompt's ``prompt_len`` cache slots (see :class:`native.DecodeLayers`). The
    call also writes the step's logits and hidden state into ``state``."""
    if not OPTIONS.native_layers or OPTIONS.attention != "auto":
        return None
    if native.layers_unsupported(weights, state.kv, state.valid, modules.act, batch) is not None:
        return None
    return native.DecodeLayers(weights, state.kv, state.valid, batch, group, prompt_len, logits=state.logits,
                               hidden=state.hidden)


def _bucket(length: int) -> int:
    return int(math.ceil(length / CACHE_BUCKET) * CACHE_BUCKET)


@torch.no_grad()
def generate_fast(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingConfig, *,
                  gate: HybridGate | None, matcher: MarkerMatcher | None, eos_token_ids: list[int],
                  pad_token_id: int, generator: torch.Generator | None = None,
                  row_seeds: torch.Tensor | None = None, group_size: int = 1, mode: str | None = None,
                  engine: str = "static", sync_every: int | None = None, check_lag: int | None = None,
                  latent: LatentConfig | None = None) -> Rollout:
    """:func:`hrpo.rollout.generate` on the static engine (``engine='static'``) or its CUDA graph ('graph').

    ``sync_every``, ``check_lag``: see :func:`run_steps` (static defaults 1 and 0; graph :data:`SYNC_EVERY` and
    :data:`CHECK_LAG`). They change only how many masked steps run after every row finished, never the result.
    """
    device = prompt_ids.device
    batch, length = prompt_ids.shape
    max_new = sampling.max_new_tokens
    mode, row_seeds = rollout_setup(mode, gate, matcher, row_seeds, generator, prompt_mask, device)
    latent = latent or LatentConfig()
    check_latent(latent, mode, sampling.top_k, sampling.top_p)
    modules = model_modules(model)
    if matcher is not None:
        matcher.step(torch.zeros(1, dtype=torch.long, device=device), torch.zeros(1, dtype=torch.long, device=device))
    spec = StepSpec(sampling=sampling, mode=mode, gate=gate, matcher=matcher,
                    eos=torch.tensor(eos_token_ids or [-1], dtype=torch.long, device=device),
                    pad_token_id=pad_token_id, max_new=max_new, latent=latent,
                    noise_scale=noise_scale(latent, modules.embed.weight))
    group = group_size if group_size > 1 and rows_repeat(prompt_ids, prompt_mask, group_size) else 1

    if engine == "graph":
        captured = captured_engine(model, spec, batch, _bucket(length + max_new))
        state, weights = captured.state, captured.weights
        step_fn = lambda t: captured.replay(length + t + 1)  # noqa: E731
        sync_every, check_lag = sync_every or SYNC_EVERY, CHECK_LAG if check_lag is None else check_lag
        layer_fn, last_fn = captured.prefill_layer, captured.last.replay
    else:
        weights = decode_weights(model, merge_lora=merge_lora_here(model))
        spec = replace(spec, gate=step_gate(spec.gate))
        state = allocate_state(weights, batch, length + max_new, max_new, modules.embed.weight.shape[1],
                               weights.lm_head.shape[0], mode != "discrete", modules.embed.weight.dtype, device,
                               **action_shape(spec, weights.lm_head.shape[0]),
                               rope_table=rope_is_static(modules.rotary))
        layers = native_layers(weights, state, modules, batch, group, length)
        step_fn = lambda t: decode_step(state, spec, weights, modules, decoder_layer,  # noqa: E731
                                        attend=length + t + 1, layers=layers)
        sync_every, check_lag = sync_every or 1, check_lag or 0
        layer_fn, last_fn = decoder_layer, None
    prefill(state, prompt_ids, prompt_mask, group, weights, modules, layer_fn)
    if state.rope_cos is not None:
        fill_rope(state, modules.rotary)
    reset_outputs(state, row_seeds)
    run_steps(state, spec, modules, step_fn, sync_every, check_lag, last_fn)
    return collect_rollout(state, prompt_ids, prompt_mask)
