"""Hybrid rollouts: :func:`generate` checks its arguments and hands them to the rollout engine that runs them.

The engines (:mod:`hrpo.engines`) share the sampling primitives of :mod:`hrpo.sampling` and give the same tokens,
latents and log-probs for the same row seeds; they differ only in how a decode step runs.
"""

from __future__ import annotations

from functools import partial

import torch

from .engines.eager import generate_eager
from .engines.static import generate_fast
from .engines.weights import unsupported_reason
from .gate import HybridGate
from .latent import LatentConfig
from .sampling import (MarkerMatcher, Rollout, SamplingConfig, marker_matcher, rollout_row_seeds, rollout_setup,
                       row_uniforms, sample_tokens)

# the sampling names are re-exported: they lived here before hrpo.sampling existed, and user code imports them
__all__ = ["generate", "resolve_engine", "MarkerMatcher", "Rollout", "SamplingConfig", "marker_matcher",
           "rollout_row_seeds", "row_uniforms", "sample_tokens"]


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


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingConfig, *,
             gate: HybridGate | None, matcher: MarkerMatcher | None, eos_token_ids: list[int], pad_token_id: int,
             generator: torch.Generator | None = None, row_seeds: torch.Tensor | None = None, group_size: int = 1,
             mode: str | None = None, engine: str = "auto", latent: LatentConfig | None = None) -> Rollout:
    """Sample completions for left-padded prompts (B, P).

    ``mode`` (default: hybrid with a gate, else discrete) is hybrid (HRPO), discrete (GRPO: plain embeddings),
    latent (feed the latent alone), hidden (feed the last hidden state), or one of the latent-reasoning family
    (soft, mixture, multiplex; :mod:`hrpo.latent`, with its options ``latent``). ``model`` is any HF causal LM (or
    PeftModel) accepting ``inputs_embeds``, ``attention_mask``, ``position_ids`` and a KV cache. Decoding stops
    when every row has produced an EOS or after ``sampling.max_new_tokens`` tokens. With ``group_size`` G > 1,
    rows come in runs of G identical prompts (the G samples of one question): each prompt is prefilled once
    and its KV cache shared by the group. Sampling noise is a function of ``row_seeds`` (B,) int64 (see
    :func:`row_uniforms`; drawn from ``generator`` when None). ``engine`` picks the decode loop: eager
    (:mod:`hrpo.engines.eager`: HF forward with a dynamic cache), static (:mod:`hrpo.engines.static`: a static
    KV cache), graph (:mod:`hrpo.engines.graph`: that step compiled and replayed as a CUDA graph) or auto (the
    fastest that supports the model).
    """
    mode, row_seeds = rollout_setup(mode, gate, matcher, row_seeds, generator, prompt_mask, prompt_ids.device)
    engine = resolve_engine(engine, model, mode)
    run = generate_eager if engine == "eager" else partial(generate_fast, engine=engine)
    return run(model, prompt_ids, prompt_mask, sampling, gate=gate, matcher=matcher, eos_token_ids=eos_token_ids,
               pad_token_id=pad_token_id, row_seeds=row_seeds, group_size=group_size, mode=mode, latent=latent)
