"""The online-RL math (tether.math.losses, online RL section) against numbers worked out by hand in each docstring."""

from __future__ import annotations

import math

import pytest
import torch

from tether.math.losses import (
    adaptive_kl_coef,
    aggregate_loss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae_advantages,
    group_advantages,
    kl_estimate,
    kl_penalized_rewards,
    leave_one_out_advantages,
    masked_whiten,
    truncated_is_weights,
)


def close(actual, expected, tol=1e-5):
    return torch.allclose(torch.as_tensor(actual, dtype=torch.float32), torch.tensor(expected, dtype=torch.float32), atol=tol)


def test_gae_by_hand():
    """gamma 1, lambda 0.5. Row 1: r = [0, 0, 1], V = [.5, .6, .7]:
    t2: delta = 1 + 0 - .7 = .3, A = .3; t1: delta = 0 + .7 - .6 = .1, A = .1 + .5*.3 = .25;
    t0: delta = .6 - .5 = .1, A = .1 + .5*.25 = .225; returns = A + V = [.725, .85, 1.0].
    Row 2 has a padded last token (huge reward and value there must not leak): r = [0, 2], V = [1, .5]:
    t1: delta = 2 - .5 = 1.5; t0: delta = .5 - 1 = -.5, A = -.5 + .5*1.5 = .25; returns = [1.25, 2.0, 0]."""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    assert close(advantages, [[0.225, 0.25, 0.3], [0.25, 1.5, 0.0]])
    assert close(returns, [[0.725, 0.85, 1.0], [1.25, 2.0, 0.0]])


def test_gae_with_discount():
    """gamma .5, lambda 1, r = [0, 0, 1], V = [.5, .6, .7]: t2: A = .3; t1: delta = .5*.7 - .6 = -.25,
    A = -.25 + .5*.3 = -.1; t0: delta = .5*.6 - .5 = -.2, A = -.2 + .5*(-.1) = -.25."""
    advantages, _ = gae_advantages(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), gamma=0.5, lam=1.0)
    assert close(advantages, [[-0.25, -0.1, 0.3]])


def test_whitening_ignores_padding():
    """[1, 2, 3] (pad 100): mean 2, unbiased variance 1 -> [-1, 0, 1], padding 0; without the shift the mean stays."""
    values = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert close(masked_whiten(values, mask), [[-1.0, 0.0], [1.0, 0.0]], tol=1e-4)
    assert close(masked_whiten(values, mask, shift_mean=False), [[1.0, 2.0], [3.0, 0.0]], tol=1e-4)


def test_group_advantages_by_hand():
    """Groups of 3: [1, 2, 3] has mean 2, sample std 1 -> [-1, 0, 1] / (1 + 1e-4); [5, 5, 5] -> 0 (no NaN)."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    scaled = group_advantages(rewards, 3)
    assert close(scaled, [-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0])
    rewards = torch.tensor([1.0, 2.0, 6.0, 5.0, 5.0, 5.0])
    assert close(group_advantages(rewards, 3, scale_by_std=False), [-2.0, -1.0, 3.0, 0.0, 0.0, 0.0])


def test_leave_one_out_by_hand():
    """[1, 2, 3]: A_1 = 1 - (2+3)/2 = -1.5, A_2 = 2 - (1+3)/2 = 0, A_3 = 3 - (1+2)/2 = 1.5; [4, 0] -> [4, -4]."""
    assert close(leave_one_out_advantages(torch.tensor([1.0, 2.0, 3.0]), 3), [-1.5, 0.0, 1.5])
    assert close(leave_one_out_advantages(torch.tensor([4.0, 0.0, 1.0, 1.0]), 2), [4.0, -4.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        leave_one_out_advantages(torch.tensor([1.0]), 1)


def test_kl_estimators_by_hand():
    """p = .5, q = .25: log ratio = ln 2. k1 = ln 2 = .693147; k2 = (ln 2)^2 / 2 = .240227;
    k3 = q/p - 1 + ln 2 = .5 - 1 + .693147 = .193147. Equal policies give 0 for all three."""
    logps, ref = torch.log(torch.tensor([[0.5, 0.3]])), torch.log(torch.tensor([[0.25, 0.3]]))
    assert close(kl_estimate(logps, ref, "k1"), [[math.log(2), 0.0]])
    assert close(kl_estimate(logps, ref, "k2"), [[0.5 * math.log(2) ** 2, 0.0]])
    assert close(kl_estimate(logps, ref, "k3"), [[0.5 - 1 + math.log(2), 0.0]])
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(logps, ref, "k4")


def test_kl_penalized_rewards_put_the_score_on_the_last_token():
    """coef .5: row 1 = -.5 * [.1, .2, .3] + [0, 0, 2] = [-.05, -.1, 1.85];
    row 2 (last real token at 1) = -.5 * [.4, .5] + [0, -1] = [-.2, -1.25], padding 0."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = kl_penalized_rewards(torch.tensor([2.0, -1.0]), kl, mask, 0.5)
    assert close(rewards, [[-0.05, -0.1, 1.85], [-0.2, -1.25, 0.0]])


def test_clipped_policy_loss_by_hand():
    """ratios [1.5, .5], A = 1, eps .2: unclipped [-1.5, -.5], clipped [-1.2, -.8], max [-1.2, -.5] -> mean -.85;
    clipped on the first token only -> clipfrac .5; approx_kl = ((ln 1.5)^2 + (ln .5)^2) / 4 = .161212.
    With A = -1 the pessimistic max keeps the unclipped 1.5 for ratio 1.5 and the clipped .8 for ratio .5."""
    logps = torch.log(torch.tensor([[1.5, 0.5]]))
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    loss, stats = clipped_policy_loss(logps, old, torch.ones(1, 2), mask, clip_range=0.2)
    assert close(loss, -0.85)
    assert close(stats["policy/clipfrac"], 0.5)
    assert close(stats["policy/approx_kl"], (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 4)
    loss, _ = clipped_policy_loss(logps, old, -torch.ones(1, 1), mask, clip_range=0.2)
    assert close(loss, (1.5 + 0.8) / 2)
    # Importance weights scale each token: [2, 0] keeps only twice the first token's loss.
    loss, _ = clipped_policy_loss(logps, old, torch.ones(1, 2), mask, 0.2, is_weights=torch.tensor([[2.0, 0.0]]))
    assert close(loss, (-2.4 + 0.0) / 2)


def test_ratio_one_gives_the_plain_policy_gradient():
    """At ratio 1 nothing is clipped and d(loss)/d(logp_t) = -A_t / n_tokens."""
    logps = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    loss, stats = clipped_policy_loss(logps, logps.detach(), torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[1, 1, 0]]))
    loss.backward()
    assert close(logps.grad, [[-0.5, 1.0, 0.0]])
    assert stats["policy/clipfrac"] == 0 and stats["policy/ratio"] == 1


def test_clipped_value_loss_by_hand():
    """V = [1, 0], V_old = [.5, .5], R = [.8, 0], clip .2: V_clip = [.7, .3]; unclipped sq [.04, 0], clipped sq
    [.01, .09]; max [.04, .09]; loss = .5 * mean = .0325; the clipped term wins on token 2 -> clipfrac .5."""
    loss, stats = clipped_value_loss(
        torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[0.8, 0.0]]), torch.ones(1, 2), 0.2
    )
    assert close(loss, 0.0325)
    assert close(stats["val/clipfrac"], 0.5)


def test_token_and_sequence_aggregation():
    """[[1, 2, 3], [4, pad, pad]]: token mean (1+2+3+4)/4 = 2.5; sequence mean (2 + 4)/2 = 3."""
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 50.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert close(aggregate_loss(per_token, mask, "token"), 2.5)
    assert close(aggregate_loss(per_token, mask, "sequence"), 3.0)
    with pytest.raises(ValueError, match="token, sequence"):
        aggregate_loss(per_token, mask, "batch")


def test_entropy_adaptive_kl_and_importance_weights():
    # Uniform over 4 tokens: ln 4; a near-one-hot distribution: ~0.
    assert close(entropy_from_logits(torch.zeros(1, 1, 4)), [[math.log(4)]])
    assert entropy_from_logits(torch.tensor([[[50.0, 0.0, 0.0]]])).item() < 1e-6
    # KL 12 against target 6: error clipped to .2; coef .1 * (1 + .2 * 100 / 10000) = .1002. KL 3: error -.5 -> -.2.
    assert math.isclose(adaptive_kl_coef(0.1, 12.0, 6.0, 10000, 100), 0.1002)
    assert math.isclose(adaptive_kl_coef(0.1, 3.0, 6.0, 10000, 100), 0.0998)
    # Probability ratios trainer/sampler: .3/.1 = 3 -> capped at 2; .1/.2 = .5 stays.
    trainer, sampler = torch.log(torch.tensor([[0.3, 0.1]])), torch.log(torch.tensor([[0.1, 0.2]]))
    assert close(truncated_is_weights(trainer, sampler, cap=2.0), [[2.0, 0.5]])
