"""A reward model's figures on preference pairs: accuracy with a bootstrap interval, mean margin, calibration (ECE),
length diagnostics (accuracy when the chosen answer is longer or shorter, by length ratio, the reward's correlation
with length), accuracy by length and by subset. The reward trainer evaluates its held-out rows with them; ``tether eval reward`` (tether.lifecycle.
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


def bootstrap_interval(values: np.ndarray, *, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (Efron & Tibshirani 1993, Ch. 13): ``resamples``
    resamples of the N values with replacement, seeded; the (1 - level) / 2 and (1 + level) / 2 quantiles of their
    means. shape: values (N,) -> (low, high); NaN for no values. (evaluate_policy's win-rate interval is this one.)"""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def spread_calibration(correct: np.ndarray, spread: np.ndarray) -> dict[str, Any]:
    """Whether an ensemble's spread says where it is wrong, on held-out pairs: accuracy in the lowest, middle and
    highest third of the pairs by spread (the members' standard deviation of the normalized reward difference), and
    the AUROC of the spread as a predictor of an error (Mann-Whitney: the chance that a wrongly ordered pair has a
    larger spread than a rightly ordered one, ties counted half; 0.5 when the spread says nothing, None when every pair
    is right or every pair wrong). shapes: correct (N,) of 0/1, spread (N,)."""
    correct, spread = np.asarray(correct, dtype=np.float64), np.asarray(spread, dtype=np.float64)
    order = np.argsort(spread, kind="stable")
    thirds = {name: order[part] for name, part in zip(("low", "mid", "high"), np.array_split(np.arange(len(order)), 3))}
    wrong, right = spread[correct == 0], spread[correct == 1]
    auroc = None
    if len(wrong) and len(right):
        greater = (wrong[:, None] > right[None, :]).sum() + 0.5 * (wrong[:, None] == right[None, :]).sum()
        auroc = float(greater / (len(wrong) * len(right)))
    return {
        "mean_spread": float(spread.mean()),
        "by_spread": {name: {"accuracy": float(correct[idx].mean()), "n": len(idx), "mean_spread": float(spread[idx].mean())} for name, idx in thirds.items() if len(idx)},
        "error_auroc": auroc,
    }


LENGTH_RATIO_BINS = (0.5, 0.8, 1.25, 2.0)  # edges of len(chosen) / len(rejected), in characters


def completion_chars(completion: Any) -> int:
    """A completion's length in characters (a message list: its contents), the same whatever the tokenizer, so that
    reward models and DPO policies with other vocabularies are compared on one scale."""
    if isinstance(completion, list):
        return sum(len(str(m.get("content", ""))) if isinstance(m, dict) else len(str(m)) for m in completion)
    return len(str(completion))


def _ratio_bin(ratio: float) -> str:
    low = 0.0
    for edge in LENGTH_RATIO_BINS:
        if ratio < edge:
            return f"{low:g}-{edge:g}"
        low = edge
    return f">={LENGTH_RATIO_BINS[-1]:g}"


def length_diagnostics(correct: np.ndarray, chosen_rewards: np.ndarray, rejected_rewards: np.ndarray, chosen_len: np.ndarray, rejected_len: np.ndarray) -> dict[str, Any]:
    """What a length bias looks like: accuracy when the chosen answer is the longer one, the shorter one, or as long;
    accuracy by the length ratio chosen / rejected (bins ``LENGTH_RATIO_BINS``); Pearson's correlation of the reward
    with the length over all 2N completions. shape: all (N,); lengths in characters."""

    def cell(mask: np.ndarray) -> dict[str, Any]:
        return {"accuracy": float(correct[mask].mean()) if mask.any() else None, "n": int(mask.sum())}

    ratios = chosen_len / np.maximum(rejected_len, 1)
    bins: dict[str, list[int]] = {}
    for i, ratio in enumerate(ratios):
        bins.setdefault(_ratio_bin(float(ratio)), []).append(i)
    order = [_ratio_bin(e - 1e-9) for e in LENGTH_RATIO_BINS] + [_ratio_bin(np.inf)]
    rewards, lengths = np.concatenate([chosen_rewards, rejected_rewards]), np.concatenate([chosen_len, rejected_len]).astype(np.float64)
    varies = rewards.std() > 0 and lengths.std() > 0
    return {
        "chosen_longer": cell(chosen_len > rejected_len),
        "chosen_shorter": cell(chosen_len < rejected_len),
        "same_length": cell(chosen_len == rejected_len),
        "share_chosen_longer": float((chosen_len > rejected_len).mean()),
        "by_length_ratio": {name: {"accuracy": float(correct[bins[name]].mean()), "n": len(bins[name])} for name in order if name in bins},
        "reward_length_correlation": float(np.corrcoef(rewards, lengths)[0, 1]) if varies else None,
    }


def score_pairs(rm: Any, rows: list[dict[str, Any]], batch_size: int = 32) -> dict[str, Any]:
    """Score the non-tie pairs of ``rows`` once: the arrays ``pair_report`` turns into figures. ``rm`` is a
    ``RewardModel`` or anything with its ``raw_scores``, ``aspect_vector``, ``std`` and ``tokenizer``."""
    pairs = [r for r in rows if not r.get("tie")]
    if not pairs:
        raise TetherError("no preference pairs to evaluate (empty data, or ties only)", fix="give rows with prompt, chosen, rejected")
    weights = rm.aspect_vector()  # (A,): a rating model's aspects by their weights and signs, never an equal average
    prompts = [r["prompt"] for r in pairs]
    chosen_raw = rm.raw_scores(prompts, [r["chosen"] for r in pairs], batch_size)  # (N, K, A)
    rejected_raw = rm.raw_scores(prompts, [r["rejected"] for r in pairs], batch_size)
    member_diff = ((chosen_raw - rejected_raw) / rm.std) @ weights  # (N, K) each member's normalized difference
    return {
        "member_diff": member_diff,
        "n_ties": len(rows) - len(pairs),
        "raw_diff": ((chosen_raw - rejected_raw) @ weights).mean(axis=1),  # (N,) ensemble mean of the BT logit
        "normalized_diff": member_diff.mean(axis=1),
        "chosen_reward": ((chosen_raw / rm.std) @ weights).mean(axis=1),  # (N,) normalized up to the shift
        "rejected_reward": ((rejected_raw / rm.std) @ weights).mean(axis=1),
        "tokens": np.array([len(s) for s in encode_many(rm.tokenizer, prompts, [r["chosen"] for r in pairs], 10**9)]),
        "chosen_len": np.array([completion_chars(r["chosen"]) for r in pairs]),
        "rejected_len": np.array([completion_chars(r["rejected"]) for r in pairs]),
        "subset": [str(r["subset"]) if "subset" in r else None for r in pairs],
    }


def concat_scores(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several sections' ``score_pairs`` as one."""
    joined: dict[str, Any] = {"n_ties": sum(p["n_ties"] for p in parts), "subset": [s for p in parts for s in p["subset"]]}
    for key in ("member_diff", "raw_diff", "normalized_diff", "chosen_reward", "rejected_reward", "tokens", "chosen_len", "rejected_len"):
        joined[key] = np.concatenate([p[key] for p in parts])
    return joined


def pair_report(scored: dict[str, Any], *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy with its bootstrap interval, mean margin, ECE, length diagnostics, accuracy by length bucket and
    by subset, and for an ensemble the calibration of its spread (``spread_calibration``), from ``score_pairs``'s
    arrays."""
    raw_diff = scored["raw_diff"]
    correct = (raw_diff > 0).astype(np.float64)
    probs = 1.0 / (1.0 + np.exp(-raw_diff))

    def accuracy_by(keys: list[str]) -> dict[str, dict[str, float]]:
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        return {k: {"accuracy": float(correct[idx].mean()), "n": len(idx)} for k, idx in sorted(groups.items())}

    low, high = bootstrap_interval(correct, resamples=resamples, seed=seed)
    report: dict[str, Any] = {
        "n": len(correct),
        "n_ties": scored["n_ties"],
        "accuracy": float(correct.mean()),
        "accuracy_low": low,
        "accuracy_high": high,
        "mean_margin": float(scored["normalized_diff"].mean()),
        "mean_margin_raw": float(raw_diff.mean()),
        "ece": expected_calibration_error(probs),
        "length": length_diagnostics(correct, scored["chosen_reward"], scored["rejected_reward"], scored["chosen_len"], scored["rejected_len"]),
        "by_length": accuracy_by([_bucket_name(n) for n in scored["tokens"]]),
    }
    if scored["member_diff"].shape[1] > 1:  # an ensemble: does its spread find its errors?
        report["spread"] = spread_calibration(correct, scored["member_diff"].std(axis=1))
    if any(s is not None for s in scored["subset"]):
        report["by_subset"] = accuracy_by([s if s is not None else "(none)" for s in scored["subset"]])
    return report


def evaluate_reward_model(rm: Any, rows: list[dict[str, Any]], batch_size: int = 32, *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy (with a seeded bootstrap interval, ``accuracy_low`` / ``accuracy_high``), mean margin, ECE, length
    diagnostics, and accuracy by length bucket and by subset of a ``RewardModel`` on preference rows. Ties are
    counted (``n_ties``) but left out of every other figure.

    ``mean_margin`` is in normalized reward units (std 1 over the normalization reference); ``ece`` uses the raw
    rewards, whose difference is the Bradley-Terry logit the model was trained on.
    """
    return pair_report(score_pairs(rm, rows, batch_size), resamples=resamples, seed=seed)
