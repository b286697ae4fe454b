"""Agreement per question: judgments as ``Answer`` records (one per question per unit), Krippendorff's alpha
with the metric that fits, raw pairwise agreement and overlap."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether.errors import TetherError

METRICS = ("nominal", "ordinal", "interval")


# ---------------------------------------------------------------------------------------------------------------
# Answers: what QC reads from judgments
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One annotator's answer to one question about one unit.

    A unit is what the answer is about: the item (``"17"``) or one completion of it (``"17/2"``, for rankings).
    ``value`` is a label ("a", "b", "tie", True/False) or a number. ``first_shown_won`` is set for non-tie pairwise
    choices whose shown order is known; ``gold`` holds the gold item's answer to the same question, if any.
    """

    unit: str
    item_id: int
    annotator: str
    question: str
    value: Any
    first_shown_won: bool | None = None
    time_spent_ms: int | None = None
    gold: Any = None


def default_metric(question: str) -> str:
    """The Krippendorff metric that fits a question: nominal for choices, ordinal for strengths, ranks, ratings."""
    if question in ("choice", "thumbs", "comparison"):
        return "nominal"
    if question in ("preference", "rank") or question.startswith("rating:"):
        return "ordinal"
    return "nominal"


def _questions_of(kind: str, value: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{question: {unit_suffix: value}}`` stated by one judgment value (item positions)."""
    out: dict[str, dict[str, Any]] = {}
    if kind == "pairwise" and value.get("choice") in ("a", "b", "tie"):
        out["choice"] = {"": value["choice"]}
        strength = value.get("strength")
        if strength is not None:
            # Signed strength: +3 "a much better" ... 0 tie ... -3 "b much better" (ordinal).
            out["preference"] = {"": 0 if value["choice"] == "tie" else (strength if value["choice"] == "a" else -strength)}
    elif kind == "ranking" and "ranking" in value:
        out["rank"] = {f"/{pos}": rank for rank, pos in enumerate(value["ranking"])}
    elif kind == "ranking" and "comparisons" in value:
        # Some pairs of a k-wise item: one nominal answer per pair (unit "item/lo/hi").
        out["comparison"] = {}
        for comp in value["comparisons"]:
            lo, hi = sorted((comp["a"], comp["b"]))
            winner = {"a": comp["a"], "b": comp["b"]}.get(comp["choice"])
            out["comparison"][f"/{lo}/{hi}"] = "tie" if winner is None else ("first" if winner == lo else "second")
    elif kind == "rating":
        for aspect, score in (value.get("ratings") or {}).items():
            out[f"rating:{aspect}"] = {"": score}
    elif kind == "thumbs" and isinstance(value.get("label"), bool):
        out["thumbs"] = {"": value["label"]}
    return out


def answers_from_judgment(
    *,
    item_id: int,
    annotator: str,
    kind: str,
    value: dict[str, Any],
    shown_order: Sequence[int] | None = None,
    time_spent_ms: int | None = None,
    gold_value: dict[str, Any] | None = None,
) -> list[Answer]:
    """The QC answers of one judgment (value in item positions, see tether.feedback.judgments)."""
    gold = _questions_of(kind, gold_value) if gold_value else {}
    first_won = None
    if kind == "pairwise" and shown_order and value.get("choice") in ("a", "b"):
        winner = 0 if value["choice"] == "a" else 1
        first_won = winner == shown_order[0]
    answers = []
    for question, by_unit in _questions_of(kind, value).items():
        for suffix, answer in by_unit.items():
            answers.append(
                Answer(
                    unit=f"{item_id}{suffix}",
                    item_id=item_id,
                    annotator=annotator,
                    question=question,
                    value=answer,
                    first_shown_won=first_won if question == "choice" else None,
                    time_spent_ms=time_spent_ms,
                    gold=gold.get(question, {}).get(suffix),
                )
            )
    return answers


# ---------------------------------------------------------------------------------------------------------------
# Agreement per question
# ---------------------------------------------------------------------------------------------------------------


def reliability_matrix(answers: Iterable[Answer], question: str, metric: str) -> tuple[np.ndarray, list[str], list[str], list[Any]]:
    """The annotators x units matrix Krippendorff's alpha reads (NaN where an annotator gave no answer).

    Returns ``(matrix, annotators, units, codebook)``. Nominal labels are coded 0..K-1 in ``codebook`` order;
    ordinal and interval values are used as numbers. When an annotator answered a unit twice, the last counts.
    """
    rows = [a for a in answers if a.question == question]
    annotators = sorted({a.annotator for a in rows})
    units = sorted({a.unit for a in rows}, key=unit_sort_key)
    codebook: list[Any] = []
    if metric == "nominal":
        codebook = sorted({a.value for a in rows}, key=str)
    elif any(isinstance(a.value, (str, bool)) for a in rows):
        raise TetherError(f"question {question!r} has labels, not numbers: it cannot be {metric}", fix="leave it nominal")
    code = {v: i for i, v in enumerate(codebook)}
    a_index = {name: i for i, name in enumerate(annotators)}
    u_index = {u: i for i, u in enumerate(units)}
    matrix = np.full((len(annotators), len(units)), np.nan)
    for a in rows:
        matrix[a_index[a.annotator], u_index[a.unit]] = code[a.value] if metric == "nominal" else float(a.value)
    return matrix, annotators, units, codebook


def unit_sort_key(unit: str) -> tuple[int, ...]:
    return tuple(int(p) for p in unit.split("/"))


def krippendorff_alpha(matrix: np.ndarray, metric: str) -> float | None:
    """Krippendorff's alpha of an annotators x units matrix (NaN = missing); None when it is undefined."""
    import krippendorff

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    pairable = (np.sum(~np.isnan(matrix), axis=0) >= 2).sum() if matrix.size else 0
    if pairable == 0 or len(np.unique(matrix[~np.isnan(matrix)])) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=metric))


def pairwise_agreement(matrix: np.ndarray) -> float | None:
    """Raw agreement: for each unit with m >= 2 answers, the share of its m(m-1) ordered annotator pairs that
    gave the same answer; the mean over those units (each unit weighs the same). None without such units."""
    shares = []
    for column in matrix.T:
        values = column[~np.isnan(column)]
        m = len(values)
        if m < 2:
            continue
        counts = np.unique(values, return_counts=True)[1]
        shares.append(float((counts * (counts - 1)).sum() / (m * (m - 1))))
    return float(np.mean(shares)) if shares else None


def question_agreement(answers: Sequence[Answer], metrics: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Per question: metric, alpha, raw pairwise agreement, units, units with overlap (>= 2 answers), answers."""
    metrics = metrics or {}
    out = []
    for question in sorted({a.question for a in answers}):
        metric = metrics.get(question, default_metric(question))
        matrix, annotators, units, _ = reliability_matrix(answers, question, metric)
        per_unit = np.sum(~np.isnan(matrix), axis=0)
        out.append(
            {
                "question": question,
                "metric": metric,
                "alpha": krippendorff_alpha(matrix, metric),
                "pairwise_agreement": pairwise_agreement(matrix),
                "n_units": len(units),
                "n_units_overlap": int((per_unit >= 2).sum()),
                "n_answers": int(per_unit.sum()),
                "n_annotators": len(annotators),
            }
        )
    return out
