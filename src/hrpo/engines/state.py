"""The decode state of the fast engines and one decode step on it: sample, record, gate, forward.

A step (sample + latent + gate + forward) only reads and writes the fixed buffers of :class:`DecodeState`, so on
CUDA it can be captured as a graph (:mod:`hrpo.engines.graph`); finished rows keep stepping, masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..gate import HybridGate, thinking_inputs
from ..latent import FAMILY_MODES, LatentConfig, action_width, cold_stop, draw, family_inputs
from ..sampling import (MarkerMatcher, Rollout, SamplingConfig, fed_back_vectors, kept_count, position_ids_from_mask,
                        row_uniforms, sample_tokens)
from . import native
from .layers import Modules, decoder_layer, decoder_layers, forward, last_logits
from .weights import ConcatenatedGate, DecodeWeights


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
    uniforms: torch.Tensor  # (B, N) fp32: row_uniforms of each row's seed at each step
    finished: torch.Tensor
    marker_state: torch.Tensor
    tokens: torch.Tensor  # (B, N) outputs ...
    real: torch.Tensor
    thinking: torch.Tensor
    logprobs: torch.Tensor
    gate_mean: torch.Tensor
    latents: torch.Tensor | None
    low_run: torch.Tensor | None = None  # (B,) long: soft mode's consecutive low-entropy steps (cold stop)
    action_ids: torch.Tensor | None = None  # (B, N, n): a family mode's draws per step (hrpo.latent)
    action_values: torch.Tensor | None = None  # (B, N, n) fp32: their Gumbel-perturbed scores
    rope_cos: torch.Tensor | None = None  # (B, N, D): RoPE of every step's input, filled once (fill_rope)
    rope_sin: torch.Tensor | None = None


def allocate_state(weights: DecodeWeights, batch: int, cache_len: int, max_new: int, hidden_size: int,
                   vocab: int, latents: bool, dtype, device, action_width: int = 0,
                   action_values: bool = False, rope_table: bool = False) -> DecodeState:
    """The buffers of a rollout of ``batch`` rows, ``max_new`` steps, ``cache_len`` cache slots. ``rope_table``:
    hold every step's RoPE (:func:`fill_rope`) instead of computing it each step."""
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
        uniforms=zeros(batch, max_new),
        finished=zeros(batch, dtype=torch.bool),
        marker_state=zeros(batch, dtype=torch.long),
        tokens=zeros(batch, max_new, dtype=torch.long),
        real=zeros(batch, max_new, dtype=torch.bool),
        thinking=zeros(batch, max_new, dtype=torch.bool),
        logprobs=zeros(batch, max_new, dtype=torch.float32),
        gate_mean=torch.ones(batch, max_new, device=device),
        latents=zeros(batch, max_new, hidden_size, dtype=dtype) if latents else None,
        low_run=zeros(batch, dtype=torch.long),
        action_ids=zeros(batch, max_new, action_width, dtype=torch.long) if action_width else None,
        action_values=zeros(batch, max_new, action_width) if action_width and action_values else None,
        rope_cos=zeros(batch, max_new, weights.head_dim, dtype=dtype) if rope_table else None,
        rope_sin=zeros(batch, max_new, weights.head_dim, dtype=dtype) if rope_table else None,
    )


def action_shape(spec: "StepSpec", vocab: int) -> dict:
    """The ``action_width``/``action_values`` arguments of :func:`allocate_state` for ``spec``'s mode."""
    kept = kept_count(spec.sampling, vocab)
    width = action_width(spec.mode, spec.latent, 0 if kept == vocab else kept)
    gumbel = spec.mode == "soft" and spec.latent.noise == "gumbel"
    return {"action_width": width, "action_values": width > 0 and gumbel}


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
    latent: LatentConfig = LatentConfig()
    noise_scale: float = 0.0  # std of soft mode's Gaussian noise (hrpo.latent.noise_scale)


def sample_into(state: DecodeState, spec: StepSpec, embed) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Sample step t from ``state.logits`` and record it in column t; returns (tokens, vectors, thinking)."""
    t = state.step
    column = t.view(1)
    device = state.logits.device
    tokens, logprobs, kept_probs, kept_ids = sample_tokens(state.logits, spec.sampling,
                                                           state.uniforms.index_select(1, column)[:, 0],
                                                           native.sampling_passes(device), native.sampling_draw(device))
    real = ~state.finished
    vocab = state.logits.shape[-1]
    family, dense = spec.mode in FAMILY_MODES, kept_count(spec.sampling, vocab) == vocab
    if family:
        in_span = real & (state.marker_state < spec.matcher.done_state)
        drawn = draw(spec.mode, spec.latent, spec.sampling, state.logits, tokens, logprobs, kept_probs, kept_ids,
                     state.row_seeds, t, in_span, dense)
        tokens, logprobs = drawn.tokens, drawn.logprobs
    tokens = tokens.masked_fill(state.finished, spec.pad_token_id)
    finished = state.finished | (tokens[:, None] == spec.eos).any(dim=-1)
    vectors = None
    if spec.mode != "discrete":
        marker_state = spec.matcher.table[state.marker_state, tokens]
        if spec.mode == "soft":
            low_run, stop = cold_stop(spec.latent, state.low_run, state.logits, spec.sampling.temperature,
                                      in_span & (marker_state < spec.matcher.done_state))
            state.low_run.copy_(low_run)
            marker_state = marker_state.masked_fill(stop, spec.matcher.done_state)
        state.marker_state.copy_(marker_state)
        thinking = ~finished & (marker_state < spec.matcher.done_state) & (t < spec.max_new - 1)
        # Llama-family embeddings are unscaled: the weight rows are the embedding outputs (a fixed buffer)
        dense_embeds = embed.weight if dense else None
        if family:
            vectors, logprobs = family_inputs(spec.mode, spec.latent, spec.sampling, state.logits, drawn, kept_probs,
                                              kept_ids, embed, dense_embeds, state.row_seeds, t, logprobs, thinking,
                                              spec.noise_scale, state.latents.dtype)
            if state.action_ids is not None:
                state.action_ids.index_copy_(1, column, drawn.action_ids[:, None])
            if state.action_values is not None:
                state.action_values.index_copy_(1, column, drawn.action_values[:, None])
        else:
            plain = (spec.mode in ("hybrid", "latent") and not dense and type(embed) is torch.nn.Embedding
                     and vocab <= embed.weight.shape[0])
            vectors = native.topk_latent(kept_probs, kept_ids, embed.weight) if plain else None
            if vectors is None:
                vectors = fed_back_vectors(spec.mode, kept_probs, kept_ids, embed, dense_embeds, state.hidden)
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
    if spec.mode == "hybrid" and isinstance(spec.gate, ConcatenatedGate) and vectors is not None:
        inputs, mean_a = spec.gate.mix_inputs(token_embeds, vectors[:, None], thinking[:, None])
    else:
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
    if state.rope_cos is not None:
        column = state.step.view(1)
        return inputs, slot, state.rope_cos.index_select(1, column), state.rope_sin.index_select(1, column)
    cos, sin = modules.rotary(inputs, state.positions)
    return inputs, slot, cos, sin


def fill_rope(state: DecodeState, rotary) -> None:
    """Every step's RoPE cos/sin at once, for the positions after the prefill (step t's input sits at
    ``state.positions`` + t): the same values the rotary module gives step by step (one product, cos and sin a
    position)."""
    steps = torch.arange(state.rope_cos.shape[1], device=state.positions.device)
    cos, sin = rotary(state.rope_cos, state.positions + steps)
    state.rope_cos.copy_(cos)
    state.rope_sin.copy_(sin)


def step_outputs(state: DecodeState, x, delta, weights: DecodeWeights) -> None:
    """The end of step t: the next logits and hidden state from the layers' output, and t + 1."""
    logits, hidden = last_logits(x, delta, weights, out=state.logits)
    if logits is not state.logits:
        state.logits.copy_(logits)
    state.hidden.copy_(hidden)
    advance(state)


def advance(state: DecodeState) -> None:
    """t + 1 (and the next input's position)."""
    state.positions.add_(1)
    state.step.add_(1)


def decode_step(state: DecodeState, spec: StepSpec, weights: DecodeWeights, modules: Modules, layer_fn,
                start=step_inputs, finish=step_outputs, attend: int | None = None, layers=None) -> None:
    """One full step t: sample, record, build the next input (gated in the thinking span), forward it,
    attending over the first ``attend`` cache slots (default all; must cover slot P + t). ``layer_fn``,
    ``start`` and ``finish`` may be compiled versions of :func:`decoder_layer`, :func:`step_inputs` and
    :func:`step_outputs`. ``layers``: a :class:`hrpo.engines.native.DecodeLayers` on ``state`` instead of
    :func:`decoder_layers` (needs ``attend``); where it ``writes_logits`` (into ``state``), ``finish`` is not
    called."""
    inputs, slot, cos, sin = start(state, spec, modules)
    if layers is not None:
        x, delta = layers(inputs, cos, sin, int(slot), attend)
        if layers.writes_logits:
            advance(state)
            return
    else:
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
    steps = torch.arange(state.uniforms.shape[1], device=row_seeds.device)
    state.uniforms.copy_(row_uniforms(row_seeds[:, None], steps))
    state.finished.zero_()
    state.marker_state.zero_()
    for t in (state.tokens, state.real, state.thinking, state.logprobs):
        t.zero_()
    state.gate_mean.fill_(1.0)
    for t in (state.latents, state.low_run, state.action_ids, state.action_values):
        if t is not None:
            t.zero_()


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


def collect_rollout(state: DecodeState, prompt_ids, prompt_mask) -> Rollout:
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
        action_ids=None if state.action_ids is None else state.action_ids[:, cut].clone(),
        action_values=None if state.action_values is None else state.action_values[:, cut].clone(),
    )
