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
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Offline preference optimization: DPO, IPO, cDPO, KTO
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Online RL: PPO, GAE, GRPO / RLOO advantages, KL estimators
# ---------------------------------------------------------------------------------------------------------------
