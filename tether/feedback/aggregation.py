"""Aggregation of judgments into training pairs: majority, Dawid-Skene and Bradley-Terry, with one ``Vote`` in
and one ``AggregatedPair`` out. The store's snapshots (tether.store.snapshots) and quality control (tether.qc)
both call these.

Every judgment becomes votes on unordered position pairs of its item (``to_pairs``: a full ranking of k gives
k(k-1)/2 pairs); ties are kept as outcomes.

Majority (``majority``): for each pair of completions an item's judgments compared, each judgment votes for one of
three outcomes: the first better, the second better, or a tie. The outcome with strictly the most votes wins; when
two outcomes share the top count (a 1-1 split, or a-b-tie 1-1-1) the pair has no majority and is dropped (counted
as ``no_majority``). A pair's ``margin`` is the mean of the margins of the winning votes when every one of them has
a margin.

Dawid-Skene (``dawid-skene``) weighs each annotator by an estimated confusion matrix, so every compared pair gets
an outcome (splits are decided by the more reliable annotators); Bradley-Terry (``bradley-terry``) fits strengths
of an item's completions from all its votes and writes ``margin`` = the log-strength difference (a 1-1 split is a
tie).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether.errors import TetherError
from tether.feedback.dawid_skene import DawidSkeneResult, dawid_skene
from tether.feedback.judgments import to_pairs

# The aggregation methods of aggregate_pairs. To add one: add its name here and an elif in aggregate_pairs.
AGGREGATES = ("majority", "dawid-skene", "bradley-terry")
OUTCOMES = ("first", "second", "tie")  # the vote on an unordered pair (first < second in item positions)


@dataclass(frozen=True)
class Vote:
    """One judgment as aggregation sees it: who said what about which item (value in item positions)."""

    item_id: int
    annotator_id: Any
    kind: str
    value: dict[str, Any]


@dataclass(frozen=True)
class AggregatedPair:
    """The decided preference between two positions of an item. ``tie`` pairs have no winner (chosen < rejected).

    ``agreement``: the share of the pair's votes that match the outcome (a tie outcome matches tie votes);
    ``margin``: the mean margin of the winning votes (majority) or the Bradley-Terry log-strength difference;
    ``confidence``: the method's own certainty (Dawid-Skene posterior, Bradley-Terry win probability; None for
    majority).
    """

    item_id: int
    chosen: int
    rejected: int
    tie: bool = False
    votes: int = 1
    agreement: float = 1.0
    margin: float | None = None
    confidence: float | None = None


def aggregate_pairs(method: str, judgments: Iterable[Any], *, qc: dict[str, Any] | None = None) -> list[AggregatedPair]:
    """The training pairs that ``judgments`` support under aggregation ``method``, sorted by (item, positions).

    ``qc``, when given, receives the method's figures as flat ``aggregate/...`` keys; make_snapshot records them
    on the snapshot.
    """
    if method == "majority":
        return majority_pairs(judgments, qc=qc)
    elif method == "dawid-skene":
        return dawid_skene_pairs(judgments, qc=qc)
    elif method == "bradley-terry":
        return bradley_terry_pairs(judgments, qc=qc)
    raise TetherError(f"unknown aggregation method {method!r}", fix=f"use one of: {', '.join(AGGREGATES)}")


# ---------------------------------------------------------------------------------------------------------------
# Aggregation into pairs
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairVote:
    """One annotator's vote on the pair of item positions ``first < second``: "first", "second" or "tie"."""

    item_id: int
    annotator: Any
    first: int
    second: int
    outcome: str


def pair_votes(judgments: Iterable[Any]) -> list[PairVote]:
    """The pair votes of judgments: objects with ``item_id``, ``annotator_id`` (or ``annotator``), ``kind`` and
    ``value`` (item positions), e.g. ``Vote``. A ranking gives one vote per pair."""
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


def _pair_dawid_skene(groups: dict[tuple[int, int, int], list[PairVote]]) -> tuple[list[Any], DawidSkeneResult]:
    """Dawid-Skene over the grouped pair votes (units: the compared pairs, in ``groups`` order; classes: OUTCOMES):
    ``(annotators in the result's order, result)``."""
    annotators = sorted({v.annotator for g in groups.values() for v in g}, key=str)
    a_index = {n: i for i, n in enumerate(annotators)}
    unit_idx, ann_idx, labels = [], [], []
    for u, votes in enumerate(groups.values()):
        for v in votes:
            unit_idx.append(u)
            ann_idx.append(a_index[v.annotator])
            labels.append(OUTCOMES.index(v.outcome))
    ds = dawid_skene(np.array(unit_idx), np.array(ann_idx), np.array(labels), len(groups), len(annotators), len(OUTCOMES))
    return annotators, ds


def annotator_reliability(judgments: Iterable[Any]) -> dict[Any, float]:
    """Each annotator's Dawid-Skene reliability (expected accuracy, ``DawidSkeneResult.reliability``) over the pair
    votes of ``judgments``: the estimate ``dawid_skene_pairs`` weighs votes by. On pairwise items whose votes use
    all three outcomes it is the reliability ``tether qc`` reports. Keyed by the votes' annotator."""
    groups = _group(pair_votes(judgments))
    if not groups:
        return {}
    annotators, ds = _pair_dawid_skene(groups)
    return {name: float(r) for name, r in zip(annotators, ds.reliability)}


def dawid_skene_pairs(judgments: Iterable[Any], *, qc: dict[str, Any] | None = None) -> list[AggregatedPair]:
    """Dawid-Skene over every compared pair of every item (classes first better / second better / tie, one
    confusion matrix per annotator): each pair takes its posterior's most likely outcome. A pair whose votes
    split evenly still gets an outcome: the more reliable annotators decide it."""
    groups = _group(pair_votes(judgments))
    if not groups:
        _figures(qc, "dawid-skene", [])
        return []
    keys = list(groups)
    _, ds = _pair_dawid_skene(groups)
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


def majority_pairs(judgments: Iterable[Any], *, qc: dict[str, Any] | None = None) -> list[AggregatedPair]:
    """Plurality of three outcomes per compared pair (first better, second better, tie); see the module doc."""
    # ALGO LOGIC: tally each unordered pair (lo, hi) of each item; outcome "lo", "hi" or "tie".
    tallies: dict[tuple[int, int, int], Counter[str]] = defaultdict(Counter)
    margins: dict[tuple[int, int, int], dict[str, list[float | None]]] = defaultdict(lambda: defaultdict(list))
    for vote in judgments:
        for pair in to_pairs(vote.kind, vote.value):
            lo, hi = min(pair.chosen, pair.rejected), max(pair.chosen, pair.rejected)
            outcome = "tie" if pair.tie else ("lo" if pair.chosen == lo else "hi")
            key = (vote.item_id, lo, hi)
            tallies[key][outcome] += 1
            margins[key][outcome].append(pair.margin)
    pairs, no_majority, unanimous = [], 0, 0
    for key in sorted(tallies):
        ranked = tallies[key].most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            no_majority += 1
            continue
        outcome, count = ranked[0]
        total = sum(tallies[key].values())
        unanimous += count == total
        winning_margins = margins[key][outcome]
        margin = None if any(m is None for m in winning_margins) else sum(winning_margins) / len(winning_margins)
        item_id, lo, hi = key
        chosen, rejected = (hi, lo) if outcome == "hi" else (lo, hi)
        pairs.append(AggregatedPair(item_id, chosen, rejected, outcome == "tie", total, count / total, margin))
    if qc is not None:
        qc.update({
            "aggregate/method": "majority",
            "aggregate/compared_pairs": len(tallies),
            "aggregate/no_majority": no_majority,
            "aggregate/unanimous": unanimous,
            "aggregate/mean_agreement": round(sum(p.agreement for p in pairs) / len(pairs), 6) if pairs else None,
        })
    return pairs
