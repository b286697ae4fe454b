"""Annotation quality control, aggregation and active-learning selection.

Three parts, each pure functions over plain records and numpy arrays (the store is read in ``load_*`` only):

- **Agreement and annotators.** Judgments become ``Answer`` records (one per question per unit). Per question:
  Krippendorff's alpha (the ``krippendorff`` package; nominal for choices, ordinal for strengths, rankings and
  Likert ratings, interval where the label schema says so), raw pairwise agreement and how many units had two or
  more answers. Per annotator: agreement with the leave-one-out consensus, accuracy on gold items, a reliability
  estimate from Dawid-Skene (Dawid & Skene 1979), optionally MACE competence (Hovy et al. 2013), position bias
  (how often the first-shown answer wins, binomial test), speed, and flags with the reason.
- **Aggregation into pairs.** Every judgment becomes votes on unordered position pairs of its item;
  ``dawid-skene`` and ``bradley-terry`` turn the votes into ``AggregatedPair`` rows (ties kept, rankings become
  all k(k-1)/2 pairs). ``tether.store.snapshots.aggregate_pairs`` calls them beside its own ``majority``.
- **Active learning.** ``select_candidates`` picks which candidate pairs humans judge next: predicted preference
  nearest 0.5 (uncertainty), the reward ensemble's spread (disagreement) or random, with a per-prompt cap and an
  optional embedding-distance dedupe as the diversity guard.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tether.errors import TetherError
from tether.feedback import to_pairs

AGGREGATE_METHODS = ("dawid-skene", "bradley-terry")  # "majority" lives in tether.store.snapshots
SELECT_STRATEGIES = ("uncertainty", "disagreement", "random")
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
    """The QC answers of one judgment (value in item positions, see tether.feedback)."""
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
    units = sorted({a.unit for a in rows}, key=_unit_key)
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


def _unit_key(unit: str) -> tuple[int, ...]:
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


# ---------------------------------------------------------------------------------------------------------------
# Dawid-Skene and MACE (EM over annotators' answers)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DawidSkeneResult:
    """Posteriors (n_units, K), class priors (K,), confusion matrices (n_annotators, K, K): row = true class."""

    posteriors: np.ndarray
    priors: np.ndarray
    confusion: np.ndarray
    iterations: int

    @property
    def reliability(self) -> np.ndarray:
        """Each annotator's expected accuracy, sum_k prior_k * confusion[w, k, k]; shape (n_annotators,)."""
        return np.einsum("k,wkk->w", self.priors, self.confusion)


def dawid_skene(
    unit_idx: np.ndarray,
    annotator_idx: np.ndarray,
    labels: np.ndarray,
    n_units: int,
    n_annotators: int,
    n_classes: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.01,
) -> DawidSkeneResult:
    """Dawid & Skene (1979) EM: each annotator has a K x K confusion matrix, each unit a latent true class.

    Inputs are parallel int arrays of shape (n_answers,). Starts from the vote shares (majority vote), then
    alternates the M-step (priors and confusions from the posteriors, with ``smoothing`` pseudo-counts so a
    class an annotator never used keeps a small probability) and the E-step (posteriors from the likelihood).
    """
    unit_idx, annotator_idx, labels = (np.asarray(x, dtype=np.int64) for x in (unit_idx, annotator_idx, labels))
    # Start: vote shares per unit (units nobody answered stay uniform).
    post = np.zeros((n_units, n_classes))
    np.add.at(post, (unit_idx, labels), 1.0)
    empty = post.sum(1) == 0
    post[empty] = 1.0
    post /= post.sum(1, keepdims=True)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        # M-step: class priors and each annotator's confusion rows P(label | true class).
        priors = (post.sum(0) + smoothing) / (n_units + n_classes * smoothing)
        counts = np.full((n_annotators, n_classes, n_classes), smoothing)
        for k in range(n_classes):
            np.add.at(counts[:, k, :], (annotator_idx, labels), post[unit_idx, k])
        confusion = counts / counts.sum(2, keepdims=True)
        # E-step: log P(true = k | answers) = log prior_k + sum over the unit's answers of log confusion[w, k, label].
        log_post = np.tile(np.log(priors), (n_units, 1))
        np.add.at(log_post, unit_idx, np.log(confusion[annotator_idx, :, labels]))
        log_post -= log_post.max(1, keepdims=True)
        new_post = np.exp(log_post)
        new_post /= new_post.sum(1, keepdims=True)
        change = float(np.abs(new_post - post).max())
        post = new_post
        if change < tol:
            break
    return DawidSkeneResult(posteriors=post, priors=priors, confusion=confusion, iterations=iterations)


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
    units = sorted({a.unit for a in answers}, key=_unit_key)
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


def qc_report(answers: Sequence[Answer], *, metrics: dict[str, str] | None = None, config: QCConfig | None = None) -> dict[str, Any]:
    """The QC figures of a set of answers: agreement per question, per-annotator figures and flags."""
    config = config or QCConfig()
    primary = primary_question(a.question for a in answers)
    primary_answers = [a for a in answers if a.question == primary]
    annotators = annotator_figures(primary_answers, config)
    return {
        "n_items": len({a.item_id for a in answers}),
        "n_judgments": len({(a.item_id, a.annotator) for a in answers}),
        "n_annotators": len({a.annotator for a in answers}),
        "primary_question": primary,
        "questions": question_agreement(answers, metrics),
        "annotators": annotators,
        "flagged": [row["annotator"] for row in annotators if row["flags"]],
        "config": asdict(config),
    }


def format_report(report: dict[str, Any]) -> str:
    """A plain-text summary of ``qc_report`` for the terminal."""

    def f(x: Any, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    lines = [
        f"{report['n_items']} items, {report['n_judgments']} judgments, {report['n_annotators']} annotators",
        "",
        f"{'question':<22}{'metric':<10}{'alpha':>8}{'agree':>8}{'overlap':>9}{'units':>7}",
    ]
    for q in report["questions"]:
        lines.append(
            f"{q['question']:<22}{q['metric']:<10}{f(q['alpha']):>8}{f(q['pairwise_agreement']):>8}{q['n_units_overlap']:>9}{q['n_units']:>7}"
        )
    lines += ["", f"annotators (on '{report['primary_question']}'):"]
    with_mace = any(r.get("mace_competence") is not None for r in report["annotators"])  # `tether qc --mace`
    lines.append(f"{'annotator':<20}{'n':>6}{'reliab':>8}{'mace' if with_mace else '':>{6 if with_mace else 0}}{'loo':>7}{'gold':>7}{'first%':>8}{'p':>9}{'med s':>7}  flags")
    for r in report["annotators"]:
        med = None if r["median_time_ms"] is None else r["median_time_ms"] / 1000
        flags = "; ".join(fl["reason"] for fl in r["flags"])
        mace_cell = f"{f(r.get('mace_competence'), '.2f'):>6}" if with_mace else ""
        lines.append(
            f"{r['annotator'][:19]:<20}{r['n_answers']:>6}{f(r['reliability'], '.2f'):>8}{mace_cell}{f(r['loo_agreement'], '.2f'):>7}"
            f"{f(r['gold_accuracy'], '.2f'):>7}{f(r['first_shown_win_rate'], '.2f'):>8}{f(r['position_pvalue'], '.1e'):>9}"
            f"{f(med, '.1f'):>7}  {flags}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Aggregation into pairs
# ---------------------------------------------------------------------------------------------------------------

OUTCOMES = ("first", "second", "tie")  # the vote on an unordered pair (first < second in item positions)


@dataclass(frozen=True)
class PairVote:
    """One annotator's vote on the pair of item positions ``first < second``: "first", "second" or "tie"."""

    item_id: int
    annotator: Any
    first: int
    second: int
    outcome: str


@dataclass(frozen=True)
class AggregatedPair:
    """The aggregated preference between two positions of an item (fields in the order of
    ``tether.store.snapshots.AggregatedPair``, plus ``confidence``).

    ``agreement``: the share of the pair's votes that match the outcome (a tie outcome matches tie votes);
    ``margin``: Bradley-Terry log-strength difference (None for Dawid-Skene);
    ``confidence``: the method's own certainty (Dawid-Skene posterior, Bradley-Terry win probability).
    """

    item_id: int
    chosen: int
    rejected: int
    tie: bool
    votes: int
    agreement: float
    margin: float | None
    confidence: float


def pair_votes(judgments: Iterable[Any]) -> list[PairVote]:
    """The pair votes of judgments: objects with ``item_id``, ``annotator_id`` (or ``annotator``), ``kind`` and
    ``value`` (item positions), e.g. ``tether.store.snapshots.Vote``. A ranking gives one vote per pair."""
    votes = []
    for j in judgments:
        who = getattr(j, "annotator_id", None)
        who = getattr(j, "annotator", None) if who is None else who
        for pair in to_pairs(j.kind, j.value):
            first, second = sorted((pair.chosen, pair.rejected))
            outcome = "tie" if pair.tie else ("first" if pair.chosen == first else "second")
            votes.append(PairVote(j.item_id, who, first, second, outcome))
    return votes


def _group(votes: Iterable[PairVote]) -> dict[tuple[int, int, int], list[PairVote]]:
    groups: dict[tuple[int, int, int], list[PairVote]] = defaultdict(list)
    for v in votes:
        groups[(v.item_id, v.first, v.second)].append(v)
    return dict(sorted(groups.items()))


def _pair(key: tuple[int, int, int], outcome: str, votes: list[PairVote], confidence: float, margin: float | None = None) -> AggregatedPair:
    item_id, first, second = key
    agreement = sum(v.outcome == outcome for v in votes) / len(votes)
    chosen, rejected = (second, first) if outcome == "second" else (first, second)
    return AggregatedPair(item_id, chosen, rejected, outcome == "tie", len(votes), agreement, margin, confidence)


def _figures(qc: dict[str, Any] | None, method: str, pairs: list[AggregatedPair], **extra: Any) -> None:
    if qc is None:
        return
    qc.update({
        "aggregate/method": method,
        "aggregate/compared_pairs": len(pairs),
        "aggregate/ties": sum(p.tie for p in pairs),
        "aggregate/unanimous": sum(p.agreement == 1.0 for p in pairs),
        "aggregate/mean_agreement": round(float(np.mean([p.agreement for p in pairs])), 6) if pairs else None,
        "aggregate/mean_confidence": round(float(np.mean([p.confidence for p in pairs])), 6) if pairs else None,
        **extra,
    })


def dawid_skene_pairs(judgments: Iterable[Any], *, qc: dict[str, Any] | None = None) -> list[AggregatedPair]:
    """Dawid-Skene over every compared pair of every item (classes first better / second better / tie, one
    confusion matrix per annotator): each pair takes its posterior's most likely outcome. A pair whose votes
    split evenly still gets an outcome: the more reliable annotators decide it."""
    groups = _group(pair_votes(judgments))
    if not groups:
        _figures(qc, "dawid-skene", [])
        return []
    keys = list(groups)
    annotators = sorted({v.annotator for g in groups.values() for v in g}, key=str)
    a_index = {n: i for i, n in enumerate(annotators)}
    unit_idx, ann_idx, labels = [], [], []
    for u, key in enumerate(keys):
        for v in groups[key]:
            unit_idx.append(u)
            ann_idx.append(a_index[v.annotator])
            labels.append(OUTCOMES.index(v.outcome))
    ds = dawid_skene(np.array(unit_idx), np.array(ann_idx), np.array(labels), len(keys), len(annotators), len(OUTCOMES))
    pairs = []
    for u, key in enumerate(keys):
        best = int(np.argmax(ds.posteriors[u]))
        pairs.append(_pair(key, OUTCOMES[best], groups[key], float(ds.posteriors[u, best])))
    _figures(qc, "dawid-skene", pairs, **{"aggregate/em_iterations": ds.iterations})
    return pairs


def bradley_terry_strengths(n_positions: int, wins: np.ndarray, *, prior: float = 0.5, max_iter: int = 500, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry log-strengths of one item's completions by Hunter's (2004) MM updates.

    ``wins[i, j]``: how often i beat j (a tie counts 1/2 to each). ``prior`` adds that many virtual wins each way
    to every pair, which keeps strengths finite when one completion always wins. Returns (n_positions,) log-
    strengths with mean 0; P(i beats j) = sigmoid(s_i - s_j).
    """
    w = wins + prior * (1 - np.eye(n_positions))
    n = w + w.T
    p = np.ones(n_positions)
    for _ in range(max_iter):
        # MM update: p_i = W_i / sum_j n_ij / (p_i + p_j), then fix the scale (geometric mean 1).
        new = w.sum(1) / (n / (p[:, None] + p[None, :])).sum(1)
        new /= np.exp(np.log(new).mean())
        converged = np.abs(new - p).max() < tol
        p = new
        if converged:
            break
    log_p = np.log(p)
    return log_p - log_p.mean()


def bradley_terry_pairs(judgments: Iterable[Any], *, qc: dict[str, Any] | None = None, tie_margin: float = 1e-6) -> list[AggregatedPair]:
    """Bradley-Terry per item: strengths from all its votes (ties half a win each, 0.5 virtual wins each way),
    then every compared pair ordered by strength, ``margin`` = the log-strength difference (equal strengths, e.g.
    a 1-1 split, are a tie). A full ranking thus becomes k(k-1)/2 pairs whose margins grow with the rank gap."""
    groups = _group(pair_votes(judgments))
    by_item: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for key in groups:
        by_item[key[0]].append(key)
    pairs = []
    for keys in by_item.values():
        positions = sorted({p for _, a, b in keys for p in (a, b)})
        index = {p: i for i, p in enumerate(positions)}
        wins = np.zeros((len(positions), len(positions)))
        for key in keys:
            i, j = index[key[1]], index[key[2]]
            for v in groups[key]:
                if v.outcome == "first":
                    wins[i, j] += 1
                elif v.outcome == "second":
                    wins[j, i] += 1
                else:
                    wins[i, j] += 0.5
                    wins[j, i] += 0.5
        strength = bradley_terry_strengths(len(positions), wins)
        for key in keys:
            diff = float(strength[index[key[1]]] - strength[index[key[2]]])
            outcome = "tie" if abs(diff) < tie_margin else ("first" if diff > 0 else "second")
            margin = 0.0 if outcome == "tie" else round(abs(diff), 6)
            pairs.append(_pair(key, outcome, groups[key], 1 / (1 + math.exp(-abs(diff))), margin))
    _figures(qc, "bradley-terry", pairs)
    return pairs


# ---------------------------------------------------------------------------------------------------------------
# Active learning: which candidate pairs humans judge next
# ---------------------------------------------------------------------------------------------------------------


def preference_stats(rewards_a: np.ndarray, rewards_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted P(a preferred over b) under Bradley-Terry, from ensemble rewards of shape (M, N) (or (N,)).

    Returns ``(p_mean, p_spread)``, each (N,): the mean over the M members of sigmoid(r_a - r_b) and its
    standard deviation (0 for a single model).
    """
    ra, rb = np.atleast_2d(np.asarray(rewards_a, float)), np.atleast_2d(np.asarray(rewards_b, float))
    p = 1 / (1 + np.exp(-(ra - rb)))  # (M, N)
    return p.mean(0), p.std(0)


def select_candidates(
    strategy: str,
    n: int,
    *,
    p_mean: np.ndarray | None = None,
    p_spread: np.ndarray | None = None,
    groups: Sequence[Any] | None = None,
    max_per_group: int | None = 1,
    embeddings: np.ndarray | None = None,
    min_distance: float | None = None,
    seed: int = 0,
) -> list[int]:
    """Indices of the ``n`` candidates to send to humans, best first.

    ``uncertainty``: |p_mean - 0.5| smallest first; ``disagreement``: p_spread largest first; ``random``: a
    seeded shuffle. The diversity guard walks that order and skips a candidate when its group (its prompt)
    already has ``max_per_group`` picks, or when its embedding lies within cosine distance ``min_distance`` of
    one already picked. Ties in the score keep the candidates' order (stable sort).
    """
    if strategy == "uncertainty":
        if p_mean is None:
            raise ValueError("uncertainty selection needs p_mean")
        order = np.argsort(np.abs(np.asarray(p_mean, float) - 0.5), kind="stable")
    elif strategy == "disagreement":
        if p_spread is None:
            raise ValueError("disagreement selection needs p_spread")
        order = np.argsort(-np.asarray(p_spread, float), kind="stable")
    elif strategy == "random":
        sized = next((x for x in (p_mean, p_spread, groups) if x is not None), None)
        if sized is None:
            raise ValueError("random selection needs p_mean, p_spread or groups (for the number of candidates)")
        order = np.random.default_rng(seed).permutation(len(sized))
    else:
        raise TetherError(f"unknown selection strategy {strategy!r}", fix=f"use one of: {', '.join(SELECT_STRATEGIES)}")
    unit = None
    if embeddings is not None and min_distance is not None:
        emb = np.asarray(embeddings, float)
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    picked: list[int] = []
    per_group: Counter[Any] = Counter()
    for idx in order.tolist():
        if len(picked) >= n:
            break
        if groups is not None and max_per_group is not None and per_group[groups[idx]] >= max_per_group:
            continue
        if unit is not None and picked and float((1 - unit[picked] @ unit[idx]).min()) < min_distance:
            continue
        picked.append(idx)
        if groups is not None:
            per_group[groups[idx]] += 1
    return picked


# ---------------------------------------------------------------------------------------------------------------
# Reading the store
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LoadedJudgments:
    """A project's current judgments (superseded ones left out), as QC answers."""

    project_id: int
    project_name: str
    answers: list[Answer] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)


def load_judgments(*, session: Any, project: Any) -> LoadedJudgments:
    """Read a project's current judgments (a ``Project`` row) from the store."""
    from sqlalchemy import select

    from tether.store.tables import Item, Judgment, LabelSchema, User

    superseded = select(Judgment.supersedes_id).where(Judgment.supersedes_id.is_not(None))
    rows = session.execute(
        select(Judgment, User.name, Item.is_gold, Item.gold_value)
        .join(Item, Item.id == Judgment.item_id)
        .join(User, User.id == Judgment.user_id)
        .where(Item.project_id == project.id, Judgment.id.not_in(superseded))
        .order_by(Judgment.id)
    ).all()
    out = LoadedJudgments(project_id=project.id, project_name=project.name)
    # A label schema may state a question's metric: spec {"metrics": {"rating:helpfulness": "interval"}}.
    schema = session.scalars(
        select(LabelSchema).where(LabelSchema.project_id == project.id).order_by(LabelSchema.version.desc())
    ).first()
    if schema is not None and isinstance(schema.spec, dict):
        out.metrics = {str(k): str(v) for k, v in (schema.spec.get("metrics") or {}).items() if v in METRICS}
    for judgment, name, is_gold, gold_value in rows:
        value = judgment.value or {}
        out.answers += answers_from_judgment(
            item_id=judgment.item_id,
            annotator=name,
            kind=judgment.kind,
            value=value,
            shown_order=judgment.shown_order,
            time_spent_ms=judgment.time_spent_ms,
            gold_value=gold_value if is_gold else None,
        )
    return out


def find_project(*, session: Any, name: str) -> Any:
    """A project by name, or the project of the snapshot with that name; a clear error otherwise."""
    from sqlalchemy import select

    from tether.store.tables import Project, Snapshot

    project = session.scalars(select(Project).where(Project.name == name)).first()
    if project is None:
        snapshot = session.scalars(select(Snapshot).where(Snapshot.name == name)).first()
        if snapshot is not None and snapshot.project_id is not None:
            project = session.get(Project, snapshot.project_id)
    if project is None:
        names = session.scalars(select(Project.name).order_by(Project.name)).all()
        raise TetherError(
            f"no project or snapshot named {name!r}",
            fix=f"use one of: {', '.join(names)}" if names else "import feedback first: tether data import FILE --name NAME",
        )
    return project


def parse_metrics(values: Sequence[str]) -> dict[str, str]:
    """``["rating:helpfulness=interval", ...]`` (the ``--metric`` option) as ``{question: metric}``."""
    out = {}
    for value in values:
        question, _, metric = value.partition("=")
        if not question or metric not in METRICS:
            raise TetherError(f"--metric takes QUESTION=METRIC with METRIC one of {', '.join(METRICS)}, got {value!r}",
                              fix="for example --metric rating:helpfulness=interval")
        out[question] = metric
    return out


def project_qc(url: str, name: str, *, config: QCConfig | None = None, metrics: dict[str, str] | None = None) -> dict[str, Any]:
    """``qc_report`` of a project (or of a snapshot's project) in the store at ``url``. ``metrics`` overrides
    the Krippendorff metric of questions (``{"rating:helpfulness": "interval"}``)."""
    from tether.store.db import session_scope

    with session_scope(url) as session:
        project = find_project(session=session, name=name)
        loaded = load_judgments(session=session, project=project)
    if not loaded.answers:
        raise TetherError(f"project {loaded.project_name!r} has no judgments yet", fix="import or collect judgments first")
    report = qc_report(loaded.answers, metrics={**loaded.metrics, **(metrics or {})}, config=config)
    report["project"] = loaded.project_name
    return report


def snapshot_qc_record(report: dict[str, Any], *, method: str, excluded: Sequence[str] = (), min_agreement: float | None = None) -> dict[str, Any]:
    """The QC figures a snapshot records in ``Snapshot.qc`` (flat ``qc/...`` keys; per-question and
    per-annotator figures as small maps): alpha, raw agreement, overlap, reliability, flags and the filters."""
    return {
        "qc/method": method,
        "qc/primary_question": report["primary_question"],
        "qc/alpha": {q["question"]: q["alpha"] for q in report["questions"]},
        "qc/pairwise_agreement": {q["question"]: q["pairwise_agreement"] for q in report["questions"]},
        "qc/n_units_overlap": {q["question"]: q["n_units_overlap"] for q in report["questions"]},
        "qc/reliability": {r["annotator"]: round(r["reliability"], 6) for r in report["annotators"]},
        "qc/flagged": {r["annotator"]: [f["reason"] for f in r["flags"]] for r in report["annotators"] if r["flags"]},
        "qc/excluded_annotators": sorted(excluded),
        "qc/min_agreement": min_agreement,
    }


def snapshot_qc(url: str, set_name: str, *, method: str, exclude_flagged: bool = False,
                min_agreement: float | None = None) -> tuple[dict[str, Any], list[str]]:
    """For ``tether data snapshot``: ``(qc figures to record, annotators to leave out)``. A set without
    judgments (prompts only) records nothing; ``exclude_flagged`` leaves out the annotators QC flags."""
    try:
        report = project_qc(url, set_name)
    except TetherError:
        if exclude_flagged:
            raise
        return {}, []
    excluded = report["flagged"] if exclude_flagged else []
    return snapshot_qc_record(report, method=method, excluded=excluded, min_agreement=min_agreement), excluded


# ---------------------------------------------------------------------------------------------------------------
# The HTML report (matplotlib figures embedded as base64 PNG: one self-contained file)
# ---------------------------------------------------------------------------------------------------------------


def report_figures(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes of the plots a lead looks at: per-annotator reliability, agreement per question, position bias
    and speed (the last two only when the data has shown orders / times)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    figures: dict[str, bytes] = {}
    rows = report["annotators"]
    names = [r["annotator"] for r in rows]
    colors = ["#c0392b" if r["flags"] else "#2c7fb8" for r in rows]
    height = 1.2 + 0.32 * len(rows)

    # Per-annotator reliability (Dawid-Skene), with LOO agreement and gold accuracy as markers.
    fig, ax = plt.subplots(figsize=(7.5, height))
    y = np.arange(len(rows))
    ax.barh(y, [r["reliability"] for r in rows], color=colors, alpha=0.85)
    loo = [(i, r["loo_agreement"]) for i, r in enumerate(rows) if r["loo_agreement"] is not None]
    if loo:
        ax.plot([v for _, v in loo], [i for i, _ in loo], "k|", markersize=14, mew=2, label="agreement with the\nleave-one-out consensus")
    gold = [(i, r["gold_accuracy"]) for i, r in enumerate(rows) if r["gold_accuracy"] is not None]
    if gold:
        ax.plot([v for _, v in gold], [i for i, _ in gold], "D", color="#f39c12", label="gold accuracy")
    ax.axvline(report["config"]["min_reliability"], color="#c0392b", ls="--", lw=1, label="flag threshold")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_title(f"Per-annotator reliability on '{report['primary_question']}' (red: flagged)")
    from matplotlib.patches import Patch

    handles = [Patch(color="#2c7fb8", alpha=0.85, label="Dawid-Skene reliability"), *ax.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    figures["reliability"] = png(fig)

    # Agreement per question: Krippendorff's alpha and raw pairwise agreement.
    questions = report["questions"]
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.5 * len(questions)))
    y = np.arange(len(questions))
    alphas = [q["alpha"] if q["alpha"] is not None else 0.0 for q in questions]
    raw = [q["pairwise_agreement"] if q["pairwise_agreement"] is not None else 0.0 for q in questions]
    ax.barh(y - 0.18, alphas, height=0.36, color="#2c7fb8", label="Krippendorff's alpha")
    ax.barh(y + 0.18, raw, height=0.36, color="#a6bddb", label="raw pairwise agreement")
    for i, q in enumerate(questions):
        ax.text(max(alphas[i], 0) + 0.01, i - 0.18, "n/a" if q["alpha"] is None else f"{q['alpha']:.3f}", va="center", fontsize=8)
        ax.text(raw[i] + 0.01, i + 0.18, f"{raw[i]:.3f}", va="center", fontsize=8)
    ax.axvline(0.667, color="grey", ls=":", lw=1, label="alpha 0.667 (tentative)\nand 0.8 (reliable)")
    ax.axvline(0.8, color="grey", ls=":", lw=1)
    ax.set_yticks(y, [f"{q['question']} ({q['metric']}, {q['n_units_overlap']} units)" for q in questions])
    ax.invert_yaxis()
    ax.set_xlim(min(0.0, min(alphas) - 0.05), 1.1)
    ax.set_title("Agreement per question")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    figures["agreement"] = png(fig)

    # Position bias: first-shown win rate with a 95% interval.
    shown = [(i, r) for i, r in enumerate(rows) if r["first_shown_win_rate"] is not None]
    if shown:
        from scipy.stats import binomtest

        fig, ax = plt.subplots(figsize=(7.5, height))
        for k, (_, r) in enumerate(shown):
            wins = round(r["first_shown_win_rate"] * r["n_position"])
            ci = binomtest(wins, r["n_position"]).proportion_ci(0.95)
            color = "#c0392b" if any(f["flag"] == "position" for f in r["flags"]) else "#2c7fb8"
            ax.errorbar(r["first_shown_win_rate"], k, xerr=[[r["first_shown_win_rate"] - ci.low], [ci.high - r["first_shown_win_rate"]]],
                        fmt="o", color=color, capsize=3)
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        ax.set_yticks(range(len(shown)), [r["annotator"] for _, r in shown])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of non-tie choices won by the answer shown first (95% interval)")
        ax.set_title("Position bias")
        figures["position"] = png(fig)

    timed = [r for r in rows if r["median_time_ms"] is not None]
    if timed:
        fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(timed)))
        ax.barh(range(len(timed)), [r["median_time_ms"] / 1000 for r in timed],
                color=["#c0392b" if any(f["flag"] == "fast" for f in r["flags"]) else "#2c7fb8" for r in timed])
        ax.set_yticks(range(len(timed)), [r["annotator"] for r in timed])
        ax.invert_yaxis()
        ax.set_xlabel("median seconds per judgment")
        ax.set_title("Speed")
        figures["speed"] = png(fig)
    return figures


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page: the figures (base64 PNG), the question table and the annotator table."""
    import base64
    import html

    def f(x: Any, spec: str = ".3f") -> str:
        return "–" if x is None else format(x, spec)

    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
        for name, data in report_figures(report).items()
    )
    q_rows = "".join(
        f"<tr><td>{html.escape(q['question'])}</td><td>{q['metric']}</td><td>{f(q['alpha'])}</td><td>{f(q['pairwise_agreement'])}</td>"
        f"<td>{q['n_units_overlap']}</td><td>{q['n_units']}</td><td>{q['n_answers']}</td></tr>"
        for q in report["questions"]
    )
    a_rows = "".join(
        f"<tr class=\"{'flagged' if r['flags'] else ''}\"><td>{html.escape(r['annotator'])}</td><td>{r['n_answers']}</td>"
        f"<td>{f(r['reliability'], '.2f')}</td><td>{f(r['loo_agreement'], '.2f')}</td><td>{f(r['gold_accuracy'], '.2f')} ({r['n_gold']})</td>"
        f"<td>{f(r['first_shown_win_rate'], '.2f')}</td><td>{f(r['position_pvalue'], '.1e')}</td>"
        f"<td>{f(None if r['median_time_ms'] is None else r['median_time_ms'] / 1000, '.1f')}</td>"
        f"<td>{html.escape('; '.join(fl['reason'] for fl in r['flags']))}</td></tr>"
        for r in report["annotators"]
    )
    title = f"Annotation quality: {html.escape(str(report.get('project', '')))}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 980px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; }}
tr.flagged td {{ background: #fdecea; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>{title}</h1>
<p>{report['n_items']} items, {report['n_judgments']} judgments, {report['n_annotators']} annotators.
Per-annotator figures are on the question <b>{html.escape(str(report['primary_question']))}</b>.</p>
<h2>Agreement per question</h2>
<table><tr><th>question</th><th>metric</th><th>Krippendorff's alpha</th><th>raw agreement</th><th>units with overlap</th><th>units</th><th>answers</th></tr>{q_rows}</table>
<h2>Annotators</h2>
<table><tr><th>annotator</th><th>answers</th><th>reliability (Dawid-Skene)</th><th>LOO agreement</th><th>gold accuracy (n)</th>
<th>first-shown wins</th><th>binomial p</th><th>median s</th><th>flags</th></tr>{a_rows}</table>
{images}
</body></html>
"""


# ---------------------------------------------------------------------------------------------------------------
# Active learning against the store: score the unjudged pairs of a project, pick, queue as items
# ---------------------------------------------------------------------------------------------------------------


def candidate_pairs(*, session: Any, project: Any, extra: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The pairs humans could judge next: every pair of completions of one prompt of ``project``, plus every
    pair within the ``extra`` rows (``{"prompt", "completions": [...]}``, e.g. a policy's samples), leaving out
    the pairs that are already items (in either order) and repeats.

    Each candidate: ``{"group", "prompt", "a", "b"}``, contents as text or chat messages; ``group`` is the
    prompt's content hash (the diversity guard caps picks per group).
    """
    from itertools import combinations

    from sqlalchemy import select

    from tether.store.annotation import content_hash, item_row
    from tether.store.tables import Completion, Item, ItemCompletion, Prompt

    prompts = {
        pid: (h, messages if messages is not None else text)
        for pid, h, text, messages in session.execute(
            select(Prompt.id, Prompt.content_hash, Prompt.text, Prompt.messages).where(Prompt.project_id == project.id)
        )
    }
    pools: dict[str, tuple[Any, dict[str, Any]]] = {h: (content, {}) for h, content in prompts.values()}
    hashes: dict[int, str] = {}
    for cid, pid, h, text, messages in session.execute(
        select(Completion.id, Completion.prompt_id, Completion.content_hash, Completion.text, Completion.messages)
        .join(Prompt, Prompt.id == Completion.prompt_id)
        .where(Prompt.project_id == project.id)
        .order_by(Completion.id)
    ):
        pools[prompts[pid][0]][1].setdefault(h, messages if messages is not None else text)
        hashes[cid] = h
    for n, record in enumerate(extra, start=1):
        try:
            row = item_row(record)
        except ValueError as exc:
            raise TetherError(f"candidate {n}: {exc}", fix='each line: {"prompt": ..., "completions": [..., ...]}') from None
        pool = pools.setdefault(content_hash(row["prompt"]), (row["prompt"], {}))[1]
        for completion in row["completions"]:
            pool.setdefault(content_hash(completion["content"]), completion["content"])
    in_items: dict[int, list[int]] = defaultdict(list)
    item_prompt: dict[int, int] = {}
    for item_id, prompt_id, cid in session.execute(
        select(Item.id, Item.prompt_id, ItemCompletion.completion_id).join(ItemCompletion, ItemCompletion.item_id == Item.id)
        .where(Item.project_id == project.id)
    ):
        in_items[item_id].append(cid)
        item_prompt[item_id] = prompt_id
    taken = {
        (prompts[item_prompt[item_id]][0], frozenset((hashes[x], hashes[y])))
        for item_id, cids in in_items.items()
        for x, y in combinations(cids, 2)
    }
    out = []
    for group, (content, pool) in pools.items():
        for (ha, a), (hb, b) in combinations(pool.items(), 2):
            if (group, frozenset((ha, hb))) not in taken:
                out.append({"group": group, "prompt": content, "a": a, "b": b})
    return out


def select_for_labeling(
    url: str,
    *,
    project_name: str,
    reward_model: str | None,
    strategy: str,
    n: int,
    candidates_file: str | None = None,
    max_per_prompt: int | None = 1,
    seed: int = 0,
    batch_size: int = 32,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Score the candidate pairs of a project (see ``candidate_pairs``; ``candidates_file``: more, as JSONL
    ``{"prompt", "completions"}``) with a reward model's ensemble, choose ``n`` by ``strategy`` and queue them
    as pairwise items of the project. Returns a summary with the picks."""
    from sqlalchemy import select

    from tether.store import annotation
    from tether.store.db import session_scope
    from tether.store.tables import Project

    if strategy not in SELECT_STRATEGIES:
        raise TetherError(f"unknown selection strategy {strategy!r}", fix=f"use one of: {', '.join(SELECT_STRATEGIES)}")
    if n < 1:
        raise TetherError(f"--n must be at least 1, got {n}", fix="how many pairs to queue, e.g. --n 100")
    if strategy != "random" and not reward_model:
        raise TetherError(f"--strategy {strategy} needs --reward-model DIR", fix="name a folder from `tether train reward`, or use --strategy random")
    extra = []
    if candidates_file:
        from pathlib import Path

        from tether.store.formats import read_records

        extra = [record for _, record in read_records(Path(candidates_file))]
    with session_scope(url) as session:
        project = session.scalars(select(Project).where(Project.name == project_name)).first()
        if project is None:
            raise TetherError(f"no project named {project_name!r}", fix="create the annotation project first (web app Admin page or the API)")
        kind = annotation.project_kind(session, project)
        if kind != "pairwise":
            raise TetherError(f"project {project_name!r} asks for {kind} judgments; selection queues pairs", fix="use a pairwise project")
        candidates = candidate_pairs(session=session, project=project, extra=extra)
    if not candidates:
        raise TetherError(f"project {project_name!r} has no pair of completions that is not queued already",
                          fix="pass --candidates FILE with prompts and two or more completions each (e.g. a policy's samples)")
    p_mean = p_spread = None
    ensemble = 0
    if strategy != "random":
        from tether.reward import RewardModel

        rm = RewardModel.load(reward_model)
        ensemble = rm.ensemble
        if strategy == "disagreement" and rm.ensemble < 2:
            raise TetherError(f"{reward_model} has a single reward head: disagreement needs an ensemble",
                              fix="train with `tether train reward --ensemble 4`, or use --strategy uncertainty")
        prompts = [c["prompt"] for c in candidates]
        members_a = rm.score_members(prompts, [c["a"] for c in candidates], batch_size)  # (N, K)
        members_b = rm.score_members(prompts, [c["b"] for c in candidates], batch_size)
        p_mean, p_spread = preference_stats(members_a.T, members_b.T)
    picked = select_candidates(
        strategy, n, p_mean=p_mean, p_spread=p_spread, groups=[c["group"] for c in candidates],
        max_per_group=max_per_prompt, seed=seed,
    )
    rows = []
    for idx in picked:
        c = candidates[idx]
        meta = {"selected_by": strategy}
        if p_mean is not None:
            meta.update({"reward_model": str(reward_model), "p_pref": round(float(p_mean[idx]), 6), "p_spread": round(float(p_spread[idx]), 6)})
        rows.append({"prompt": c["prompt"], "completions": [c["a"], c["b"]], "meta": meta})
    counts = {"items": 0}
    if rows and not dry_run:
        with session_scope(url) as session:
            project = session.scalars(select(Project).where(Project.name == project_name)).one()
            counts = annotation.add_items(session, project=project, rows=rows)
    return {
        "project": project_name,
        "strategy": strategy,
        "candidates": len(candidates),
        "selected": len(picked),
        "queued": counts["items"],
        "ensemble": ensemble,
        "picks": [
            {"prompt": _preview(candidates[i]["prompt"]), "a": _preview(candidates[i]["a"]), "b": _preview(candidates[i]["b"]),
             "p_pref": None if p_mean is None else float(p_mean[i]), "p_spread": None if p_spread is None else float(p_spread[i])}
            for i in picked
        ],
    }


def _preview(content: Any, limit: int = 60) -> str:
    text = content if isinstance(content, str) else " | ".join(str(m.get("content", "")) for m in content)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
