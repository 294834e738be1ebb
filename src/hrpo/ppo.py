"""PPO's pieces (``--algo ppo``): the value head, per-token rewards with the KL penalty, GAE, whitening and the
clipped value loss. Pure tensor code; the update loop is in :mod:`hrpo.update`.

Choices (docs/baselines.md says why):
  * **Value head**: one linear layer on the policy's last hidden state (the LM head's input), RMS-normalised
    first, so its scale does not depend on the model. It shares the trunk with the policy: the value loss
    (times ``vf_coef``) also trains the LoRA and, in hybrid mode, the gate, as in the classic actor-critic PPO.
    The alternative, a second LoRA on the same base as the critic, would cost another forward and backward per
    update. The reference pass stays LoRA-off and never reads the value head.
  * **KL**: per token in the reward, as in TRL's PPOTrainer and InstructGPT: r_t = -beta * (logp_old - logp_ref)
    (the k1 estimator on the sampled token), plus the task's reward at the last completion token. The loss
    itself has no KL term.
  * **Advantages**: GAE(gamma, lam) over the completion tokens with V = 0 after the last one, whitened over the
    batch's completion tokens; returns = advantages (before whitening) + values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

class ValueHead(torch.nn.Module):
    """V(s_t) = w . (h_t / rms(h_t)) + b, in fp32, from the last hidden state h_t (..., H) -> (...). Starts at
    w = 0, b = 0 (V = 0 everywhere)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = hidden.float()
        h = h * torch.rsqrt(h.square().mean(dim=-1, keepdim=True) + 1e-6)
        return self.linear(h).squeeze(-1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last real completion token (0 for an empty row); ``mask`` (B, C) bool."""
    return (mask.long().sum(dim=1) - 1).clamp_min(0)


def token_rewards(scores: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                  mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (B, C) fp32: -beta * (old - ref) at every completion token, plus ``scores`` (B,) at each
    row's last one; and the (B, C) k1 KL itself (0 without a reference)."""
    mask = mask.bool()
    kl = torch.zeros_like(old_logprobs) if ref_logprobs is None else (old_logprobs - ref_logprobs).float()
    kl = kl.masked_fill(~mask, 0.0)
    rewards = -beta * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.device).float()
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded completions: (advantages, returns), both (B, C) fp32.

    delta_t = r_t + gamma * V_{t+1} - V_t (V = 0 past the last real token); A_t = delta_t + gamma * lam * A_{t+1};
    returns = A + V. Positions past the last token get 0.
    """
    mask = mask.bool()
    values = values.float().masked_fill(~mask, 0.0)
    rewards = rewards.float().masked_fill(~mask, 0.0)
    width = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages.masked_fill(~mask, 0.0)
    return advantages, (advantages + values).masked_fill(~mask, 0.0)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / sqrt(var + eps) over the real tokens (unbiased variance, as TRL's masked_whiten); 0 at
    padding."""
    mask = mask.bool()
    real = values[mask].float()
    if real.numel() < 2:
        return torch.zeros_like(values, dtype=torch.float32)
    out = (values.float() - real.mean()) * torch.rsqrt(real.var() + eps)
    return out.masked_fill(~mask, 0.0)


@dataclass
class ValueStats:
    """Sums over one (micro-)batch: per-sequence mean value losses, clipped-value tokens, predictions, tokens."""

    loss_sum: float
    clipped: float
    vpred_sum: float
    num_tokens: float


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float, num_sequences: int | None = None) -> tuple[torch.Tensor, ValueStats]:
    """PPO's clipped value loss: 0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2) per token, then the
    per-sequence mean over completion tokens and sum / ``num_sequences`` (as the policy loss)."""
    m = mask.float()
    lengths = m.sum(dim=1).clamp_min(1.0)
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    plain = (values - returns).square()
    clipped = (clipped_values - returns).square()
    per_token = 0.5 * torch.maximum(plain, clipped)
    per_seq = (per_token * m).sum(dim=1) / lengths
    loss = per_seq.sum() / (num_sequences or values.shape[0])
    with torch.no_grad():
        stats = ValueStats(loss_sum=float(per_seq.sum()), clipped=float(((clipped > plain) & mask.bool()).sum()),
                           vpred_sum=float((values * m).sum()), num_tokens=float(m.sum()))
    return loss, stats
