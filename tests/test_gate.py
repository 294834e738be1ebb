"""Gate and latent formulas against hand-computed values."""

import math

import pytest
import torch

from hrpo import HybridGate, latent_embeddings, topk_latent_embeddings
from hrpo.gate import hidden_ratio, lambda_for_decay, mix_inputs


def test_lambda_init_gives_decay_base_in_range():
    gate = HybridGate(64, r_min=0.99, r_max=0.999)
    u = gate.decay_base()
    assert u.min() >= 0.99 - 1e-6 and u.max() <= 0.999 + 1e-6
    assert u.std() > 0  # drawn per dimension, not constant


def test_lambda_for_decay_inverts_softplus_parameterisation():
    u = torch.tensor([0.5, 0.9, 0.99, 0.999])
    lam = lambda_for_decay(u, c=8.0)
    assert torch.allclose(torch.exp(-8.0 * torch.nn.functional.softplus(-lam)), u, atol=1e-6)


def test_gate_matches_hand_computed_mix():
    gate = HybridGate(2)
    with torch.no_grad():
        for lin in (gate.gate_r, gate.gate_i):
            lin.weight.zero_()
            lin.bias.zero_()  # r = i = sigmoid(0) = 0.5
        gate.Lambda.copy_(lambda_for_decay(torch.tensor([0.99, 0.99])))
    e = torch.tensor([[1.0, 2.0]])
    h = torch.tensor([[3.0, -1.0]])
    mixed, a = gate(e, h)
    a_expected = 0.99 ** 0.5  # a = u^r
    w = math.sqrt(1 - a_expected ** 2 + 1e-8) * 0.5
    assert a[0].tolist() == pytest.approx([a_expected, a_expected], abs=1e-6)
    assert mixed[0, 0].item() == pytest.approx(a_expected * 1.0 + w * 3.0, abs=1e-6)
    assert mixed[0, 1].item() == pytest.approx(a_expected * 2.0 + w * -1.0, abs=1e-6)


def test_gate_at_init_is_almost_pure_token():
    torch.manual_seed(0)
    gate = HybridGate(64, r_min=0.99, r_max=0.999)
    e, h = torch.randn(8, 64), torch.randn(8, 64)
    _, a = gate(e, h)
    # r ~ 0.5 at init, so a = u^r is in about [0.99^0.6, 0.999^0.4]
    assert a.min() > 0.99 ** 0.6 and a.max() < 0.999 ** 0.4
    ratio = hidden_ratio(a.mean(-1), torch.ones(8, dtype=torch.bool))
    assert 0.03 < ratio < 0.12  # sqrt(1 - u) ~ 0.03..0.1


def test_gate_output_dtype_follows_token_embeds_and_computes_in_fp32():
    gate = HybridGate(16)
    e = torch.randn(3, 16).to(torch.bfloat16)
    mixed, a = gate(e, torch.randn(3, 16).to(torch.bfloat16))
    assert mixed.dtype == torch.bfloat16 and a.dtype == torch.float32


def test_gate_rejects_bad_range():
    with pytest.raises(ValueError, match="r_min"):
        HybridGate(4, r_min=0.999, r_max=0.99)


def test_latent_embeddings_hand_computed():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    p = torch.tensor([0.5, 0.5, 0.0])
    h = latent_embeddings(p, emb)
    assert torch.allclose(h, torch.tensor([0.5, 0.5]) / math.sqrt(0.5))
    one_hot = torch.tensor([[0.0, 0.0, 1.0]])
    assert torch.allclose(latent_embeddings(one_hot, emb), emb[2:3])
    uniform = torch.full((3,), 1 / 3)  # sqrt(k) * mean of the rows
    assert torch.allclose(latent_embeddings(uniform, emb), math.sqrt(3) * emb.mean(0), atol=1e-6)


def test_topk_latent_equals_dense_when_p_is_zero_outside_topk():
    torch.manual_seed(0)
    emb = torch.randn(100, 8)
    scores = torch.randn(4, 100)
    vals, ids = scores.topk(5, dim=-1)
    kept = torch.softmax(vals, -1)
    dense = torch.zeros(4, 100).scatter_(-1, ids, kept)
    assert torch.allclose(topk_latent_embeddings(kept, emb[ids]), latent_embeddings(dense, emb), atol=1e-5)


def test_hidden_ratio_hand_computed_and_empty():
    mean_a = torch.tensor([[0.6, 0.8, 0.1]])
    mask = torch.tensor([[True, True, False]])
    assert hidden_ratio(mean_a, mask) == pytest.approx((0.8 + 0.6) / 2)
    assert math.isnan(hidden_ratio(mean_a, torch.zeros_like(mask)))


def test_mix_inputs_only_touches_thinking_positions():
    torch.manual_seed(0)
    gate = HybridGate(8)
    e, h = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out, mean_a = mix_inputs(gate, e, h, mask)
    mixed, a = gate(e, h)
    assert torch.equal(out[mask], mixed[mask]) and torch.equal(out[~mask], e[~mask])
    assert torch.equal(mean_a[~mask], torch.ones(4)) and torch.allclose(mean_a[mask], a.mean(-1)[mask])
