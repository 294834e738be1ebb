"""The HRPO objective: group advantages, teacher-forced log-probs with stored latents, k3 KL and the loss.

Per completion token t of sequence i (strictly on-policy, one update per rollout batch):

    loss_it = -A_i * exp(logp_it - stopgrad(logp_it)) + beta * k3(ref_it, logp_it)
    k3      = exp(ref - logp) - (ref - logp) - 1
    A_i     = (r_i - mean_g) / (std_g + 1e-4)        (unbiased std within the group of G completions)

then the mean over each sequence's completion tokens, then the mean over sequences. With several updates per
rollout batch (``num_iterations``, PPO) :func:`clipped_loss` replaces the ratio exp(logp - stopgrad(logp)) by
the clipped ratio to the batch's old log-probs; with the old log-probs = stopgrad(logp) it is this loss exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .gate import HybridGate, thinking_inputs
from .engines.eager import cache_argument
from .latent import LatentConfig, noise_scale, step_logprobs, trains_actions
from .sampling import Rollout, position_ids_from_mask, rows_repeat

ADVANTAGE_EPS = 1e-4
LOG_RATIO_CLAMP = 20.0


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = ADVANTAGE_EPS) -> torch.Tensor:
    """rewards (N,) with N = prompts * group_size, each group contiguous -> advantages (N,) fp32."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + eps)
    return advantages.view(-1)


def k3_kl(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || ref); both (B, C). Log-ratio clamped to +-20 for safety."""
    log_ratio = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_ratio) - log_ratio - 1.0


def rollout_inputs_embeds(model, gate: HybridGate | None, rollout: Rollout,
                          mode: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs for the training forward over prompt + completion: (B, P + C, H) embeddings and (B, P + C) mean a.

    Thinking positions get the stored latents (constants) in ``mode`` (default: hybrid with a gate, else
    discrete); in hybrid mode through the *current* gate. Everything else is the plain token embedding, and
    ``mode='discrete'`` (the GRPO baseline and the reference model) gives plain embeddings throughout.
    """
    mode = mode or ("hybrid" if gate is not None else "discrete")
    ids = rollout.input_ids
    token_embeds = model.get_input_embeddings()(ids)
    prompt_len = rollout.prompt_ids.shape[1]
    thinking = torch.cat([torch.zeros_like(rollout.prompt_mask, dtype=torch.bool), rollout.thinking_mask], dim=1)
    latents = None
    if mode != "discrete" and rollout.latents is not None:
        pad = rollout.latents.new_zeros(ids.shape[0], prompt_len, rollout.latents.shape[-1])
        latents = torch.cat([pad, rollout.latents.to(token_embeds.dtype)], dim=1)
    return thinking_inputs(mode, gate, token_embeds, latents, thinking)


def _cache_disabled(model) -> bool:
    """Whether a forward of ``model`` now ignores ``use_cache`` (transformers turns the KV cache off for
    gradient checkpointing in training mode), so a prompt's cache cannot be shared."""
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return bool(checkpointing) and model.training and torch.is_grad_enabled()


def completion_logprobs(model, rollout: Rollout, inputs_embeds: torch.Tensor, temperature: float,
                        group_size: int = 1, hidden: list | None = None, mode: str = "discrete",
                        latent: LatentConfig | None = None, token_logprobs: list | None = None) -> torch.Tensor:
    """Log-probs (B, C) fp32 of the completion tokens under ``model`` fed ``inputs_embeds`` (B, P + C, H).

    One parallel forward with the rollout's attention mask and position ids; logits only for completion
    positions; log-softmax in fp32 at ``temperature``, one sequence at a time to bound memory. With
    ``group_size`` G > 1 and rows in runs of G identical prompts, each prompt is run once and its KV cache
    (with its autograd graph) shared by the G completions: the same values at about 1/G of the prompt cost.
    Under gradient checkpointing in training mode (no KV cache) every row runs the full forward instead.
    With a list ``hidden``, also appends the (B, C, H) last hidden states (the LM head's inputs, with their
    graph) at the positions whose logits predict the completion tokens: what a value head reads (hrpo.value).
    In a family ``mode`` whose thinking steps draw more than the token (:func:`hrpo.latent.trains_actions`),
    thinking positions get the log-prob of what the step drew (:func:`hrpo.latent.action_logprob`); a list
    ``token_logprobs`` then also receives the (B, C) log-probs of the recorded tokens alone (what the KL uses).
    """
    if hidden is not None:
        with _lm_head_inputs(model) as captured:
            logprobs = completion_logprobs(model, rollout, inputs_embeds, temperature, group_size, mode=mode,
                                           latent=latent, token_logprobs=token_logprobs)
        width = rollout.completion_ids.shape[1]
        if captured[-1].shape[1] == width + 1:  # the full forward: logits_to_keep = C + 1
            hidden.append(captured[-1][:, :-1])
        else:  # the shared prompt: its last position (once per group), then the completion positions
            first = captured[-2][:, -1:].repeat_interleave(group_size, dim=0)
            hidden.append(torch.cat([first, captured[-1][:, :-1]], dim=1))
        return logprobs
    attention_mask = rollout.attention_mask
    positions = position_ids_from_mask(attention_mask)
    prompt_len, completion_len = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    logits = None
    if group_size > 1 and not _cache_disabled(model) and rows_repeat(rollout.prompt_ids, rollout.prompt_mask,
                                                                     group_size):
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        cache_kw = {cache_argument(model): cache}
        heads = slice(None, None, group_size)
        prefix = model(inputs_embeds=inputs_embeds[heads, :prompt_len], attention_mask=attention_mask[heads, :prompt_len],
                       position_ids=positions[heads, :prompt_len], use_cache=True, logits_to_keep=1, **cache_kw)
        if cache.get_seq_length() == prompt_len:  # else the model dropped the cache: run the full forward
            cache.batch_repeat_interleave(group_size)
            rest = model(inputs_embeds=inputs_embeds[:, prompt_len:], attention_mask=attention_mask,
                         position_ids=positions[:, prompt_len:], use_cache=True, **cache_kw)
            first = prefix.logits[:, -1:].repeat_interleave(group_size, dim=0)
            logits = torch.cat([first, rest.logits[:, :-1]], dim=1)
    if logits is None:
        out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=positions,
                    use_cache=False, logits_to_keep=completion_len + 1)
        logits = out.logits[:, :-1]  # position P-1+t predicts completion token t
    actions = _ActionTerms(model, rollout, mode, latent) if latent and trains_actions(mode, latent) else None
    rows, tokens = [], []
    for i in range(logits.shape[0]):
        scores = logits[i].float() / temperature
        target = rollout.completion_ids[i]
        lse = torch.logsumexp(scores, dim=-1)
        token = scores.gather(-1, target[:, None]).squeeze(-1) - lse
        tokens.append(token)
        rows.append(token if actions is None else actions.row(i, scores, lse, token))
    if token_logprobs is not None:
        token_logprobs.append(torch.stack(tokens))
    return torch.stack(rows)


class _ActionTerms:
    """The family modes' thinking-step log-probs of one rollout, one row at a time (see completion_logprobs)."""

    def __init__(self, model, rollout: Rollout, mode: str, latent: LatentConfig):
        self.rollout, self.mode, self.latent = rollout, mode, latent
        self.embed = model.get_input_embeddings()
        self.scale = noise_scale(latent, self.embed.weight)
        self.dense = None
        if rollout.action_ids is None and mode == "soft" and latent.noise == "gaussian":  # the whole vocabulary
            self.dense = self.embed(torch.arange(self.embed.weight.shape[0], device=self.embed.weight.device))

    def row(self, i: int, scores: torch.Tensor, lse: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        r = self.rollout
        at = lambda t: None if t is None else t[i]  # noqa: E731 - row i of a stored field
        action = step_logprobs(self.mode, self.latent, scores, token, at(r.action_ids), at(r.action_values),
                               at(r.latents), self.embed, self.dense, self.scale, full_lse=lse)
        return torch.where(r.thinking_mask[i], action, token)


@contextmanager
def _lm_head_inputs(model):
    """Collect the inputs of every call of ``model``'s output embedding (LM head) inside the block."""
    captured: list[torch.Tensor] = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


@dataclass
class LossStats:
    """Detached per-batch statistics of :func:`hrpo_loss` (sums over sequences, for exact accumulation)."""

    policy_loss_sum: float
    kl_sum: float
    num_sequences: int


def hrpo_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, advantages: torch.Tensor,
              completion_mask: torch.Tensor, beta: float, num_sequences: int | None = None,
              kl_logprobs: torch.Tensor | None = None):
    """The HRPO/GRPO loss of one (micro-)batch.

    ``logprobs`` (B, C) with grad, ``ref_logprobs`` (B, C) or None (beta = 0), ``advantages`` (B,),
    ``completion_mask`` (B, C) bool. Returns ``(loss, stats)`` where ``loss`` is the sum of per-sequence means
    divided by ``num_sequences`` (default B), so micro-batch losses of one step add up to the full-batch mean.
    ``kl_logprobs`` (B, C) with grad (default ``logprobs``): the policy's side of the KL, the recorded tokens'
    log-probs where a thinking step's own log-prob is another quantity (hrpo.latent).
    """
    mask = completion_mask.float()
    lengths = mask.sum(dim=1).clamp_min(1.0)
    ratio = torch.exp(logprobs - logprobs.detach())  # == 1, carries the policy gradient
    policy_tok = -advantages[:, None].float() * ratio
    kl_side = logprobs if kl_logprobs is None else kl_logprobs
    kl_tok = k3_kl(ref_logprobs, kl_side) if ref_logprobs is not None else torch.zeros_like(logprobs)
    per_seq_policy = (policy_tok * mask).sum(dim=1) / lengths
    per_seq_kl = (kl_tok * mask).sum(dim=1) / lengths
    per_seq = per_seq_policy + beta * per_seq_kl
    denom = num_sequences or logprobs.shape[0]
    loss = per_seq.sum() / denom
    stats = LossStats(policy_loss_sum=float(per_seq_policy.detach().sum()),
                      kl_sum=float(per_seq_kl.detach().sum()), num_sequences=logprobs.shape[0])
    return loss, stats


@dataclass
class ClippedLossStats(LossStats):
    """:class:`LossStats` plus token counts of :func:`clipped_loss` (sums, for exact accumulation): tokens whose
    ratio was clipped below (ratio < 1 - epsilon with A < 0), above (ratio > 1 + epsilon_high with A > 0), either
    (the clip binds: TRL's clip_ratio/region_mean, PPO's policy/clipfrac), and the sum of 0.5 (logp - old)^2."""

    low_clipped: float = 0.0
    high_clipped: float = 0.0
    region_clipped: float = 0.0
    approx_kl_sum: float = 0.0
    num_tokens: float = 0.0


def clipped_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                 advantages: torch.Tensor, completion_mask: torch.Tensor, beta: float, epsilon: float,
                 epsilon_high: float | None = None, weights: torch.Tensor | None = None,
                 num_sequences: int | None = None, kl_logprobs: torch.Tensor | None = None):
    """The clipped surrogate of one (micro-)batch, for several updates per rollout batch (GRPO/HRPO with
    ``num_iterations`` > 1, and PPO's policy loss with ``beta`` = 0).

    Per completion token, with ratio = exp(logp - old) and A the sequence's advantage (B,) or the token's (B, C):

        loss_it = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) * w_it + beta * k3(ref, logp)

    where ``weights`` w (B, C) are the truncated importance weights (None = 1); aggregated like
    :func:`hrpo_loss` (per-sequence mean over completion tokens, then sum / ``num_sequences``; ``kl_logprobs``
    as there). With
    ``old_logprobs`` = ``logprobs.detach()`` and no weights the value and gradient are those of :func:`hrpo_loss`.
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    mask = completion_mask.float()
    lengths = mask.sum(dim=1).clamp_min(1.0)
    adv = (advantages if advantages.dim() == 2 else advantages[:, None]).float()
    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - epsilon, 1.0 + epsilon_high)
    policy_tok = -torch.minimum(ratio * adv, clipped * adv)
    if weights is not None:
        policy_tok = policy_tok * weights
    kl_side = logprobs if kl_logprobs is None else kl_logprobs
    kl_tok = k3_kl(ref_logprobs, kl_side) if ref_logprobs is not None else torch.zeros_like(logprobs)
    per_seq_policy = (policy_tok * mask).sum(dim=1) / lengths
    per_seq_kl = (kl_tok * mask).sum(dim=1) / lengths
    loss = (per_seq_policy + beta * per_seq_kl).sum() / (num_sequences or logprobs.shape[0])
    with torch.no_grad():
        real = completion_mask.bool()
        low = (ratio < 1.0 - epsilon) & (adv < 0) & real
        high = (ratio > 1.0 + epsilon_high) & (adv > 0) & real
        stats = ClippedLossStats(policy_loss_sum=float(per_seq_policy.sum()), kl_sum=float(per_seq_kl.sum()),
                                 num_sequences=logprobs.shape[0], low_clipped=float(low.sum()),
                                 high_clipped=float(high.sum()), region_clipped=float((low | high).sum()),
                                 approx_kl_sum=float((0.5 * log_ratio.square() * mask).sum()),
                                 num_tokens=float(mask.sum()))
    return loss, stats


def truncated_importance_weights(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                                 cap: float) -> torch.Tensor:
    """Truncated importance sampling (verl's TIS): min(exp(trainer - sampler), ``cap``) per token, no gradient.
    Corrects for the rollout engine sampling from a slightly different distribution than the trainer computes
    (bf16 kernels, a cached decode), so the update stays an estimate for the trainer's own policy."""
    log_ratio = (trainer_logprobs.detach() - sampler_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_ratio).clamp(max=cap)
