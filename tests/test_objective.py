"""Advantages, k3 KL and the loss against hand-computed values (and their gradients)."""

import math

import pytest
import torch

from hrpo import group_advantages, hrpo_loss, k3_kl


def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    adv = group_advantages(rewards, group_size=4)
    std1 = 0.5  # unbiased std of [1,0,0,0]
    std2 = math.sqrt(4 * 0.25 / 3)  # unbiased std of [1,1,0,0]
    expected = [0.75 / (std1 + 1e-4)] + [-0.25 / (std1 + 1e-4)] * 3 + [0.5 / (std2 + 1e-4)] * 2 + \
        [-0.5 / (std2 + 1e-4)] * 2
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)


def test_group_advantages_equal_rewards_give_zero():
    assert group_advantages(torch.ones(6), 3).abs().max() == 0


def test_group_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.ones(6), 4)


def test_k3_hand_computed():
    ref = torch.log(torch.tensor([0.5, 0.25]))
    logp = torch.log(torch.tensor([0.25, 0.25]))
    kl = k3_kl(ref, logp)
    assert kl[0].item() == pytest.approx(2 - math.log(2) - 1, abs=1e-6)
    assert kl[1].item() == pytest.approx(0.0, abs=1e-7)


def test_loss_value_and_gradient_hand_computed():
    # two sequences: lengths 2 and 1 (mask), advantages +1 and -2, beta 0.1
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.2, 0.9]])).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.4, 0.1]]))
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[True, True], [True, False]])
    beta = 0.1
    loss, stats = hrpo_loss(logp, ref, adv, mask, beta)
    kl00, kl01 = 0.0, 2 - math.log(2) - 1
    kl10 = 2 - math.log(2) - 1
    seq0 = (-1.0 - 1.0) / 2 + beta * (kl00 + kl01) / 2
    seq1 = 2.0 + beta * kl10
    assert loss.item() == pytest.approx((seq0 + seq1) / 2, rel=1e-6)
    assert stats.kl_sum == pytest.approx((kl00 + kl01) / 2 + kl10, rel=1e-6)
    loss.backward()
    # d/dlogp of [-A*ratio + beta*k3] = -A + beta*(1 - exp(ref - logp)); /len; /num_sequences
    r01 = 0.5 / 0.25
    r10 = 0.4 / 0.2
    expected = torch.tensor([[(-1 + beta * (1 - 1)) / 2 / 2, (-1 + beta * (1 - r01)) / 2 / 2],
                             [(2 + beta * (1 - r10)) / 1 / 2, 0.0]])
    assert torch.allclose(logp.grad, expected, atol=1e-6)


def test_micro_batch_losses_add_up_to_full_batch():
    torch.manual_seed(0)
    logp, ref = torch.randn(4, 5), torch.randn(4, 5)
    adv, mask = torch.randn(4), torch.rand(4, 5) > 0.3
    mask[:, 0] = True
    full, _ = hrpo_loss(logp, ref, adv, mask, 0.005)
    parts = sum(hrpo_loss(logp[s], ref[s], adv[s], mask[s], 0.005, num_sequences=4)[0]
                for s in (slice(0, 1), slice(1, 4)))
    assert parts.item() == pytest.approx(full.item(), rel=1e-6)
