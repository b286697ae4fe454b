"""Per-annotator figures: Dawid-Skene reliability, MACE competence, leave-one-out agreement, gold accuracy,
position bias, speed, and the flags with their reasons."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether.feedback.dawid_skene import dawid_skene
from tether.qc.agreement import Answer, unit_sort_key

# ---------------------------------------------------------------------------------------------------------------
# Dawid-Skene and MACE (EM over annotators' answers)
# ---------------------------------------------------------------------------------------------------------------


def mace(
    unit_idx: np.ndarray,
    annotator_idx: np.ndarray,
    labels: np.ndarray,
    n_units: int,
    n_annotators: int,
    n_classes: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """MACE (Hovy et al. 2013), EM without the variational priors: an annotator answers the true class with
    probability ``competence`` and otherwise "spams" a label drawn from its own distribution ``spam`` (K,).

    P(label = l | true = k) = competence * [l == k] + (1 - competence) * spam[l].
    Returns ``(posteriors (n_units, K), competence (n_annotators,))``.
    """
    unit_idx, annotator_idx, labels = (np.asarray(x, dtype=np.int64) for x in (unit_idx, annotator_idx, labels))
    competence = np.full(n_annotators, 0.8)
    spam = np.full((n_annotators, n_classes), 1.0 / n_classes)
    post = np.full((n_units, n_classes), 1.0 / n_classes)
    for _ in range(max_iter):
        # E-step over the true class, given each answer's likelihood under the current parameters.
        like = (1 - competence[annotator_idx, None]) * spam[annotator_idx]  # (n_answers, K): spam part, label l
        lik_k = np.repeat(like[np.arange(len(labels)), labels][:, None], n_classes, axis=1)
        lik_k[np.arange(len(labels)), labels] += competence[annotator_idx]
        log_post = np.zeros((n_units, n_classes))
        np.add.at(log_post, unit_idx, np.log(lik_k))
        log_post -= log_post.max(1, keepdims=True)
        new_post = np.exp(log_post)
        new_post /= new_post.sum(1, keepdims=True)
        # The chance an answer was "knowing" rather than spam: only when it equals the true class.
        p_true = new_post[unit_idx, labels]
        knowing = p_true * competence[annotator_idx] / (competence[annotator_idx] + (1 - competence[annotator_idx]) * spam[annotator_idx, labels])
        # M-step.
        know_sum = np.bincount(annotator_idx, weights=knowing, minlength=n_annotators)
        total = np.bincount(annotator_idx, minlength=n_annotators)
        competence = (know_sum + smoothing) / (total + 2 * smoothing)
        spam_counts = np.full((n_annotators, n_classes), smoothing)
        np.add.at(spam_counts, (annotator_idx, labels), 1 - knowing)
        spam = spam_counts / spam_counts.sum(1, keepdims=True)
        change = float(np.abs(new_post - post).max())
        post = new_post
        if change < tol:
            break
    return post, competence


# ---------------------------------------------------------------------------------------------------------------
# Per-annotator figures and flags
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class QCConfig:
    """Thresholds of the annotator flags. An annotator needs ``min_answers`` answers before any flag."""

    min_answers: int = 10  # fewer answers: figures shown, never flagged
    min_reliability: float = 0.6  # Dawid-Skene expected accuracy below this: flagged "unreliable"
    min_gold_accuracy: float = 0.7  # gold accuracy significantly below this (one-sided binomial test) ...
    gold_pvalue: float = 0.05  # ... at this level, with at least min_gold gold answers: flagged "gold"
    min_gold: int = 5
    position_pvalue: float = 0.01  # binomial test of first-shown wins against 0.5 ...
    position_effect: float = 0.15  # ... and a win rate at least this far from 0.5: flagged "position bias"
    min_position_answers: int = 20
    fast_ratio: float = 0.35  # median time below this fraction of the other annotators' median: flagged "too fast"
    fast_judgment_ratio: float = 0.25  # a judgment faster than this fraction of the overall median counts as fast
    mace: bool = False  # also estimate MACE competence (slower; off by default)


def primary_question(questions: Iterable[str]) -> str | None:
    """The question per-annotator figures use: the choice, else the ranking, thumbs, then the first rating."""
    questions = sorted(set(questions))
    for name in ("choice", "rank", "comparison", "thumbs"):
        if name in questions:
            return name
    ratings = [q for q in questions if q.startswith("rating:")]
    return ratings[0] if ratings else (questions[0] if questions else None)


def _mode(values: Sequence[Any]) -> Any:
    """The unique most common value, or None when the top is shared."""
    top = Counter(values).most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    return top[0][0]


def leave_one_out_agreement(answers: Sequence[Answer]) -> dict[str, tuple[int, int]]:
    """Per annotator ``(agreed, compared)``: units where its answer equals the others' unique majority answer.
    Units with no other answer, or where the others tie, are not compared."""
    by_unit: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        by_unit[a.unit].append(a)
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rows in by_unit.values():
        for a in rows:
            consensus = _mode([b.value for b in rows if b.annotator != a.annotator])
            if consensus is None:
                continue
            out[a.annotator][1] += 1
            out[a.annotator][0] += int(a.value == consensus)
    return {name: (v[0], v[1]) for name, v in out.items()}


def annotator_figures(answers: Sequence[Answer], config: QCConfig | None = None) -> list[dict[str, Any]]:
    """Per-annotator figures and flags, from the answers to one question (the primary one)."""
    from scipy.stats import binomtest

    config = config or QCConfig()
    annotators = sorted({a.annotator for a in answers})
    units = sorted({a.unit for a in answers}, key=unit_sort_key)
    if not annotators:
        return []
    codebook = sorted({a.value for a in answers}, key=str)
    code = {v: i for i, v in enumerate(codebook)}
    a_index = {n: i for i, n in enumerate(annotators)}
    u_index = {u: i for i, u in enumerate(units)}
    unit_idx = np.array([u_index[a.unit] for a in answers])
    ann_idx = np.array([a_index[a.annotator] for a in answers])
    labels = np.array([code[a.value] for a in answers])
    ds = dawid_skene(unit_idx, ann_idx, labels, len(units), len(annotators), max(len(codebook), 2))
    competence = None
    if config.mace:
        competence = mace(unit_idx, ann_idx, labels, len(units), len(annotators), max(len(codebook), 2))[1]
    loo = leave_one_out_agreement(answers)

    # Time per judgment (one per annotator and item, whatever the number of units of the item).
    times: dict[str, dict[int, int]] = defaultdict(dict)
    for a in answers:
        if a.time_spent_ms is not None:
            times[a.annotator][a.item_id] = a.time_spent_ms
    all_times = [t for per in times.values() for t in per.values()]
    overall_median = float(np.median(all_times)) if all_times else None
    medians = {name: float(np.median(list(per.values()))) for name, per in times.items() if per}

    by_annotator: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        by_annotator[a.annotator].append(a)
    rows = []
    for name in annotators:
        mine = by_annotator[name]
        row: dict[str, Any] = {"annotator": name, "n_answers": len(mine), "n_items": len({a.item_id for a in mine})}
        agreed, compared = loo.get(name, (0, 0))
        row["loo_agreement"] = agreed / compared if compared else None
        row["n_loo"] = compared
        gold = [a for a in mine if a.gold is not None]
        row["gold_accuracy"] = sum(a.value == a.gold for a in gold) / len(gold) if gold else None
        row["n_gold"] = len(gold)
        hits = sum(a.value == a.gold for a in gold)
        row["gold_pvalue"] = float(binomtest(hits, len(gold), config.min_gold_accuracy, alternative="less").pvalue) if gold else None
        row["reliability"] = float(ds.reliability[a_index[name]])
        row["mace_competence"] = None if competence is None else float(competence[a_index[name]])
        shown = [a.first_shown_won for a in mine if a.first_shown_won is not None]
        row["n_position"] = len(shown)
        row["first_shown_win_rate"] = sum(shown) / len(shown) if shown else None
        row["position_pvalue"] = float(binomtest(sum(shown), len(shown), 0.5).pvalue) if shown else None
        row["median_time_ms"] = medians.get(name)
        others = [m for other, m in medians.items() if other != name]
        row["speed_ratio"] = medians[name] / float(np.median(others)) if name in medians and others else None
        mine_t = list(times.get(name, {}).values())
        row["fast_share"] = (
            sum(t < config.fast_judgment_ratio * overall_median for t in mine_t) / len(mine_t) if mine_t and overall_median else None
        )
        row["flags"] = _flags(row, config)
        rows.append(row)
    return rows


def _flags(row: dict[str, Any], config: QCConfig) -> list[dict[str, str]]:
    """Why an annotator looks unreliable; empty when nothing is wrong (or too few answers to say)."""
    flags = []
    if row["n_answers"] < config.min_answers:
        return flags
    if row["reliability"] is not None and row["reliability"] < config.min_reliability:
        flags.append({"flag": "unreliable", "reason": f"Dawid-Skene reliability {row['reliability']:.2f} < {config.min_reliability}"})
    if row["gold_pvalue"] is not None and row["n_gold"] >= config.min_gold and row["gold_pvalue"] < config.gold_pvalue:
        flags.append(
            {"flag": "gold", "reason": f"gold accuracy {row['gold_accuracy']:.2f} on {row['n_gold']} gold items, below {config.min_gold_accuracy} (binomial p={row['gold_pvalue']:.1e})"}
        )
    rate, p = row["first_shown_win_rate"], row["position_pvalue"]
    if (
        rate is not None
        and row["n_position"] >= config.min_position_answers
        and p < config.position_pvalue
        and abs(rate - 0.5) >= config.position_effect
    ):
        side = "first" if rate > 0.5 else "second"
        flags.append(
            {"flag": "position", "reason": f"picks the {side}-shown answer in {max(rate, 1 - rate):.0%} of {row['n_position']} choices (binomial p={p:.1e})"}
        )
    if row["speed_ratio"] is not None and row["speed_ratio"] < config.fast_ratio:
        flags.append({"flag": "fast", "reason": f"median time {row['median_time_ms'] / 1000:.1f} s is {row['speed_ratio']:.0%} of the others' median"})
    return flags
