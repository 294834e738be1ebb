"""The sampling primitives every rollout engine shares (this module imports no engine).

Per generated token y_t (drawn from p_t, the temperature/top-k/top-p distribution):
  * latent h_t = E^T p_t / ||p_t||_2 (a gather over the kept top-k rows);
  * when y_t is fed back as the next input it enters as gate(E[y_t], h_t) if the text up to and including
    y_t does not yet contain the answer marker, else as plain E[y_t];
  * the prompt, the token that completes the marker and every later token are plain.
The marker is tracked with a token-level automaton (:class:`MarkerMatcher`), so it may be split over
several tokens and no prefix is ever re-decoded. Sampling noise is a pure function of a row seed and the step
(:func:`row_uniforms`), so every engine draws the same tokens for the same row.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .config import ConfigError
from .gate import HybridGate, latent_embeddings, topk_latent_embeddings


@dataclass
class SamplingConfig:
    """How tokens are drawn. ``top_k=0`` and ``top_p=1.0`` switch those filters off."""

    max_new_tokens: int = 256
    temperature: float = 0.5
    top_k: int = 50
    top_p: float = 1.0
    greedy: bool = False
    logprob_temperature: float | None = None  # temperature of the returned log-probs (default: temperature)


@dataclass
class Rollout:
    """One batch of completions. B = batch, P = padded prompt length, C = completion length, H = hidden size.

    prompt_ids (B, P) long, left-padded; prompt_mask (B, P) long (1 = real token)
    completion_ids (B, C) long, pad after the first EOS
    completion_mask (B, C) bool: real completion tokens, up to and including the first EOS
    thinking_mask (B, C) bool: tokens whose input embedding was the gated mix (or, in the ablation modes, the
        latent / hidden state) when fed back
    latents (B, C, H) in the model dtype, or None in discrete mode: h of each token's sampling distribution
        (in hidden mode: the last-layer hidden state that produced the token's logits)
    logprobs (B, C) fp32: log-prob of each token under the temperature-scaled full distribution
    gate_mean (B, C) fp32: mean over H of the gate's a at mixed positions, 1.0 elsewhere
    action_ids (B, C, n) long or None: what a family mode drew per step besides the token, for its log-prob
        in the objective (multiplex: the K draws; noisy soft mode: the kept ids); action_values (B, C, n) fp32
        or None: the Gumbel-perturbed scores of those ids (hrpo.latent)
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    thinking_mask: torch.Tensor
    latents: torch.Tensor | None
    logprobs: torch.Tensor
    gate_mean: torch.Tensor
    action_ids: torch.Tensor | None = None
    action_values: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        """(B, P + C) prompt followed by completion."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P + C): the prompt's padding mask, ones over the completion (as during decoding)."""
        return torch.cat([self.prompt_mask.long(), torch.ones_like(self.completion_ids)], dim=1)

    def select(self, rows: slice | torch.Tensor) -> "Rollout":
        """The sub-batch ``rows`` (e.g. one micro-batch)."""
        return Rollout(**{k: (None if v is None else v[rows]) for k, v in self.__dict__.items()})


class MarkerMatcher:
    """Token-level automaton that tells when the decoded text first contains ``marker``.

    ``table[s, v]`` is the state after reading token v in state s, where state s < m is the length of the
    longest prefix of the marker that ends the text, and m (= len(marker)) means "marker seen" (absorbing).
    Built once per tokenizer and marker from each token's decoded piece; stepping is one gather on device.
    """

    def __init__(self, pieces: list[str], marker: str, vocab_size: int | None = None):
        if not marker:
            raise ValueError("marker must be a non-empty string")
        self.marker = marker
        m = len(marker)
        vocab_size = max(vocab_size or 0, len(pieces))
        fail = _failure_function(marker)
        marker_chars = set(marker)
        table = torch.zeros(m + 1, vocab_size, dtype=torch.long)
        table[m] = m
        for v in range(vocab_size):
            piece = pieces[v] if v < len(pieces) else ""
            if not piece:
                table[:m, v] = torch.arange(m)
                continue
            if not marker_chars.intersection(piece):
                continue  # any state -> 0
            for s in range(m):
                table[s, v] = _advance(marker, fail, s, piece)
        self.table = table
        self.done_state = m

    def step(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """state (B,) long, tokens (B,) long -> new state (B,), on the device of ``state``."""
        if self.table.device != state.device:
            self.table = self.table.to(state.device)
        return self.table[state, tokens]

    def scan(self, token_ids: list[int]) -> int | None:
        """Index of the token that completes the marker in ``token_ids``, or None (a host-side helper)."""
        state = 0
        for j, tok in enumerate(token_ids):
            state = int(self.table[state, tok])
            if state == self.done_state:
                return j
        return None


def _failure_function(pattern: str) -> list[int]:
    fail = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        fail[i] = k
    return fail


def _advance(pattern: str, fail: list[int], state: int, text: str) -> int:
    m = len(pattern)
    for ch in text:
        while state and ch != pattern[state]:
            state = fail[state - 1]
        if ch == pattern[state]:
            state += 1
        if state == m:
            return m
    return state


@lru_cache(maxsize=8)
def _matcher_cached(tokenizer, marker: str, vocab_size: int) -> MarkerMatcher:
    ids = tokenizer.encode(marker, add_special_tokens=False)
    spelled = "".join(tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False))
    if marker not in spelled:  # e.g. a CJK character split over byte tokens, each decoding to U+FFFD
        raise ConfigError(f"marker {marker!r} cannot be tracked token by token with this tokenizer: its tokens, "
                          f"decoded one at a time, read {spelled!r}; choose a marker whose tokens decode to "
                          f"whole characters, e.g. '####' or '</think>'")
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
    return MarkerMatcher(pieces, marker, vocab_size)


def marker_matcher(tokenizer, marker: str, vocab_size: int | None = None) -> MarkerMatcher:
    """The (cached) :class:`MarkerMatcher` for this tokenizer and marker, covering ``vocab_size`` ids. Raises
    ConfigError for a marker whose own tokens do not decode, one at a time, to text containing it."""
    return _matcher_cached(tokenizer, marker, int(vocab_size or len(tokenizer)))


_MASK31 = (1 << 31) - 1


_MASK64 = (1 << 64) - 1


def _mix31(h: torch.Tensor) -> torch.Tensor:
    """An integer hash of int64 values in [0, 2^31): every product stays below 2^62 (no overflow)."""
    h = h ^ (h >> 15)
    h = (h * 0x2C1B3C6D) & _MASK31
    h = h ^ (h >> 12)
    h = (h * 0x297A2D39) & _MASK31
    return h ^ (h >> 15)


def row_uniforms(row_seeds: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """(B,) int64 row seeds and a decode step -> (B,) fp32 uniforms in [0, 1) with 24 random bits.

    A pure function of (seed, step): a row samples the same tokens whichever batch, process or engine it is in,
    and no generator state is involved (so the step can be captured in a CUDA graph). All 64 bits of the seed
    count: they are hashed into two 31-bit lanes, so two seeds share a stream only if both lanes collide (about
    2^-62 for two random seeds), and every product stays below 2^62 (int64 arithmetic never overflows).
    """
    low, high, top = row_seeds & _MASK31, (row_seeds >> 31) & _MASK31, (row_seeds >> 62) & 3
    lane_a = _mix31(_mix31(high ^ 0x5BD1E995) ^ low)
    lane_b = _mix31(_mix31(low ^ 0x1B873593) ^ high ^ (top << 29))
    h = _mix31(_mix31(lane_a ^ ((step * 0x01000193 + 0x6B43A9B5) & _MASK31)) ^ lane_b)
    return (h >> 7).float() * (1.0 / (1 << 24))


def _splitmix64(x: int) -> int:
    """One round of the SplitMix64 finaliser on a Python int (exact 64-bit arithmetic)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def rollout_row_seeds(seed: int, step: int, rows: torch.Tensor | range, device=None) -> torch.Tensor:
    """Seeds (len(rows),) int64 in [0, 2^63) for the completion rows ``rows`` (global indices) of training step
    ``step``: a 64-bit hash of (seed, step, row), all three in full (no folding), so two rows share a seed only
    by chance, about 2^-63 per pair."""
    rows = torch.as_tensor(list(rows) if isinstance(rows, range) else rows, dtype=torch.long)
    base = _splitmix64(_splitmix64(seed & _MASK64) ^ (step & _MASK64))
    seeds = [_splitmix64(base ^ (row & _MASK64)) >> 1 for row in rows.tolist()]
    return torch.tensor(seeds, dtype=torch.long, device=device)


def seeds_from_generator(batch: int, generator: torch.Generator | None, device=None) -> torch.Tensor:
    """(batch,) random int64 row seeds drawn from ``generator`` (or the global CPU generator)."""
    where = generator.device if generator is not None else "cpu"
    return torch.randint(0, 1 << 62, (batch,), generator=generator, dtype=torch.long, device=where).to(device)


def kept_count(sampling: SamplingConfig, vocab: int) -> int:
    """How many tokens the sampling distribution keeps (the top-k, or all ``vocab`` without top-k)."""
    return sampling.top_k if 0 < sampling.top_k < vocab else vocab


def rollout_setup(mode: str | None, gate: HybridGate | None, matcher: MarkerMatcher | None,
                  row_seeds: torch.Tensor | None, generator: torch.Generator | None, prompt_mask: torch.Tensor,
                  device) -> tuple[str, torch.Tensor]:
    """Check a rollout's arguments (``prompt_mask`` (B, P) must be left-padded: every row ends in a real token);
    return the mode (default: hybrid with a gate, else discrete) and the row seeds (B,) on ``device`` (drawn
    from ``generator`` when None)."""
    if prompt_mask.dim() != 2 or prompt_mask.shape[1] == 0:
        raise ValueError(f"prompt_mask must be (batch, prompt length) with at least one token, got shape "
                         f"{tuple(prompt_mask.shape)}")
    last = prompt_mask[:, -1].bool()
    if not bool(last.all()):
        row = int((~last).nonzero()[0, 0])
        raise ValueError(f"prompts must be left-padded (padding first): row {row} of prompt_mask ends in padding; "
                         f"build batches with hrpo.text.left_pad")
    batch = prompt_mask.shape[0]
    mode = mode or ("hybrid" if gate is not None else "discrete")
    if mode == "hybrid" and gate is None:
        raise ValueError("hybrid rollouts need a HybridGate")
    if mode != "discrete" and matcher is None:
        raise ValueError(f"{mode} rollouts need a MarkerMatcher to find the end of the thinking span")
    if row_seeds is None:
        row_seeds = seeds_from_generator(batch, generator)
    return mode, row_seeds.to(device)


def fed_back_vectors(mode: str, kept_probs: torch.Tensor, kept_ids: torch.Tensor, embed,
                     dense_embeds: torch.Tensor | None, last_hidden: torch.Tensor | None) -> torch.Tensor:
    """(B, H): what a thinking position feeds back besides (hybrid) or instead of its token (latent, hidden).

    hidden: ``last_hidden``, the hidden state that produced the token's logits; otherwise the latent of the kept
    distribution ``kept_probs``/``kept_ids`` (B, k): a gather over the k kept rows under top-k, or E^T p over
    ``dense_embeds`` (V, H, the embedding layer's outputs) when the whole vocabulary is kept.
    """
    if mode == "hidden":
        return last_hidden
    if dense_embeds is None:
        return topk_latent_embeddings(kept_probs, embed(kept_ids))
    probs = torch.zeros_like(kept_probs).scatter_(-1, kept_ids, kept_probs)
    return latent_embeddings(probs, dense_embeds)


def sample_tokens(logits: torch.Tensor, sampling: SamplingConfig, uniforms: torch.Tensor | None = None,
                  topk_lse=None, draw=None):
    """Draw one token per row from last-position ``logits`` (B, V) by inverse CDF with ``uniforms`` (B,) in [0,1).

    Returns ``(tokens (B,), logprobs (B,) fp32, kept_probs (B, k) fp32, kept_ids (B, k))``: the kept
    distribution is the temperature/top-k/top-p one the token came from (k = V without top-k) and is what the
    latent is built from. ``logprobs`` are under the temperature-scaled full distribution. ``uniforms`` may be
    None only when ``sampling.greedy``. ``topk_lse``: a function ``(logits, k, T) -> (kept_logits (B, k),
    kept_ids (B, k), logsumexp(logits / T) (B,))`` or None that makes the passes over the whole vocabulary
    instead of torch.topk and torch.logsumexp (e.g. :func:`hrpo.engines.native.topk_lse`; an engine passes one
    to all its loops, since torch.topk leaves ties in no set order). ``draw``: a function ``(logits, k, T,
    logprob T, uniforms) -> (tokens, logprobs, kept_probs, kept_ids) or None`` that makes the whole draw without
    top-p (e.g. :func:`hrpo.engines.native.topk_sample`, whose passes must be ``topk_lse``'s); on None, or with
    top-p or greedy, topk_lse and torch's ops make it.
    """
    k = kept_count(sampling, logits.shape[-1])
    lp_temp = sampling.logprob_temperature or sampling.temperature
    if draw is not None and not sampling.greedy and sampling.top_p >= 1.0:
        drawn = draw(logits, k, sampling.temperature, lp_temp, uniforms)
        if drawn is not None:
            return drawn
    fused = None if topk_lse is None else topk_lse(logits, k, lp_temp)
    if fused is None:
        # select in the logits' own dtype (same order as the fp32 scores: dividing by T > 0 is monotonic and keeps
        # distinct bf16 values distinct), then upcast only the k kept ones; a 16-bit radix select is half the passes
        kept_logits, kept_ids = logits.topk(k, dim=-1)  # sorted, descending
        lse = torch.logsumexp(logits.float() / lp_temp, dim=-1)
    else:
        kept_logits, kept_ids, lse = fused
    kept_probs = torch.softmax(kept_logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        before = kept_probs.cumsum(dim=-1) - kept_probs
        kept_probs = kept_probs.masked_fill(before > sampling.top_p, 0.0)
        kept_probs = kept_probs / kept_probs.sum(dim=-1, keepdim=True)
    if sampling.greedy:
        tokens = logits.argmax(dim=-1)
    else:
        cdf = kept_probs.cumsum(dim=-1)
        target = uniforms[:, None] * cdf[:, -1:]
        choice = (cdf < target).sum(dim=-1, keepdim=True).clamp_max(k - 1)
        tokens = kept_ids.gather(-1, choice).squeeze(-1)
    logprobs = logits.gather(-1, tokens[:, None]).squeeze(-1).float() / lp_temp - lse
    return tokens, logprobs, kept_probs, kept_ids


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """(B,) fp32 log-probs of ``tokens`` (B,) under the temperature-scaled full distribution of ``logits``
    (B, V), as :func:`sample_tokens` returns them for the tokens it draws."""
    scores = logits.float() / (sampling.logprob_temperature or sampling.temperature)
    return scores.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(scores, dim=-1)


def rows_repeat(ids: torch.Tensor, mask: torch.Tensor, group_size: int) -> bool:
    """True when rows come in runs of ``group_size`` identical prompts."""
    if ids.shape[0] % group_size:
        return False
    first = ids[::group_size].repeat_interleave(group_size, dim=0)
    first_mask = mask[::group_size].repeat_interleave(group_size, dim=0)
    return bool(torch.equal(first, ids) and torch.equal(first_mask, mask))


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 attention mask -> (B, T) positions counting real tokens from 0 (pads get 0)."""
    return (mask.long().cumsum(dim=-1) - 1).clamp_min(0)
