"""Reward-model losses against hand-computed values.

Softplus values used below: -log sigmoid(x) = log(1 + e^-x):
  x = 2 -> 0.126928,  x = 1 -> 0.313262,  x = -1 -> 1.313262.
"""

from __future__ import annotations

import math

import pytest
import torch

from tether.math.losses import (
    normalize_ratings,
    pairwise_reward_loss,
    rating_regression_loss,
    reward_centering_loss,
)

SP2, SP1, SPM1 = math.log1p(math.exp(-2)), math.log1p(math.exp(-1)), math.log1p(math.exp(1))


def test_constants_are_what_the_docstring_says():
    assert (SP2, SP1, SPM1) == pytest.approx((0.126928, 0.313262, 1.313262), abs=1e-6)


def test_bradley_terry():
    # d = r_c - r_r = [2, -1]: loss = (sp(2) + sp(-1)) / 2; one of two pairs right; mean gap 0.5.
    chosen, rejected = torch.tensor([[2.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    loss, stats = pairwise_reward_loss(chosen, rejected)
    assert loss.item() == pytest.approx((SP2 + SPM1) / 2, abs=1e-6)  # 0.720095
    assert stats["reward/accuracy"].item() == pytest.approx(0.5)
    assert stats["reward/margin"].item() == pytest.approx(0.5)
    assert stats["reward/chosen"].item() == pytest.approx(1.0)
    assert stats["reward/rejected"].item() == pytest.approx(0.5)


def test_margin_shifts_the_target():
    # Pair 1 asks for a gap of 1: -log sigmoid(2 - 1) = sp(1); pair 2 margin 0: sp(-1).
    chosen, rejected = torch.tensor([[2.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    loss, _ = pairwise_reward_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((SP1 + SPM1) / 2, abs=1e-6)  # 0.813262


def test_tie_is_a_soft_half_label_and_ignores_the_margin():
    # Pair 2 is a tie with d = -1: (sp(-1) + sp(1)) / 2 = 0.813262, margin ignored. Accuracy and margin over pair 1.
    chosen, rejected = torch.tensor([[2.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    loss, stats = pairwise_reward_loss(chosen, rejected, margin=torch.tensor([0.0, 5.0]), tie=torch.tensor([False, True]))
    assert loss.item() == pytest.approx((SP2 + (SPM1 + SP1) / 2) / 2, abs=1e-6)  # 0.470095
    assert stats["reward/accuracy"].item() == pytest.approx(1.0)
    assert stats["reward/margin"].item() == pytest.approx(2.0)


def test_tie_loss_is_minimal_at_equal_rewards():
    rejected = torch.zeros(3, 1)
    losses = [pairwise_reward_loss(torch.full((3, 1), d), rejected, tie=torch.ones(3, dtype=torch.bool))[0].item() for d in (-0.5, 0.0, 0.5)]
    assert losses[1] == pytest.approx(math.log(2), abs=1e-6)
    assert losses[0] > losses[1] and losses[2] > losses[1]


def test_ensemble_columns_and_bootstrap_weights():
    # Two members (columns). Member 0: d = [2, -1]; member 1: d = [1, 1]. Weights [[2, 1], [0, 1]].
    # loss = mean(2 sp(2), 1 sp(1), 0 sp(-1), 1 sp(1)) = (2*0.126928 + 2*0.313262) / 4 = 0.220095
    chosen = torch.tensor([[2.0, 1.0], [0.0, 2.0]])
    rejected = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    loss, stats = pairwise_reward_loss(chosen, rejected, weight=torch.tensor([[2.0, 1.0], [0.0, 1.0]]))
    assert loss.item() == pytest.approx((2 * SP2 + 2 * SP1) / 4, abs=1e-6)
    assert stats["reward/accuracy"].item() == pytest.approx(0.75)


def test_pair_weights_give_the_weighted_mean():
    # d = [2, -1, 1], pair weights [3, 1, 0]: loss = (3 sp(2) + 1 sp(-1) + 0 sp(1)) / (3 + 1 + 0)
    #   = (0.380784 + 1.313262) / 4 = 0.423511; the plain mean would be (sp(2) + sp(-1) + sp(1)) / 3 = 0.584484.
    chosen, rejected = torch.tensor([[2.0], [0.0], [1.0]]), torch.tensor([[0.0], [1.0], [0.0]])
    loss, stats = pairwise_reward_loss(chosen, rejected, pair_weight=torch.tensor([3.0, 1.0, 0.0]))
    assert loss.item() == pytest.approx((3 * SP2 + SPM1) / 4, abs=1e-6)
    assert loss.item() == pytest.approx(0.423511, abs=1e-6)
    assert stats["reward/accuracy"].item() == pytest.approx(2 / 3)  # the figures stay per pair, unweighted
    # With a tie and two bootstrap members: pair 2 is a tie (d = -1 -> (sp(-1) + sp(1)) / 2 for both members),
    # member weights [[2, 0], [1, 1], [1, 1]]: per pair mean_k(weight * l) = [sp(2), (sp(-1) + sp(1)) / 2, sp(1)],
    # weighted by [3, 1, 0] and divided by 4.
    two = lambda t: t.repeat(1, 2)  # noqa: E731
    loss, _ = pairwise_reward_loss(two(chosen), two(rejected), tie=torch.tensor([False, True, False]),
                                   weight=torch.tensor([[2.0, 0.0], [1.0, 1.0], [1.0, 1.0]]), pair_weight=torch.tensor([3.0, 1.0, 0.0]))
    assert loss.item() == pytest.approx((3 * SP2 + (SPM1 + SP1) / 2) / 4, abs=1e-6)


def test_pair_weights_of_one_give_the_unweighted_loss_and_gradient():
    chosen = torch.tensor([[2.0], [0.0], [0.5]], requires_grad=True)
    rejected = torch.tensor([[0.0], [1.0], [0.0]])
    margin, tie = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([False, False, True])
    plain, _ = pairwise_reward_loss(chosen, rejected, margin, tie)
    (plain_grad,) = torch.autograd.grad(plain, chosen)
    for ones in (torch.ones(3), torch.full((3,), 0.25)):  # any constant weight is the plain mean
        weighted, _ = pairwise_reward_loss(chosen, rejected, margin, tie, pair_weight=ones)
        (weighted_grad,) = torch.autograd.grad(weighted, chosen)
        torch.testing.assert_close(weighted, plain, rtol=0, atol=1e-7)
        torch.testing.assert_close(weighted_grad, plain_grad, rtol=0, atol=1e-7)
    zero, _ = pairwise_reward_loss(chosen, rejected, pair_weight=torch.zeros(3))  # a batch of weight 0 costs nothing
    assert zero.item() == 0.0


def test_gradient_pushes_chosen_up():
    chosen = torch.tensor([[0.0]], requires_grad=True)
    rejected = torch.tensor([[0.0]], requires_grad=True)
    loss, _ = pairwise_reward_loss(chosen, rejected)
    loss.backward()
    # d loss / d r_c = -sigmoid(-d) = -0.5 at d = 0
    assert chosen.grad.item() == pytest.approx(-0.5)
    assert rejected.grad.item() == pytest.approx(0.5)


def test_reward_centering():
    # (1 + -1)^2 = 0, (2 + 1)^2 = 9 -> mean 4.5
    assert reward_centering_loss(torch.tensor([[1.0], [2.0]]), torch.tensor([[-1.0], [1.0]])).item() == pytest.approx(4.5)


def test_normalize_ratings_per_aspect_over_rated_entries():
    # aspect 0: values 1, 3 -> mean 2, std 1 -> z -1, 1. aspect 1: only 5 rated -> std 0 becomes 1, z 0.
    ratings = torch.tensor([[1.0, 5.0], [3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    z, mean, std = normalize_ratings(ratings, mask)
    assert z.tolist() == [[-1.0, 0.0], [1.0, 0.0]]
    assert mean.tolist() == [2.0, 5.0]
    assert std.tolist() == [1.0, 1.0]


def test_rating_regression_skips_unrated_aspects():
    # errors: (0.5 - 1)^2 = 0.25, (1 - 0)^2 = 1, (-1 - -1)^2 = 0; the fourth entry is unrated.
    predictions = torch.tensor([[[0.5, 1.0]], [[-1.0, 3.0]]])  # (B=2, K=1, A=2)
    targets = torch.tensor([[1.0, 0.0], [-1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = rating_regression_loss(predictions, targets, mask)
    assert loss.item() == pytest.approx(1.25 / 3, abs=1e-6)
    assert stats["reward/mse"].item() == pytest.approx(1.25 / 3, abs=1e-6)
    assert stats["reward/mae"].item() == pytest.approx(1.5 / 3, abs=1e-6)


def test_rating_regression_weights_members():
    # K = 2 members predict the same; member 1 weight 0 -> loss = (0.25 * 1 + 0.25 * 0) / 2 = 0.125
    predictions = torch.tensor([[[0.5], [0.5]]])  # (1, 2, 1)
    loss, _ = rating_regression_loss(predictions, torch.tensor([[1.0]]), torch.tensor([[1.0]]), weight=torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(0.125)
