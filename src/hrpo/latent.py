"""The latent-reasoning family on one decode step: what a thinking position feeds back, and its log-prob.

Every mode starts from the kept distribution q (B, k) over the kept ids (the temperature/top-k/top-p
distribution the token is drawn from) and the sampled token y. At a thinking position the next input is

    soft        x = sum_i q_i E[i]; the token is argmax q                (Soft Thinking's concept token)
    + gumbel    x = sum_i w_i E[i], w = softmax(z / tau), z = log(q + 1e-6) + g, g ~ Gumbel(0, 1) clamped to
                [-1.5, 3]; the token is argmax z, a Gumbel-max sample of q                       (SofT-GRPO)
    + gaussian  x = sum_i q_i E[i] + sigma * eps, eps ~ N(0, I); the token is argmax q   (Soft Tokens, Hard Truths)
    mixture     x = H * sum_i w_i E[i] + (1 - H) * E[y], w = (q + beta * onehot(y)) / (1 + beta), H the entropy
                of q over log k                                                          (Mixture of Inputs)
    multiplex   x = sum_j w_j E[y_j] over K draws y_1 = y, y_2..y_K ~ q (with replacement), w_j = q(y_j) /
                sum_l q(y_l) (or 1/K)                                                   (Multiplex Thinking)

and its log-prob in the objective is that of what the step drew (:func:`action_logprob`): the K tokens'
joint log-prob (multiplex), SofT-GRPO's Gumbel log-density of z (gumbel), the Gaussian log-density of x
(gaussian), the token's own (mixture). Noise is a pure function of (row seed, step), so every engine draws the
same. docs/methods.md has the papers, the choices made where they leave a detail open, and the options that
reproduce each paper's setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .latent_options import (FAMILY_MODES, LatentConfig, action_width, check_latent,  # noqa: F401 (re-exported)
                             trains_actions)
from .sampling import SamplingConfig, row_uniforms, token_logprobs

_U_HALF = 1.0 / (1 << 25)  # half a step of row_uniforms' 24-bit grid: keeps a uniform strictly inside (0, 1)

GUMBEL_CLAMP = (-1.5, 3.0)  # SofT-GRPO clamps the Gumbel noise, in the rollout and in its log-density
GUMBEL_KEEP = -3.0  # ... and averages the log-density over the slots whose log q exceeds this


def _gumbel_log_q(q: torch.Tensor) -> torch.Tensor:
    return torch.log(q + 1e-6)


def noise_uniforms(row_seeds: torch.Tensor, step, n: int, stream: int) -> torch.Tensor:
    """(B,) row seeds -> (B, n) fp32 uniforms in (0, 1): stream ``stream`` of a step's noise, a pure function of
    (seed, step, stream, index) like :func:`hrpo.sampling.row_uniforms` (which is the token's own draw)."""
    index = torch.arange(1, n + 1, device=row_seeds.device, dtype=torch.long) + (stream << 20)
    salt = (index * 0x2545F4914F6CDD1D) & ((1 << 62) - 1)
    return row_uniforms(row_seeds[:, None] ^ salt, step) + _U_HALF


def inverse_cdf(kept_probs: torch.Tensor, kept_ids: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draws (B, n) ids from the kept distribution (B, k) with uniforms (B, n), as sample_tokens draws one."""
    cdf = kept_probs.cumsum(dim=-1)
    choice = (cdf[:, None, :] < uniforms[..., None] * cdf[:, None, -1:]).sum(dim=-1).clamp_max(cdf.shape[-1] - 1)
    return kept_ids.gather(-1, choice)


@dataclass
class Draw:
    """What one step drew: ``tokens`` (B,) and their ``logprobs`` (B,), and for the objective ``action_ids``
    (B, n) (multiplex: the K draws; noisy soft mode: the kept ids, None when the whole vocabulary is kept) and
    ``action_values`` (B, n) fp32 or None (gumbel: the perturbed scores z)."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    action_ids: torch.Tensor | None
    action_values: torch.Tensor | None


def draw(mode: str, latent: LatentConfig, sampling: SamplingConfig, logits: torch.Tensor, tokens: torch.Tensor,
         logprobs: torch.Tensor, kept_probs: torch.Tensor, kept_ids: torch.Tensor, row_seeds: torch.Tensor, step,
         in_span: torch.Tensor, dense: bool) -> Draw:
    """The step's draws in ``mode`` given the ``tokens`` (B,) and ``logprobs`` (B,) that sample_tokens drew from
    ``logits`` (B, V), for rows ``in_span`` (B,) bool (still thinking before this token): multiplex draws K - 1
    more tokens; soft mode's token is argmax q, or with gumbel noise argmax z (its log-prob recomputed).
    ``dense``: the whole vocabulary is kept. Greedy sampling draws no noise."""
    if mode == "multiplex":
        if sampling.greedy or latent.multiplex_k == 1:
            return Draw(tokens, logprobs, tokens[:, None].expand(-1, latent.multiplex_k).contiguous(), None)
        more = inverse_cdf(kept_probs, kept_ids, noise_uniforms(row_seeds, step, latent.multiplex_k - 1, 1))
        return Draw(tokens, logprobs, torch.cat([tokens[:, None], more], dim=1), None)
    if mode != "soft":
        return Draw(tokens, logprobs, None, None)
    ids = None if dense else kept_ids
    pick = kept_ids[:, 0]  # kept ids are sorted by probability: the argmax
    values = None
    if latent.noise == "gumbel":
        values = _gumbel_log_q(kept_probs)
        if not sampling.greedy:
            g = -torch.log(-torch.log(noise_uniforms(row_seeds, step, kept_ids.shape[-1], 2)))
            values = values + g.clamp(GUMBEL_CLAMP[0], GUMBEL_CLAMP[1])
        pick = kept_ids.gather(-1, values.argmax(dim=-1, keepdim=True)).squeeze(-1)
    tokens = torch.where(in_span, pick, tokens)
    return Draw(tokens, token_logprobs(logits, tokens, sampling), None if latent.noise == "none" else ids, values)


def input_weights(mode: str, latent: LatentConfig, kept_probs: torch.Tensor, kept_ids: torch.Tensor,
                  drawn: Draw, greedy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (B, n) fp32, ids (B, n)): the fed-back vector is sum_j weights_j E[ids_j] (the module doc), for
    mixture before its entropy blend with the token's embedding (:func:`fed_back`)."""
    if mode == "mixture":
        onehot = (kept_ids == drawn.tokens[:, None]).float()
        return (kept_probs + latent.mixture_beta * onehot) / (1.0 + latent.mixture_beta), kept_ids
    if mode == "multiplex":
        ids = drawn.action_ids
        if latent.multiplex_uniform:
            return torch.full(ids.shape, 1.0 / ids.shape[-1], device=ids.device), ids
        weights = (kept_probs[:, None, :] * (kept_ids[:, None, :] == ids[..., None])).sum(dim=-1)
        return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-30), ids
    if latent.noise == "gumbel" and not greedy:
        return torch.softmax(drawn.action_values / latent.gumbel_tau, dim=-1), kept_ids
    return kept_probs, kept_ids


def fed_back(mode: str, latent: LatentConfig, weights: torch.Tensor, ids: torch.Tensor, kept_probs: torch.Tensor,
             tokens: torch.Tensor, embed, dense_embeds: torch.Tensor | None, row_seeds: torch.Tensor, step,
             greedy: bool, noise_scale: float) -> torch.Tensor:
    """(B, H) fp32: sum_j weights_j E[ids_j] (over ``dense_embeds`` (V, H) when ``ids`` cover the vocabulary);
    mixture blends it with E[token] by the normalised entropy of ``kept_probs``; gaussian soft mode adds
    noise of std ``noise_scale`` (none under greedy sampling)."""
    if dense_embeds is not None and ids.shape[-1] == dense_embeds.shape[0]:
        dense = torch.zeros(ids.shape[0], dense_embeds.shape[0], device=weights.device).scatter_(-1, ids, weights)
        x = dense @ dense_embeds.float()
    else:
        x = torch.einsum("bk,bkh->bh", weights, embed(ids).float())
    if mode == "mixture":
        h = (entropy(kept_probs) / math.log(max(kept_probs.shape[-1], 2)))[:, None]
        x = h * x + (1.0 - h) * embed(tokens).float()
    if mode == "soft" and latent.noise == "gaussian" and not greedy:
        u = noise_uniforms(row_seeds, step, 2 * x.shape[-1], 3)
        eps = torch.sqrt(-2.0 * torch.log(u[:, 0::2])) * torch.cos(2.0 * math.pi * u[:, 1::2])
        x = x + noise_scale * eps
    return x


def noise_scale(latent: LatentConfig, embed_weight: torch.Tensor) -> float:
    """Std of soft mode's Gaussian noise: ``gaussian_sigma`` x the RMS of the embedding matrix's entries (0.0
    without Gaussian noise, where nothing reads it)."""
    if latent.noise != "gaussian":
        return 0.0
    return latent.gaussian_sigma * float(embed_weight.float().pow(2).mean().sqrt())


def action_logprob(mode: str, latent: LatentConfig, scores_at_ids: torch.Tensor, full_lse: torch.Tensor | None,
                   token_logprobs: torch.Tensor, action_values: torch.Tensor | None, vectors: torch.Tensor | None,
                   embeds_at_ids: torch.Tensor | None, noise_scale: float) -> torch.Tensor:
    """The log-prob (...,) fp32 of what a thinking step drew, from its scores (logits / temperature):

    multiplex: sum_j log p(y_j), ``scores_at_ids`` (..., K) at the K draws, ``full_lse`` (...,) the
               log-sum-exp of the scores over the vocabulary (the tokens' own convention);
    gumbel:    SofT-GRPO's: mean over the kept slots with log q_i > -3 of log f(clamp(z_i - log(q_i + 1e-6),
               -1.5, 3)), f(g) = exp(-g - exp(-g)) the Gumbel(0, 1) density, q = softmax of ``scores_at_ids``
               (..., k) over the kept ids, z = ``action_values`` (..., k) the stored perturbed scores;
    gaussian:  -|x - mu|^2 / (2 sigma^2), mu = sum_i q_i E[i] with ``embeds_at_ids`` (..., k, H) (or (V, H)),
               x = ``vectors`` (..., H) the fed-back input (the constant -H log(sigma sqrt(2 pi)) dropped);
    otherwise ``token_logprobs`` (...,), the token's own.
    """
    if mode == "multiplex":
        return (scores_at_ids - full_lse[..., None]).sum(dim=-1)
    if mode != "soft" or latent.noise == "none":
        return token_logprobs
    q = torch.softmax(scores_at_ids, dim=-1)
    if latent.noise == "gumbel":
        log_q = _gumbel_log_q(q)
        g = (action_values - log_q).clamp(GUMBEL_CLAMP[0], GUMBEL_CLAMP[1])
        keep = (log_q > GUMBEL_KEEP).float()
        return ((-g - torch.exp(-g)) * keep).sum(dim=-1) / keep.sum(dim=-1).clamp_min(1.0)
    if embeds_at_ids.dim() == 2:  # the whole vocabulary: (V, H)
        mu = q @ embeds_at_ids.float()
    else:
        mu = torch.einsum("...k,...kh->...h", q, embeds_at_ids.float())
    return -(vectors.float() - mu).square().sum(dim=-1) / (2.0 * noise_scale ** 2)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """(B, n) -> (B,) entropy in nats of the distributions ``probs``."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1)


def cold_stop(latent: LatentConfig, low_run: torch.Tensor, logits: torch.Tensor, temperature: float,
              in_span: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft Thinking's Cold Stop: count consecutive steps whose full tempered distribution softmax(``logits``
    / T) (B, V) has an entropy under ``cold_stop_entropy``, per row (B,) long; returns (the new count, (B,) bool:
    rows whose soft span ends now, after ``cold_stop_steps`` such steps in a row)."""
    if latent.cold_stop_steps <= 0 or latent.cold_stop_entropy <= 0:
        return low_run, torch.zeros_like(in_span)
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    low = -(log_p.exp() * log_p).sum(dim=-1) < latent.cold_stop_entropy
    run = torch.where(low & in_span, low_run + 1, torch.zeros_like(low_run))
    return run, run >= latent.cold_stop_steps


def step_logprobs(mode: str, latent: LatentConfig, scores: torch.Tensor, token_logprobs: torch.Tensor,
                  action_ids: torch.Tensor | None, action_values: torch.Tensor | None, vectors: torch.Tensor | None,
                  embed, dense_embeds: torch.Tensor | None, scale: float,
                  full_lse: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`action_logprob` from a step's whole scores (..., V) (logits / temperature) and what the rollout
    stored: ``action_ids`` (..., n) (None: the whole vocabulary, read through ``dense_embeds`` (V, H)),
    ``action_values``, ``vectors`` (..., H); ``full_lse`` (...,) if already computed. The rollout and the
    objective both call it, so the two log-probs are one computation."""
    scores_at = scores if action_ids is None else scores.gather(-1, action_ids)
    embeds_at = None
    if mode == "soft" and latent.noise == "gaussian":
        embeds_at = dense_embeds if action_ids is None else embed(action_ids)
    if mode == "multiplex" and full_lse is None:
        full_lse = torch.logsumexp(scores, dim=-1)
    return action_logprob(mode, latent, scores_at, full_lse, token_logprobs, action_values, vectors, embeds_at,
                          scale)


def family_inputs(mode: str, latent: LatentConfig, sampling: SamplingConfig, logits: torch.Tensor, drawn: Draw,
                  kept_probs: torch.Tensor, kept_ids: torch.Tensor, embed, dense_embeds: torch.Tensor | None,
                  row_seeds: torch.Tensor, step, token_logprobs: torch.Tensor, thinking: torch.Tensor,
                  scale: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One thinking step of a family mode in an engine: ``(vectors (B, H) in dtype, logprobs (B,))``, the
    fed-back inputs and the log-probs with :func:`action_logprob` at the ``thinking`` (B,) rows, computed from
    the stored (rounded) vectors as the objective recomputes them; ``scale``: :func:`noise_scale`."""
    weights, ids = input_weights(mode, latent, kept_probs, kept_ids, drawn, sampling.greedy)
    vectors = fed_back(mode, latent, weights, ids, kept_probs, drawn.tokens, embed, dense_embeds, row_seeds, step,
                       sampling.greedy, scale).to(dtype)
    if not trains_actions(mode, latent):
        return vectors, token_logprobs
    scores = logits.float() / (sampling.logprob_temperature or sampling.temperature)
    action = step_logprobs(mode, latent, scores, token_logprobs, drawn.action_ids, drawn.action_values, vectors,
                           embed, dense_embeds, scale)
    return vectors, torch.where(thinking, action, token_logprobs)
