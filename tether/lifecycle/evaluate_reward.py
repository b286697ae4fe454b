"""Evaluating a saved reward model (``tether eval reward``): load it and compute its figures on preference rows
(tether.models.reward_eval). Policies (win-rate, KL, length, red-team) are tether.lifecycle.evaluate_policy's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.models.reward_eval import evaluate_reward_model
from tether.models.reward_model import RewardModel


def evaluate_reward(model_dir: str | Path, rows: list[dict[str, Any]], batch_size: int = 32, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load the reward model in ``model_dir`` (``DIR:ASPECT=W,...`` for a rating model, see tether.models.reward_model) and
    evaluate it on preference ``rows`` (see ``evaluate_reward_model``): ``{"n", "n_ties", "accuracy",
    "mean_margin", "ece", "by_length", "by_subset"?}``."""
    return evaluate_reward_model(RewardModel.load(model_dir, say=say), rows, batch_size)
