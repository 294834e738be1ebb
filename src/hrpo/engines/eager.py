"""The eager engine: the reference decode loop, the HF model's own forward with a dynamic KV cache.

Works for any HF causal LM (or PeftModel) accepting ``inputs_embeds``, ``attention_mask``, ``position_ids`` and a
KV cache; the fast engines (:mod:`hrpo.engines.static`, :mod:`hrpo.engines.graph`) are tested against it.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from ..gate import HybridGate, thinking_inputs
from ..latent import (FAMILY_MODES, LatentConfig, action_width, check_latent, cold_stop, draw, family_inputs,
                      noise_scale)
from ..sampling import (MarkerMatcher, Rollout, SamplingConfig, fed_back_vectors, kept_count, position_ids_from_mask,
                        row_uniforms, rows_repeat, sample_tokens)
from . import native


def cache_argument(model) -> str:
    """Name of the KV-cache keyword of ``model.forward``: 'cache' (transformers >= 5.2x) or 'past_key_values'."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.no_grad()
def generate_eager(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingConfig, *,
                   gate: HybridGate | None, matcher: MarkerMatcher | None, eos_token_ids: list[int],
                   pad_token_id: int, row_seeds: torch.Tensor, group_size: int, mode: str,
                   latent: LatentConfig | None = None) -> Rollout:
    """:func:`hrpo.rollout.generate` on the eager engine, with checked arguments: ``mode`` resolved and
    ``row_seeds`` (B,) on the prompts' device (see :func:`hrpo.sampling.rollout_setup`)."""
    latent = latent or LatentConfig()
    check_latent(latent, mode, sampling.top_k, sampling.top_p)
    family = mode in FAMILY_MODES
    batch, device = prompt_ids.shape[0], prompt_ids.device
    embed = model.get_input_embeddings()
    mixing = mode != "discrete"
    want_hidden = {"output_hidden_states": True} if mode == "hidden" else {}
    max_new = sampling.max_new_tokens
    eos = torch.tensor(eos_token_ids, device=device, dtype=torch.long)

    attention_mask = prompt_mask.long()
    positions = position_ids_from_mask(attention_mask)
    cache = {cache_argument(model): DynamicCache(config=model.config)}
    shared = group_size > 1 and rows_repeat(prompt_ids, prompt_mask, group_size)
    rows = slice(None, None, group_size) if shared else slice(None)
    out = model(inputs_embeds=embed(prompt_ids[rows]), attention_mask=attention_mask[rows],
                position_ids=positions[rows], use_cache=True, logits_to_keep=1, **cache, **want_hidden)
    last_logits = out.logits[:, -1]
    last_hidden = out.hidden_states[-1][:, -1] if want_hidden else None
    if shared:
        next(iter(cache.values())).batch_repeat_interleave(group_size)
        last_logits = last_logits.repeat_interleave(group_size, dim=0)
        last_hidden = last_hidden.repeat_interleave(group_size, dim=0) if want_hidden else None
    next_position = positions[:, -1:] + 1
    vocab_size = last_logits.shape[-1]
    dense_embeds = None  # (V, H) embedding outputs: the latent is dense only when no top-k keeps it sparse
    dense = kept_count(sampling, vocab_size) == vocab_size
    if mode in ("hybrid", "latent", *FAMILY_MODES) and dense:
        dense_embeds = embed(torch.arange(vocab_size, device=device))
    scale = noise_scale(latent, embed.weight)
    width = action_width(mode, latent, 0 if dense else kept_count(sampling, vocab_size))
    ids_out, values_out = [], []
    low_run = torch.zeros(batch, dtype=torch.long, device=device)

    tokens_out, logprobs_out, real_out, thinking_out, latents_out, gate_mean_out = [], [], [], [], [], []
    state = torch.zeros(batch, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    uniforms = row_uniforms(row_seeds[:, None], torch.arange(max_new, device=device))  # (B, N): one per step
    topk_lse, fused_draw = native.sampling_passes(device), native.sampling_draw(device)
    for step in range(max_new):
        tokens, logprobs, kept_probs, kept_ids = sample_tokens(last_logits, sampling, uniforms[:, step], topk_lse,
                                                               fused_draw)
        if family:
            in_span = ~finished & (state < matcher.done_state)
            drawn = draw(mode, latent, sampling, last_logits, tokens, logprobs, kept_probs, kept_ids, row_seeds,
                         step, in_span, dense)
            tokens, logprobs = drawn.tokens, drawn.logprobs
        tokens = tokens.masked_fill(finished, pad_token_id)
        real_out.append(~finished)
        finished = finished | torch.isin(tokens, eos)
        tokens_out.append(tokens)
        logprobs_out.append(logprobs.masked_fill(~real_out[-1], 0.0))
        last = step == max_new - 1
        if mixing:
            state = matcher.step(state, tokens)
            if mode == "soft":
                low_run, stop = cold_stop(latent, low_run, last_logits, sampling.temperature,
                                          in_span & (state < matcher.done_state))
                state = state.masked_fill(stop, matcher.done_state)
            thinking = ~finished & (state < matcher.done_state) & (not last)
            if family:
                vectors, family_lp = family_inputs(mode, latent, sampling, last_logits, drawn, kept_probs, kept_ids,
                                                   embed, dense_embeds, row_seeds, step, logprobs, thinking,
                                                   scale, embed.weight.dtype)
                logprobs_out[-1] = family_lp.masked_fill(~real_out[-1], 0.0)
                if width:
                    ids_out.append(drawn.action_ids)
                    values_out.append(drawn.action_values)
            else:
                vectors = fed_back_vectors(mode, kept_probs, kept_ids, embed, dense_embeds, last_hidden)
            latents_out.append(vectors)
        else:
            thinking = torch.zeros_like(finished)
        thinking_out.append(thinking)
        if last or bool(finished.all()):
            gate_mean_out.append(torch.ones(batch, device=device))
            break
        token_embeds = embed(tokens[:, None])
        inputs_embeds, mean_a = thinking_inputs(mode, gate, token_embeds, vectors[:, None] if mixing else None,
                                                thinking[:, None])
        gate_mean_out.append(mean_a[:, 0])
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=next_position,
                    use_cache=True, **cache, **want_hidden)
        last_logits = out.logits[:, -1]
        last_hidden = out.hidden_states[-1][:, -1] if want_hidden else None
        next_position = next_position + 1

    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=torch.stack(tokens_out, dim=1),
        completion_mask=torch.stack(real_out, dim=1),
        thinking_mask=torch.stack(thinking_out, dim=1),
        latents=torch.stack(latents_out, dim=1).to(embed.weight.dtype) if mixing else None,
        logprobs=torch.stack(logprobs_out, dim=1),
        gate_mean=torch.stack(gate_mean_out, dim=1),
        action_ids=torch.stack(ids_out, dim=1) if ids_out else None,
        action_values=torch.stack(values_out, dim=1) if values_out and values_out[0] is not None else None,
    )
