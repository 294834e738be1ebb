"""The hybrid gate and the latent projection (pure tensor code, no Hugging Face imports).

Equations (arXiv 2505.18454, as implemented by the authors):

    latent   h = E^T p / ||p||_2                       p: sampling distribution of the token just drawn
    gates    r = sigmoid(W_r e + b_r),  i = sigmoid(W_i e + b_i)     (both read the token embedding e)
    decay    a = exp(-c * softplus(-Lambda) * r)
    mix      x = a * e + sqrt(1 - a^2 + 1e-8) * (i * h)

Lambda is initialised so that exp(-c * softplus(-Lambda)) = u with u ~ U[r_min, r_max], i.e. a = u^r,
which starts the model almost purely on token embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MIX_EPS = 1e-8


class HybridGate(nn.Module):
    """Gated mix of token embeddings and latent vectors.

    Parameters: ``gate_r`` and ``gate_i`` (``Linear(H, H)`` with bias, N(0, 0.02) weights, zero bias) and
    ``Lambda`` (H,). Always kept in fp32; the mix is computed in fp32 and cast to the input dtype.
    """

    def __init__(self, hidden_size: int, r_min: float = 0.99, r_max: float = 0.999, c: float = 8.0):
        super().__init__()
        if not 0.0 < r_min <= r_max < 1.0:
            raise ValueError(f"HybridGate needs 0 < r_min <= r_max < 1, got r_min={r_min}, r_max={r_max}")
        self.hidden_size = hidden_size
        self.r_min, self.r_max, self.c = r_min, r_max, c
        self.gate_r = nn.Linear(hidden_size, hidden_size, dtype=torch.float32)
        self.gate_i = nn.Linear(hidden_size, hidden_size, dtype=torch.float32)
        self.Lambda = nn.Parameter(torch.empty(hidden_size, dtype=torch.float32))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw gate weights ~ N(0, 0.02), biases 0, and Lambda from u ~ U[r_min, r_max]."""
        with torch.no_grad():
            for linear in (self.gate_r, self.gate_i):
                linear.weight.normal_(0.0, 0.02, generator=generator)
                linear.bias.zero_()
            u = torch.empty_like(self.Lambda).uniform_(self.r_min, self.r_max, generator=generator)
            self.Lambda.copy_(lambda_for_decay(u, self.c))

    def forward(self, token_embeds: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``token_embeds`` (..., H) with ``latents`` (..., H).

        Returns ``(mixed, a)``: ``mixed`` (..., H) in ``token_embeds.dtype`` and the decay ``a`` (..., H) in fp32.
        """
        e = token_embeds.float()
        return gated_mix(e, latents, self.gate_r(e), self.gate_i(e), self.Lambda, self.c, token_embeds.dtype)

    def decay_base(self) -> torch.Tensor:
        """u = exp(-c * softplus(-Lambda)), shape (H,): the value of a when r = 1."""
        return torch.exp(-self.c * F.softplus(-self.Lambda))


def gated_mix(e: torch.Tensor, latents: torch.Tensor, r_logits: torch.Tensor, i_logits: torch.Tensor,
              Lambda: torch.Tensor, c: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The mix of :class:`HybridGate` for the token embeddings ``e`` (..., H) already in fp32 (the tensor its
    projections read, so autograd keeps one copy), from its two gate pre-activations ``r_logits`` = W_r e + b_r
    and ``i_logits`` = W_i e + b_i (..., H) fp32; returns ``(mixed, a)`` as :meth:`HybridGate.forward` does,
    ``mixed`` rounded once to ``dtype``."""
    r, i = torch.sigmoid(r_logits), torch.sigmoid(i_logits)
    a = torch.exp(-c * F.softplus(-Lambda) * r)
    mixed = a * e + torch.sqrt(1.0 - a * a + MIX_EPS) * (i * latents.float())
    return mixed.to(dtype), a


def lambda_for_decay(u: torch.Tensor, c: float = 8.0) -> torch.Tensor:
    """Lambda such that exp(-c * softplus(-Lambda)) == u, for u in (0, 1)."""
    return -torch.log(u.pow(-1.0 / c) - 1.0)


def latent_embeddings(probs: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
    """Dense latent h = E^T p / ||p||_2.

    ``probs`` (..., V) is a probability vector (rows need not be normalised), ``embedding_weight`` (V, H).
    Returns (..., H) in ``embedding_weight.dtype``. For a one-hot p this is the token's own embedding.
    """
    p = probs.float()
    h = p @ embedding_weight.float()
    return (h / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to(embedding_weight.dtype)


def topk_latent_embeddings(topk_probs: torch.Tensor, topk_embeds: torch.Tensor) -> torch.Tensor:
    """Sparse latent: the same h as :func:`latent_embeddings` when p is zero outside the k kept tokens.

    ``topk_probs`` (..., k) and ``topk_embeds`` (..., k, H), the embeddings of the kept tokens as the model's
    embedding layer outputs them. Returns (..., H) in ``topk_embeds.dtype``.
    """
    p = topk_probs.float()
    h = torch.einsum("...k,...kh->...h", p, topk_embeds.float())
    return (h / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to(topk_embeds.dtype)


def hidden_ratio(mean_a: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over masked positions of sqrt(1 - mean_a^2), where ``mean_a`` (...) is the gate a averaged over H
    at each position and ``mask`` (...) bool marks the mixed positions. NaN when no position is mixed."""
    if not bool(mask.any()):
        return math.nan
    values = mean_a.detach().float()[mask]
    return float(torch.sqrt((1.0 - values.square()).clamp_min(0.0)).mean())


def mix_inputs(gate: HybridGate | None, token_embeds: torch.Tensor, latents: torch.Tensor | None,
               thinking_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings with the gated mix applied where ``thinking_mask`` is true.

    ``token_embeds`` (B, T, H), ``latents`` (B, T, H) or None, ``thinking_mask`` (B, T) bool. Returns
    ``(inputs_embeds, mean_a)``: (B, T, H) in ``token_embeds.dtype`` and (B, T) fp32, the gate's a averaged over H
    (1.0 where nothing was mixed). With ``gate`` or ``latents`` None the token embeddings pass through unchanged.
    """
    ones = torch.ones(thinking_mask.shape, dtype=torch.float32, device=token_embeds.device)
    if gate is None or latents is None:
        return token_embeds, ones
    mixed, a = gate(token_embeds, latents)
    keep = thinking_mask.unsqueeze(-1)
    return torch.where(keep, mixed, token_embeds), torch.where(thinking_mask, a.mean(dim=-1), ones)


MODES = ("hybrid", "discrete", "latent", "hidden", "soft", "mixture", "multiplex")


def thinking_inputs(mode: str, gate: HybridGate | None, token_embeds: torch.Tensor, vectors: torch.Tensor | None,
                    thinking_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings for ``mode`` at thinking positions; plain token embeddings elsewhere.

    hybrid: the gated mix of token embedding and latent; discrete: token embeddings only; latent: the latent
    alone (no token embedding, no gate); hidden: the stored last-layer hidden state alone (Coconut-style);
    soft, mixture, multiplex (:mod:`hrpo.latent`): the stored fed-back vector alone.
    ``token_embeds``/``vectors`` (B, T, H), ``thinking_mask`` (B, T). Returns ``(inputs_embeds, mean_a)`` where
    mean_a (B, T) is the weight on the token embedding (the gate's mean a; 0 where latent/hidden replace it).
    """
    if mode == "hybrid":
        return mix_inputs(gate, token_embeds, vectors, thinking_mask)
    ones = torch.ones(thinking_mask.shape, dtype=torch.float32, device=token_embeds.device)
    if mode == "discrete" or vectors is None:
        return token_embeds, ones
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
    replaced = torch.where(thinking_mask.unsqueeze(-1), vectors.to(token_embeds.dtype), token_embeds)
    return replaced, ones.masked_fill(thinking_mask, 0.0)
