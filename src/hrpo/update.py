"""The update phase of an RL step: from a scored rollout batch to one or more optimizer updates.

* Default (``algo grpo``, ``num_iterations`` 1, one mini-batch, no ``tis_cap``): one update with
  :func:`hrpo.objective.hrpo_loss`, exactly the paper's strictly on-policy step.
* Several updates per batch (``num_iterations`` K epochs x ``num_mini_batches``) or PPO: a no-grad pass first
  computes the batch's *old* log-probs (and PPO's old values) with the parameters that sampled it; then every
  update recomputes the log-probs with grad and uses the clipped ratio exp(logp - old) (:func:`clipped_loss`).
  Mini-batches are contiguous slices of the batch (whole groups when the sizes allow), the same every epoch.
* ``tis_cap`` C: each token's policy term is weighted by min(exp(old - sampler), C), where sampler are the
  log-probs the rollout engine drew the token with (truncated importance sampling); the old log-probs are the
  trainer's, so clipping never acts on the sampler/trainer mismatch.
* PPO (:mod:`hrpo.ppo`): per-token rewards with the KL, GAE over the old values, whitened advantages, the
  clipped policy loss plus ``vf_coef`` times the clipped value loss.

The learning-rate schedule steps once per rollout batch (the trainer does it), so all K updates of a batch use
the same learning rate and ``max_steps`` counts rollout batches whatever K is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .algo import default_path, num_iterations, off_policy
from .distributed import Prepared, any_process, backward, gradient_sync
from .latent_options import latent_config, trains_actions
from .objective import (clipped_loss, completion_logprobs, hrpo_loss, k3_kl, rollout_inputs_embeds,
                        truncated_importance_weights)
from .ppo import gae, token_rewards, value_loss, whiten


def micro_batches(n: int, size: int, start: int = 0) -> list[slice]:
    """Slices of at most ``size`` rows covering rows ``start`` .. ``n - 1``."""
    return [slice(i, min(n, i + size)) for i in range(start, n, size)]


@dataclass
class UpdateResult:
    """What the trainer logs: the loss (mean over updates of each update's batch loss), the policy loss and KL
    (per-sequence means), the gradient norm (mean over updates), how many updates were skipped (non-finite),
    |trainer - sampler| log-prob differences at the batch's parameters, and the algorithm's own metrics."""

    loss: float
    policy_loss: float
    kl: float
    grad_norm: float
    skipped: int
    logp_diffs: torch.Tensor
    extra: dict = field(default_factory=dict)


def apply_update(trainer, loss_value: float) -> tuple[float, bool]:
    """Clip the gradient norm over every optimizer parameter and step, or skip the update (zeroing the
    gradients) when the norm or ``loss_value`` is not finite in any process. Returns (norm, skipped)."""
    cfg = trainer.cfg
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    skipped = any_process(trainer.dist, not (math.isfinite(grad_norm) and math.isfinite(loss_value)))
    if skipped:
        trainer.optimizer.zero_grad(set_to_none=True)
    else:
        trainer.optimizer.step()
    return grad_norm, skipped


def _forward(trainer, prepared, part, temperature: float, with_values: bool):
    """(logprobs (b, C), values (b, C) or None, KL-side log-probs (b, C) or None: the recorded tokens' own, in
    a family mode whose thinking steps' log-probs are other quantities) of one micro-batch under the current
    parameters."""
    cfg = trainer.cfg
    embeds, _ = rollout_inputs_embeds(prepared.model, prepared.gate, part, mode=cfg.mode)
    latent = latent_config(cfg.latent, cfg.mode, cfg.top_k, cfg.top_p)
    tokens: list | None = [] if trains_actions(cfg.mode, latent) else None
    hidden: list | None = [] if with_values else None
    logprobs = completion_logprobs(prepared.model, part, embeds, temperature, cfg.group_size, hidden=hidden,
                                   mode=cfg.mode, latent=latent, token_logprobs=tokens)
    values = trainer.value_head(hidden[0]) if with_values else None
    return logprobs, values, tokens[0] if tokens else None


def _one_update(trainer, prepared, rollout, rows: slice, temperature: float, loss_fn, diffs: list | None):
    """Forward and backward every micro-batch of ``rows`` (gradient accumulation), then one optimizer update.
    Returns (loss sum, stat sums, grad norm, skipped)."""
    cfg = trainer.cfg
    trainer.optimizer.zero_grad(set_to_none=True)
    n = rows.stop - rows.start
    sums: dict[str, float] = {}
    loss_sum = 0.0
    with_values = trainer.value_head is not None
    # With several processes the model and gate are DDP-wrapped: the loss is this process's mean over its n
    # sequences and DDP averages gradients over processes (equal shares), i.e. the global mean's gradient.
    batches = micro_batches(rows.stop, cfg.micro_batch_size, start=rows.start)
    for i, mb in enumerate(batches):
        part = rollout.select(mb)
        with gradient_sync(trainer.dist, prepared, sync=i == len(batches) - 1):
            logprobs, values, kl_logprobs = _forward(trainer, prepared, part, temperature, with_values)
            loss, stats = loss_fn(mb, part, logprobs, values, n, kl_logprobs)
            backward(trainer.dist, loss)
        loss_sum += float(loss.detach())
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + value
        if diffs is not None:
            diffs.append((logprobs.detach() - part.logprobs).abs()[part.completion_mask])
    grad_norm, skipped = apply_update(trainer, loss_sum)
    return loss_sum, sums, grad_norm, skipped


@torch.no_grad()
def old_pass(trainer, prepared, rollout, temperature: float, with_values: bool):
    """The batch's log-probs (B, C) (and values, or None) under the parameters that sampled it, no grad."""
    logprobs, values = [], []
    for mb in micro_batches(rollout.completion_ids.shape[0], trainer.cfg.micro_batch_size):
        lp, v, _ = _forward(trainer, prepared, rollout.select(mb), temperature, with_values)
        logprobs.append(lp)
        values.append(v)
    return torch.cat(logprobs), (torch.cat(values) if with_values else None)


def _grpo_loss(cfg, advantages, ref_logprobs):
    """Today's loss, for the default path."""
    def loss_fn(mb, part, logprobs, values, n, kl_logprobs=None):
        loss, stats = hrpo_loss(logprobs, None if ref_logprobs is None else ref_logprobs[mb], advantages[mb],
                                part.completion_mask, cfg.beta, num_sequences=n, kl_logprobs=kl_logprobs)
        return loss, {"policy": stats.policy_loss_sum, "kl": stats.kl_sum}
    return loss_fn


def _clip_stats(stats) -> dict:
    return {"policy": stats.policy_loss_sum, "kl": stats.kl_sum, "low": stats.low_clipped,
            "high": stats.high_clipped, "region": stats.region_clipped, "approx_kl": stats.approx_kl_sum,
            "tokens": stats.num_tokens}


def _clipped_loss_fn(cfg, advantages, ref_logprobs, old, weights, beta: float):
    """The clipped surrogate against ``old`` log-probs (None: the update's own, detached: K = 1), with TIS
    ``weights`` (B, C) or, when ``old`` is None and tis_cap is set, weights from the update's own log-probs."""
    def loss_fn(mb, part, logprobs, values, n, kl_logprobs=None):
        old_mb = logprobs.detach() if old is None else old[mb]
        w = None
        if cfg.tis_cap:
            w = truncated_importance_weights(old_mb, part.logprobs, cfg.tis_cap) if weights is None else weights[mb]
            loss_fn.weights.append(w[part.completion_mask])
        loss, stats = clipped_loss(logprobs, old_mb, None if ref_logprobs is None else ref_logprobs[mb],
                                   advantages[mb], part.completion_mask, beta, cfg.epsilon, cfg.epsilon_high, w,
                                   num_sequences=n, kl_logprobs=kl_logprobs)
        return loss, _clip_stats(stats)
    loss_fn.weights = []
    return loss_fn


def update_policy(trainer, rollout, rewards: torch.Tensor, advantages: torch.Tensor,
                  ref_logprobs: torch.Tensor | None, temperature: float) -> UpdateResult:
    """Run the update phase of one step (see the module docstring); ``rewards`` (B,) are the task's scores,
    ``advantages`` (B,) their group normalisation (GRPO's; PPO computes its own)."""
    cfg = trainer.cfg
    prepared = trainer.prepared or Prepared(model=trainer.model, gate=trainer.gate, optimizer=trainer.optimizer)
    trainer.model.train()
    n = rollout.completion_ids.shape[0]
    diffs: list = []
    if default_path(cfg):
        loss, sums, grad_norm, skipped = _one_update(trainer, prepared, rollout, slice(0, n), temperature,
                                                     _grpo_loss(cfg, advantages, ref_logprobs), diffs)
        return UpdateResult(loss=loss, policy_loss=sums.get("policy", 0.0) / n, kl=sums.get("kl", 0.0) / n,
                            grad_norm=grad_norm, skipped=int(skipped), logp_diffs=_cat(diffs))
    ppo = cfg.algo == "ppo"
    old = old_values = weights = None
    extra: dict = {}
    if off_policy(cfg):
        old, old_values = old_pass(trainer, prepared, rollout, temperature, with_values=ppo)
        diffs.append((old - rollout.logprobs).abs()[rollout.completion_mask])
        if cfg.tis_cap:
            weights = truncated_importance_weights(old, rollout.logprobs, cfg.tis_cap)
    mask = rollout.completion_mask
    if ppo:
        scores = rewards.to(old.device).float()
        per_token, k1 = token_rewards(scores, old, ref_logprobs, mask, cfg.beta)
        token_adv, returns = gae(per_token, old_values, mask, cfg.gamma, cfg.lam)
        policy_fn = _clipped_loss_fn(cfg, whiten(token_adv, mask), None, old, weights, beta=0.0)
        extra.update(_ppo_kl_metrics(old, ref_logprobs, k1, mask))

        def loss_fn(mb, part, logprobs, values, n_rows, kl_logprobs=None):
            loss, stats = policy_fn(mb, part, logprobs, values, n_rows)
            v_loss, v_stats = value_loss(values, old_values[mb], returns[mb], part.completion_mask,
                                         cfg.cliprange_value, n_rows)
            stats.update(value=v_stats.loss_sum, vclip=v_stats.clipped, vpred=v_stats.vpred_sum)
            return loss + cfg.vf_coef * v_loss, stats
    else:
        loss_fn = policy_fn = _clipped_loss_fn(cfg, advantages, ref_logprobs, old, weights, beta=cfg.beta)
    size = n // cfg.num_mini_batches
    losses, norms, totals, skipped_count, rows_seen = [], [], {}, 0, 0
    for epoch in range(num_iterations(cfg)):
        for j in range(cfg.num_mini_batches):
            first = epoch == 0 and j == 0 and old is None  # on-policy with TIS: the update's own forward
            loss, sums, grad_norm, skipped = _one_update(trainer, prepared, rollout, slice(j * size, (j + 1) * size),
                                                         temperature, loss_fn, diffs if first else None)
            losses.append(loss)
            norms.append(grad_norm)
            skipped_count += int(skipped)
            rows_seen += size
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
    extra.update(_clip_metrics(totals, rows_seen, policy_fn.weights if weights is None else [weights[mask]]))
    kl = extra.pop("kl", None)
    return UpdateResult(loss=sum(losses) / len(losses), policy_loss=totals.get("policy", 0.0) / rows_seen,
                        kl=totals.get("kl", 0.0) / rows_seen if kl is None else kl,
                        grad_norm=sum(norms) / len(norms), skipped=skipped_count, logp_diffs=_cat(diffs),
                        extra=extra)


def _cat(parts: list) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(1)


def _ppo_kl_metrics(old, ref_logprobs, k1, mask) -> dict:
    """``kl``: the per-sequence mean k3 of the batch to the reference, as GRPO logs it; ``objective/kl``: TRL's
    PPO metric, the k1 KL summed over each completion, mean over sequences."""
    if ref_logprobs is None:
        return {"kl": 0.0, "objective/kl": 0.0}
    m = mask.float()
    k3 = (k3_kl(ref_logprobs, old) * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    return {"kl": float(k3.mean()), "objective/kl": float(k1.sum(dim=1).mean())}


def _clip_metrics(totals: dict, rows: int, weights: list) -> dict:
    """Token means over every update of the batch: clip fractions (TRL's GRPO and PPO names), approx KL, the
    value metrics (PPO) and the truncated importance weights applied (with tis_cap)."""
    tokens = max(totals.get("tokens", 0.0), 1.0)
    out = {"clip_ratio/low_mean": totals.get("low", 0.0) / tokens,
           "clip_ratio/high_mean": totals.get("high", 0.0) / tokens,
           "clip_ratio/region_mean": totals.get("region", 0.0) / tokens,
           "policy/approxkl": totals.get("approx_kl", 0.0) / tokens}
    if "value" in totals:
        out.update({"policy/clipfrac": out["clip_ratio/region_mean"], "loss/value": totals["value"] / rows,
                    "val/clipfrac": totals["vclip"] / tokens, "val/vpred": totals["vpred"] / tokens})
    if weights:
        flat = torch.cat(weights)
        if flat.numel():
            out.update({"sampling/importance_sampling_ratio/min": float(flat.min()),
                        "sampling/importance_sampling_ratio/mean": float(flat.mean()),
                        "sampling/importance_sampling_ratio/max": float(flat.max())})
    return out
