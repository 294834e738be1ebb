"""The training algorithms one run can use, and the checks of their settings (imported by config.py).

``algo`` picks what a step does with a batch:
  * ``grpo`` (default): group-normalised advantages and the k3 KL in the loss: HRPO in ``--mode hybrid``, the
    GRPO baseline in ``--mode discrete``. ``num_iterations`` K > 1 reuses each rollout batch for K updates with
    PPO-style ratio clipping (``epsilon``, ``epsilon_high``); K = 1 is strictly on-policy (the paper's).
  * ``ppo``: a value head, GAE advantages (``gamma``, ``lam``), the KL to the reference per token in the reward,
    a clipped policy ratio and a clipped value loss (``vf_coef``, ``cliprange_value``); K epochs (default 4).
  * ``sft``: supervised fine-tuning on the task's gold solutions (``hrpo sft``), plain token embeddings.
``tis_cap`` (any RL algo) weights each token by min(pi_trainer / pi_sampler, cap): truncated importance sampling
between the trainer's log-probs and the log-probs the rollout engine sampled with.

This module imports nothing from hrpo: config.py calls :func:`check_algo` from its ``validate``.
"""

from __future__ import annotations

ALGOS = ("grpo", "ppo", "sft")
PPO_EPOCHS = 4  # num_iterations of --algo ppo when not given (TRL's num_ppo_epochs)


def num_iterations(cfg) -> int:
    """Updates (epochs) per rollout batch: ``cfg.num_iterations``, else 1 for grpo and PPO_EPOCHS for ppo."""
    if cfg.num_iterations is not None:
        return cfg.num_iterations
    return PPO_EPOCHS if cfg.algo == "ppo" else 1


def updates_per_batch(cfg) -> int:
    """Optimizer updates per rollout batch: epochs x mini-batches."""
    return num_iterations(cfg) * cfg.num_mini_batches


def off_policy(cfg) -> bool:
    """Whether the loss needs the batch's old log-probs from a separate pass before the first update (more than
    one update per batch, or PPO, which also needs the old values). With one update they are the update's own."""
    return cfg.algo == "ppo" or updates_per_batch(cfg) > 1


def default_path(cfg) -> bool:
    """The strictly on-policy GRPO/HRPO loss of the paper, computed exactly as before these options existed."""
    return cfg.algo == "grpo" and updates_per_batch(cfg) == 1 and not cfg.tis_cap


def check_algo(cfg, bad) -> None:
    """Raise (through ``bad(key, why)``) for an invalid algorithm setting."""
    if cfg.algo not in ALGOS:
        bad("algo", f"must be one of {', '.join(ALGOS)}")
    if cfg.num_iterations is not None and cfg.num_iterations < 1:
        bad("num_iterations", "must be >= 1 (1 = one update per rollout batch, strictly on-policy)")
    if cfg.num_mini_batches < 1:
        bad("num_mini_batches", "must be >= 1")
    rows = cfg.prompts_per_step * (1 if cfg.algo == "sft" else cfg.group_size)
    if rows % cfg.num_mini_batches:
        bad("num_mini_batches", f"must divide the {rows} sequences of a step (prompts_per_step x group_size)")
    if cfg.epsilon <= 0:
        bad("epsilon", "must be > 0 (the ratio is clipped to [1 - epsilon, 1 + epsilon_high])")
    if cfg.epsilon >= 1:
        bad("epsilon", "must be < 1 (1 - epsilon is the lower clip bound of the ratio)")
    if cfg.epsilon_high is not None and cfg.epsilon_high <= 0:
        bad("epsilon_high", "must be > 0 (default: epsilon)")
    if cfg.tis_cap is not None and cfg.tis_cap < 1:
        bad("tis_cap", "must be >= 1 (the truncation of the importance weight; leave it unset for no correction)")
    for key in ("gamma", "lam"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            bad(key, "must be in [0, 1]")
    if cfg.vf_coef < 0:
        bad("vf_coef", "must be >= 0")
    if cfg.cliprange_value <= 0:
        bad("cliprange_value", "must be > 0")
    if cfg.value_lr < 0:
        bad("value_lr", "must be >= 0")
    if cfg.algo == "sft" and cfg.mode != "discrete":
        bad("mode", "SFT trains on gold text with plain token embeddings: use mode discrete (hrpo sft sets it); "
                    "train the gate afterwards with hrpo train --mode hybrid --init-adapter RUN")
    if cfg.algo == "sft":
        rl_only = [key for key, on in (("tis_cap", bool(cfg.tis_cap)),
                                       ("num_iterations", (cfg.num_iterations or 1) > 1),
                                       ("num_mini_batches", cfg.num_mini_batches > 1)) if on]
        if rl_only:
            bad(rl_only[0], "applies to RL (grpo, ppo), not to sft (one update per step)")
