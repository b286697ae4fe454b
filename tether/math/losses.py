"""All the math, torch only. Each function is short, names its paper, and documents its tensor shapes.

Sections: masked reductions (shared), reward models, offline preference optimization (DPO/IPO/cDPO/KTO), online
RL (PPO, GAE, GRPO/RLOO advantages, KL estimators). Losses return ``(loss, stats)`` where ``stats`` is a flat dict
keyed ``group/name`` of detached scalars.
"""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------------------------------
# Masked reductions: padding never enters a sum or a mean.
# ---------------------------------------------------------------------------------------------------------------


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is 1. shape: values, mask (B, T)."""
    masked = values * mask
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 when the mask is empty). shape: values, mask (B, T)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return masked_sum(values, mask) / mask.sum().clamp(min=1.0)
    return masked_sum(values, mask, dim) / mask.sum(dim=dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked entries (Bessel-corrected by default)."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        var = var * count / (count - 1).clamp(min=1.0)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalize the masked entries to mean 0 (unless ``shift_mean`` is False) and variance 1; padding stays 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ---------------------------------------------------------------------------------------------------------------
# Reward models
# Rewards carry one column per ensemble member: shape (B, K); K = 1 for a single model.
# ---------------------------------------------------------------------------------------------------------------


def pairwise_reward_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    tie: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    pair_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry pairwise loss, with optional margins, ties, per-member (bootstrap) and per-pair weights.

    A preferred pair costs ``-log sigmoid(r_c - r_r - m)`` (Bradley & Terry 1952; Ouyang et al. 2022, Eq. 1); the
    margin ``m`` asks for a larger gap when annotators were surer (Touvron et al. 2023, Llama 2, Sec. 3.2.2).
    Ties, our choice: a tie is the Bradley-Terry likelihood with a soft label of 1/2,
    ``-(log sigmoid(d) + log sigmoid(-d)) / 2`` with ``d = r_c - r_r``; it is minimal at ``d = 0``, so a tie pulls
    the two rewards together and ignores the margin. Ties do not count in the accuracy.
    ``weight`` (bootstrap weights, mean 1) scales each member's loss; the loss is ``mean(weight * l)`` so that
    averaging it over processes gives the loss of the global batch.
    ``pair_weight`` (w >= 0 per row, e.g. its annotator's Dawid-Skene reliability) makes it the weighted mean
    ``sum_b w_b * mean_k(weight * l)_b / sum_b w_b``; the caller scales a micro batch's loss by its share of the
    batch's weight. Without it the loss is the plain mean, computed as before.

    shape: chosen_rewards, rejected_rewards (B, K); margin, tie, pair_weight (B,); weight (B, K) -> loss ().
    """
    diff = chosen_rewards - rejected_rewards  # (B, K)
    target = diff if margin is None else diff - margin.unsqueeze(-1)
    losses = -torch.nn.functional.logsigmoid(target)
    is_tie = torch.zeros_like(diff, dtype=torch.bool) if tie is None else tie.bool().unsqueeze(-1).expand_as(diff)
    tie_losses = -0.5 * (torch.nn.functional.logsigmoid(diff) + torch.nn.functional.logsigmoid(-diff))
    losses = torch.where(is_tie, tie_losses, losses)
    losses = losses if weight is None else losses * weight
    if pair_weight is None:
        loss = losses.mean()
    else:  # sum(w * l) / sum(w): a batch whose weights are all 0 gives 0
        loss = (pair_weight.unsqueeze(-1) * losses).mean(dim=1).sum() / pair_weight.sum().clamp(min=1e-12)
    preferred = (~is_tie).to(diff.dtype)
    stats = {
        "reward/accuracy": masked_mean((diff > 0).to(diff.dtype), preferred).detach(),
        "reward/margin": masked_mean(diff, preferred).detach(),
        "reward/chosen": chosen_rewards.mean().detach(),
        "reward/rejected": rejected_rewards.mean().detach(),
    }
    return loss, stats


def reward_centering_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Auxiliary loss that keeps rewards centred on zero: ``mean((r_c + r_r) ** 2)``.

    Eisenstein et al. 2023 ("Helping or Herding?", Sec. 3): the Bradley-Terry loss only sees differences, so the
    reward's offset drifts; this pins it. The caller multiplies it by a small coefficient (e.g. 0.01).
    shape: chosen_rewards, rejected_rewards (B, K) -> ().
    """
    return ((chosen_rewards + rejected_rewards) ** 2).mean()


def pearson_correlation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson's correlation of two samples, differentiable; 0 when either is constant. shape: x, y (N,) -> ()."""
    dx, dy = x - x.mean(), y - y.mean()
    return (dx * dy).sum() / (dx.pow(2).sum().sqrt() * dy.pow(2).sum().sqrt() + eps)


def odin_length_loss(
    quality_rewards: torch.Tensor, length_rewards: torch.Tensor, lengths: torch.Tensor, quality_weight: torch.Tensor, length_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """ODIN's two auxiliary losses (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF", ICML 2024):
    the preference loss is taken on the sum ``r = r_Q + r_L`` of a quality head and a length head; these two push
    the length into the length head and out of the quality head, which alone is kept for scoring.

    - correlation loss ``L_L = mean_k |rho(r_Q^k, L)| - rho(r_L, L)``: Pearson's rho over the batch's completions,
      ``L`` their lengths in tokens (k: the ensemble's quality heads);
    - orthogonality loss ``L_O = mean_k |w_Q^k . w_L|``: the heads' output weight vectors kept orthogonal.

    shape: quality_rewards (N, K); length_rewards, lengths (N,); quality_weight (K, H); length_weight (H,)
    -> (L_L (), L_O (), stats).
    """
    lengths = lengths.to(quality_rewards.dtype)
    quality_corr = torch.stack([pearson_correlation(quality_rewards[:, k], lengths) for k in range(quality_rewards.shape[1])])  # (K,)
    length_corr = pearson_correlation(length_rewards, lengths)
    correlation_loss = quality_corr.abs().mean() - length_corr
    orthogonal_loss = (quality_weight @ length_weight).abs().mean()
    stats = {
        "length/quality_correlation": quality_corr.mean().detach(),
        "length/length_correlation": length_corr.detach(),
        "length/orthogonality": orthogonal_loss.detach(),
    }
    return correlation_loss, orthogonal_loss, stats


def normalize_ratings(ratings: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-aspect z-scores of ratings, over the rated entries only (unrated entries stay 0).

    shape: ratings, mask (N, A) -> (z (N, A), mean (A,), std (A,)); a constant aspect gets std 1.
    """
    mask = mask.to(ratings.dtype)
    count = mask.sum(0).clamp(min=1.0)
    mean = (ratings * mask).sum(0) / count
    var = (((ratings - mean) ** 2) * mask).sum(0) / count
    std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
    return (ratings - mean) / std * mask, mean, std


def rating_regression_loss(
    predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean squared error of each aspect's head against its normalized rating; unrated aspects are skipped.

    One output per (member, aspect) (multi-aspect regression as in HelpSteer / SteerLM, Wang et al. 2023).
    The loss is a sum over entries divided by the batch's number of rated entries times K.
    shape: predictions (B, K, A); targets, mask (B, A); weight (B, K) bootstrap weights -> loss ().
    """
    mask = mask.to(predictions.dtype).unsqueeze(1).expand_as(predictions)  # (B, K, A)
    errors = (predictions - targets.unsqueeze(1)) ** 2
    if weight is not None:
        errors = errors * weight.unsqueeze(-1)
    loss = masked_sum(errors, mask) / mask.sum().clamp(min=1.0)
    stats = {
        "reward/mse": masked_mean((predictions - targets.unsqueeze(1)) ** 2, mask).detach(),
        "reward/mae": masked_mean((predictions - targets.unsqueeze(1)).abs(), mask).detach(),
    }
    return loss, stats


# ---------------------------------------------------------------------------------------------------------------
# Offline preference optimization: DPO, IPO, cDPO, KTO
# Inputs are sequence log-probs log pi(y|x) summed over the completion's tokens, shape (B,), for the policy and
# the frozen reference. The implicit reward is beta * (log pi_theta(y|x) - log pi_ref(y|x)) (DPO, Sec. 5).
# ---------------------------------------------------------------------------------------------------------------


def _preference_stats(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The metrics every pairwise offline loss reports (names as TRL's, so dashboards compare)."""
    return {
        "rewards/chosen": chosen_rewards.mean().detach(),
        "rewards/rejected": rejected_rewards.mean().detach(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().detach(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().detach(),
        "logps/chosen": chosen_logps.mean().detach(),
        "logps/rejected": rejected_logps.mean().detach(),
    }


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023, Eq. 7); with ``label_smoothing`` eps > 0 it is conservative DPO (cDPO).

    ``h = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))``;
    DPO: ``-log sigmoid(beta h)``. cDPO (Mitchell 2023, "A note on DPO with noisy preferences") assumes each label
    is flipped with probability eps: ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``.
    The loss is the mean over the pairs. shape: all inputs (B,) -> loss ().
    """
    chosen_logratios = chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = rejected_logps - ref_rejected_logps  # (B,)
    logits = beta * (chosen_logratios - rejected_logratios)  # beta * h, (B,)
    losses = -(1.0 - label_smoothing) * torch.nn.functional.logsigmoid(logits) - label_smoothing * torch.nn.functional.logsigmoid(-logits)
    stats = _preference_stats(chosen_logps, rejected_logps, beta * chosen_logratios, beta * rejected_logratios)
    return losses.mean(), stats


def ipo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO (Azar et al. 2023, "A general theoretical paradigm...", Eq. 17): ``(h - 1 / (2 tau)) ** 2``, tau = beta.

    ``h`` as in DPO. IPO regresses the log-ratio gap to a finite target instead of pushing it to infinity, so it
    does not overfit deterministic preferences. The trainer passes log-probs averaged over the completion's tokens
    (the form the IPO authors used, as TRL does); this function takes whatever it is given.
    shape: all inputs (B,) -> loss ().
    """
    chosen_logratios = chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = rejected_logps - ref_rejected_logps  # (B,)
    losses = (chosen_logratios - rejected_logratios - 1.0 / (2.0 * beta)) ** 2
    stats = _preference_stats(chosen_logps, rejected_logps, beta * chosen_logratios, beta * rejected_logratios)
    return losses.mean(), stats


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", Eq. 8).

    ``r = log pi(y|x) - log pi_ref(y|x)``; ``z0`` = ``kl`` is the reference point, the batch estimate
    ``max(0, mean(log pi(y'|x) - log pi_ref(y'|x)))`` over mismatched pairs (x, y'), taken without gradient.
    Value: ``lambda_D sigmoid(beta (r - z0))`` for desirable y, ``lambda_U sigmoid(beta (z0 - r))`` for
    undesirable y; loss = mean of ``lambda_y - v(x, y)`` over the examples.
    shape: logps, ref_logps, desirable (bool) (B,); kl () -> loss ().
    """
    rewards = logps - ref_logps  # r, (B,)
    z0 = kl.detach().clamp(min=0)
    desirable = desirable.bool()
    weights = torch.where(desirable, torch.full_like(rewards, desirable_weight), torch.full_like(rewards, undesirable_weight))
    values = weights * torch.sigmoid(beta * torch.where(desirable, rewards - z0, z0 - rewards))  # v(x, y), (B,)
    losses = weights - values
    chosen, rejected = desirable.float(), (~desirable).float()
    stats = {
        "rewards/chosen": masked_mean(beta * rewards, chosen).detach(),
        "rewards/rejected": masked_mean(beta * rewards, rejected).detach(),
        "rewards/margins": (masked_mean(beta * rewards, chosen) - masked_mean(beta * rewards, rejected)).detach(),
        "logps/chosen": masked_mean(logps, chosen).detach(),
        "logps/rejected": masked_mean(logps, rejected).detach(),
        "objective/kl": z0,
    }
    return losses.mean(), stats



# ---------------------------------------------------------------------------------------------------------------
# Online RL: PPO, GAE, GRPO / RLOO advantages, KL estimators
# ---------------------------------------------------------------------------------------------------------------


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled from the policy (Schulman 2020,
    "Approximating KL divergence"). With ``log_ratio = logps - ref_logps``: k1 = log_ratio (unbiased, can be
    negative; Ziegler et al. 2019), k2 = log_ratio**2 / 2, k3 = exp(-log_ratio) - 1 + log_ratio (unbiased, never
    negative; GRPO, Shao et al. 2024 Eq. 4).

    shape: logps, ref_logps (B, T) -> (B, T).
    """
    log_ratio = logps - ref_logps
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: k1, k2, k3")


def kl_penalized_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards of RLHF-PPO (Ziegler et al. 2019, Eq. 2; Huang et al. 2024, detail 4):
    ``r_t = -kl_coef * kl_t`` on every completion token, plus the sequence score on its last token.

    The mask must be right-padded (ones then zeros). shape: scores (B,), kl (B, T), mask (B, T) -> (B, T).
    """
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # (B,) index of the last real token
    return rewards.scatter_add(1, last.unsqueeze(1), scores.to(kl.dtype).unsqueeze(1))


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, Eq. 16).

    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``; the value after the last
    token is 0 and padding contributes nothing. Returns ``(advantages, returns = advantages + values)``, zero on
    padding. shape: rewards, values, mask (B, T) right-padded -> (B, T), (B, T).
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    next_advantage = torch.zeros_like(values[:, 0])
    reversed_advantages = []
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        reversed_advantages.append(next_advantage)
    advantages = torch.stack(reversed_advantages[::-1], dim=1) * mask
    return advantages, (advantages + values) * mask


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024, Sec. 4.1.2): ``(r_i - mean_g) / (std_g + eps)`` over the
    ``group_size`` completions of the same prompt (consecutive rows); ``scale_by_std=False`` keeps ``r_i - mean_g``
    (Dr. GRPO, Liu et al. 2025). std is the unbiased sample std. shape: rewards (B,), B = prompts x group_size -> (B,).
    """
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, Eq. 5; Kool et al. 2019): each completion's baseline is the mean reward of the
    other ``group_size - 1`` completions of its prompt: ``A_i = r_i - (sum_g - r_i) / (k - 1)``.
    shape: rewards (B,), consecutive groups -> (B,).
    """
    if group_size < 2:
        raise ValueError("the leave-one-out baseline needs group_size >= 2")
    grouped = rewards.view(-1, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, level: str = "token") -> torch.Tensor:
    """Reduce a per-token loss to a scalar. "token": the mean over every completion token of the batch (DAPO, Yu et
    al. 2025: long completions weigh more); "sequence": the mean over sequences of each one's token mean (GRPO,
    Shao et al. 2024, Eq. 3). shape: per_token, mask (B, T) -> ().
    """
    if level == "token":
        return masked_mean(per_token, mask)
    if level == "sequence":
        return masked_mean(per_token, mask, dim=1).mean()
    raise ValueError(f"unknown loss aggregation {level!r}; valid: token, sequence")


def clipped_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    aggregation: str = "token",
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7), per token:
    ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))`` with ``ratio = exp(logps - old_logps)``.

    ``is_weights`` (optional, (B, T)) multiply each token's loss: the truncated importance weights that correct for
    a sampler (vLLM) whose log-probs differ from the trainer's. Stats: ``policy/approx_kl`` = mean of
    ``(log ratio)^2 / 2`` (Huang et al. 2024), ``policy/clipfrac``, ``policy/ratio``.
    shape: logps, old_logps, mask (B, T); advantages (B, T) or (B, 1) -> loss ().
    """
    mask = mask.to(logps.dtype)
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights
    loss = aggregate_loss(per_token, mask, aggregation)
    stats = {
        "policy/approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, mask),
        "policy/clipfrac": masked_mean((clipped > unclipped).to(mask.dtype).detach(), mask),
        "policy/ratio": masked_mean(ratio.detach(), mask),
    }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    aggregation: str = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss (Huang et al. 2024, detail 9; OpenAI baselines): the new value may move at most
    ``clip_range`` from the rollout's value, ``0.5 * max((V - R)^2, (V_clipped - R)^2)``.
    Stats: ``val/clipfrac``, ``val/vpred``, ``val/error``. shape: values, old_values, returns, mask (B, T) -> ().
    """
    mask = mask.to(values.dtype)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * aggregate_loss(torch.maximum(unclipped_loss, clipped_loss), mask, aggregation)
    stats = {
        "val/clipfrac": masked_mean((clipped_loss > unclipped_loss).to(mask.dtype).detach(), mask),
        "val/vpred": masked_mean(values.detach(), mask),
        "val/error": masked_mean(unclipped_loss.detach(), mask),
    }
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position: ``logsumexp(z) - sum softmax(z) * z``.
    shape: logits (B, T, V) -> (B, T)."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def adaptive_kl_coef(kl_coef: float, current_kl: float, target: float, horizon: int, n_steps: int) -> float:
    """The adaptive KL controller of Ziegler et al. 2019 (Sec. 2.2): ``e = clip(KL / target - 1, -0.2, 0.2)``,
    ``kl_coef *= 1 + e * n_steps / horizon``, where ``n_steps`` counts the samples since the last update."""
    error = min(max(current_kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


def truncated_is_weights(trainer_logps: torch.Tensor, sampler_logps: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """Truncated importance-sampling weights ``min(exp(trainer - sampler), cap)`` per token, correcting the
    policy gradient when the sampler (e.g. vLLM) and the trainer compute slightly different probabilities for the
    same policy (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training").
    shape: (B, T) -> (B, T), detached."""
    return torch.exp(trainer_logps.detach() - sampler_logps.detach()).clamp(max=cap)
