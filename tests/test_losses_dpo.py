"""Offline preference losses (DPO, cDPO, IPO, KTO) against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tether.math.losses import dpo_loss, ipo_loss, kto_loss


def _pairs():
    """Two pairs. Policy log-probs chosen [-1, -2], rejected [-3, -1]; reference all -2.

    Log-ratios: chosen [1, 0], rejected [-1, 1]; h = chosen - rejected = [2, -1].
    """
    t = torch.tensor
    return t([-1.0, -2.0]), t([-3.0, -1.0]), t([-2.0, -2.0]), t([-2.0, -2.0])


def test_dpo_loss_by_hand():
    # beta = 0.5: beta*h = [1, -0.5]; -log sigmoid(1) = log(1 + e^-1) = 0.313262,
    # -log sigmoid(-0.5) = log(1 + e^0.5) = 0.974077; mean 0.643669.
    loss, stats = dpo_loss(*_pairs(), beta=0.5)
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(0.5))) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.6436693358, abs=1e-6)
    # rewards = beta * log-ratio: chosen [0.5, 0], rejected [-0.5, 0.5]
    assert stats["rewards/chosen"].item() == pytest.approx(0.25)
    assert stats["rewards/rejected"].item() == pytest.approx(0.0)
    assert stats["rewards/accuracies"].item() == pytest.approx(0.5)  # 0.5 > -0.5 yes, 0 > 0.5 no
    assert stats["rewards/margins"].item() == pytest.approx(0.25)  # mean of [1, -0.5]
    assert stats["logps/chosen"].item() == pytest.approx(-1.5)
    assert stats["logps/rejected"].item() == pytest.approx(-2.0)


def test_cdpo_loss_by_hand():
    # eps = 0.1: 0.9 * -log sigmoid(x) + 0.1 * -log sigmoid(-x), which is -log sigmoid(x) + 0.1 x:
    # x = 1: 0.313262 + 0.1 = 0.413262; x = -0.5: 0.974077 - 0.05 = 0.924077; mean 0.668669.
    loss, _ = dpo_loss(*_pairs(), beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.6686693358, abs=1e-6)
    # eps = 0 is plain DPO
    plain, _ = dpo_loss(*_pairs(), beta=0.5, label_smoothing=0.0)
    assert plain.item() == pytest.approx(0.6436693358, abs=1e-6)


def test_ipo_loss_by_hand():
    # tau = beta = 0.5: target 1 / (2 tau) = 1; h = [2, -1] -> (2 - 1)^2 = 1, (-1 - 1)^2 = 4; mean 2.5.
    loss, stats = ipo_loss(*_pairs(), beta=0.5)
    assert loss.item() == pytest.approx(2.5)
    assert stats["rewards/margins"].item() == pytest.approx(0.25)


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected, ref_c, ref_r = _pairs()
    chosen.requires_grad_(True)
    rejected.requires_grad_(True)
    loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.5)
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    # d/dchosen_i of mean(-log sigmoid(beta h_i)) = -beta * sigmoid(-beta h_i) / B
    expected = -0.5 * torch.sigmoid(-torch.tensor([1.0, -0.5])) / 2
    assert torch.allclose(chosen.grad, expected, atol=1e-6)


def test_kto_loss_by_hand():
    # logps [-1, -2, -3], ref [-2, -1, -3] -> r = [1, -1, 0]; desirable [T, F, T]; z0 = 0.5; beta 1;
    # lambda_D = 1, lambda_U = 2.
    # ex0 (desirable):   1 - sigmoid(1 - 0.5)       = 1 - 0.622459 = 0.377541
    # ex1 (undesirable): 2 - 2 sigmoid(0.5 - (-1))  = 2 - 1.635149 = 0.364851
    # ex2 (desirable):   1 - sigmoid(0 - 0.5)       = 1 - 0.377541 = 0.622459
    # mean 0.454950
    logps, ref = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -1.0, -3.0])
    desirable = torch.tensor([True, False, True])
    loss, stats = kto_loss(logps, ref, desirable, torch.tensor(0.5), beta=1.0, desirable_weight=1.0, undesirable_weight=2.0)
    assert loss.item() == pytest.approx(0.4549503492, abs=1e-6)
    assert stats["rewards/chosen"].item() == pytest.approx(0.5)  # mean of r over desirable [1, 0]
    assert stats["rewards/rejected"].item() == pytest.approx(-1.0)
    assert stats["objective/kl"].item() == pytest.approx(0.5)


def test_kto_reference_point_is_clamped_at_zero_and_carries_no_gradient():
    # z0 = max(0, -1) = 0: 1 - sigmoid(1) = 0.268941; 2 - 2 sigmoid(1) = 0.537883; 1 - sigmoid(0) = 0.5;
    # mean 0.435608.
    logps, ref = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -1.0, -3.0])
    kl = torch.tensor(-1.0, requires_grad=True)
    loss, _ = kto_loss(logps.requires_grad_(True), ref, torch.tensor([True, False, True]), kl, beta=1.0, undesirable_weight=2.0)
    assert loss.item() == pytest.approx(0.4356080880, abs=1e-6)
    loss.backward()
    assert kl.grad is None and logps.grad is not None
