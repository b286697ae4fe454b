"""A reward model's figures on preference pairs: accuracy, mean margin, calibration (ECE), accuracy by length and by
subset. The reward trainer evaluates its held-out rows with them; ``tether eval reward`` (tether.lifecycle.
evaluate_reward) loads a saved model first."""

from __future__ import annotations

from typing import Any

import numpy as np

from tether.errors import TetherError
from tether.models.tokens import encode_many

LENGTH_BUCKETS = (128, 256, 512, 1024)  # upper edges in tokens of prompt+chosen (untruncated); the last is open


def expected_calibration_error(probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the preference probabilities p = sigmoid(r_chosen - r_rejected) (Guo et al. 2017, Eq. 3).

    Each pair predicts the side it favours with confidence max(p, 1 - p) in [0.5, 1]; it is correct when p > 0.5
    (the labelled chosen side). Confidences fall in ``n_bins`` equal bins over [0.5, 1]; ECE is the
    count-weighted mean of |accuracy - mean confidence| over the bins. shape: probs (N,) -> float.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.size == 0:
        return float("nan")
    confidence = np.maximum(probs, 1.0 - probs)
    correct = (probs > 0.5).astype(np.float64)
    bins = np.minimum(((confidence - 0.5) * 2 * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def _bucket_name(length: int) -> str:
    low = 0
    for edge in LENGTH_BUCKETS:
        if length <= edge:
            return f"{low + 1}-{edge}"
        low = edge
    return f">{LENGTH_BUCKETS[-1]}"


def evaluate_reward_model(rm: Any, rows: list[dict[str, Any]], batch_size: int = 32) -> dict[str, Any]:
    """Accuracy, mean margin, ECE, and accuracy by length bucket and by subset of a ``RewardModel`` on
    preference rows. Ties are counted (``n_ties``) but left out of every other figure.

    ``mean_margin`` is in normalized reward units (std 1 over the normalization reference); ``ece`` uses the raw
    rewards, whose difference is the Bradley-Terry logit the model was trained on.
    """
    pairs = [r for r in rows if not r.get("tie")]
    if not pairs:
        raise TetherError("no preference pairs to evaluate (empty data, or ties only)", fix="give rows with prompt, chosen, rejected")
    weights = rm.aspect_vector()  # (A,): a rating model's aspects by their weights and signs, never an equal average
    prompts = [r["prompt"] for r in pairs]
    chosen_raw = rm.raw_scores(prompts, [r["chosen"] for r in pairs], batch_size)  # (N, K, A)
    rejected_raw = rm.raw_scores(prompts, [r["rejected"] for r in pairs], batch_size)
    raw_diff = ((chosen_raw - rejected_raw) @ weights).mean(axis=1)  # (N,) ensemble mean of the BT logit
    normalized_diff = (((chosen_raw - rejected_raw) / rm.std) @ weights).mean(axis=1)
    correct = raw_diff > 0
    probs = 1.0 / (1.0 + np.exp(-raw_diff))
    lengths = [len(s) for s in encode_many(rm.tokenizer, prompts, [r["chosen"] for r in pairs], 10**9)]

    def accuracy_by(keys: list[str]) -> dict[str, dict[str, float]]:
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        return {k: {"accuracy": float(correct[idx].mean()), "n": len(idx)} for k, idx in sorted(groups.items())}

    report: dict[str, Any] = {
        "n": len(pairs),
        "n_ties": len(rows) - len(pairs),
        "accuracy": float(correct.mean()),
        "mean_margin": float(normalized_diff.mean()),
        "mean_margin_raw": float(raw_diff.mean()),
        "ece": expected_calibration_error(probs),
        "by_length": accuracy_by([_bucket_name(n) for n in lengths]),
    }
    if any("subset" in r for r in pairs):
        report["by_subset"] = accuracy_by([str(r.get("subset", "(none)")) for r in pairs])
    return report
