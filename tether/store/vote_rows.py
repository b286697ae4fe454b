"""Preference rows from the votes themselves (``tether data snapshot --votes reliability``), not their aggregate.

Every annotator's vote on a compared pair becomes its own row (a ranking's vote one per pair), in item, pair and
judgment order, with ``"weight"`` = that annotator's Dawid-Skene reliability, estimated from all the set's pair
votes (tether.feedback.aggregation.annotator_reliability, the estimate ``--aggregate dawid-skene`` weighs votes by
and ``tether qc`` reports; rounded to 6 digits). The reward model's loss is then the weighted mean over the rows,
so each vote counts as much as its annotator's estimated accuracy: one who contradicts the consensus, little. A
gold or decided item gives its one decided row per pair, weight 1. Tie votes follow ``keep_ties`` (kept as
``"tie": true`` rows, else dropped and counted). An item that carries a ``weight`` in its meta (an imported
weighted row) multiplies its rows' weights by it.
"""

from __future__ import annotations

from typing import Any

from tether.data.canonical import RowValueError, check_weight
from tether.errors import TetherError
from tether.feedback.aggregation import AggregatedPair, Vote, annotator_reliability
from tether.feedback.judgments import to_pairs


def vote_rows(
    votes: list[Vote], names: dict[Any, str], decided: list[AggregatedPair], items: dict[int, tuple[Any, ...]], prompts: dict[int, Any],
    text_of: Any, *, keep_ties: bool, counts: dict[str, Any], figures: dict[str, Any],
) -> list[dict[str, Any]]:
    """The preference rows of the module doc. ``votes``: every live vote (decided items' too); ``names``: annotator
    id -> name; ``decided``: the pairs gold answers and reviewers decided (their items' votes give no rows);
    ``items``, ``prompts``, ``text_of`` as in tether.store.snapshots.set_rows. ``counts`` gets votes, ties_kept and
    ties_dropped; ``figures`` (the snapshot's QC figures) the weights by annotator name."""
    reliability = annotator_reliability(votes)  # over every vote, decided items' too: they inform the estimate
    weights = {who: round(r, 6) for who, r in reliability.items()}
    # ALGO LOGIC: (item, lo, hi, order) sorts the rows: item, pair, then the pair's votes in judgment order.
    entries: list[tuple[tuple[int, int, int, int], int, int, bool, float | None, float]] = []
    decided_items = {pair.item_id for pair in decided}
    for order, vote in enumerate(votes):
        if vote.item_id in decided_items:
            continue
        for pair in to_pairs(vote.kind, vote.value):
            lo, hi = min(pair.chosen, pair.rejected), max(pair.chosen, pair.rejected)
            chosen, rejected = (lo, hi) if pair.tie else (pair.chosen, pair.rejected)
            entries.append(((vote.item_id, lo, hi, order), chosen, rejected, pair.tie, pair.margin, weights[vote.annotator_id]))
    n_votes = len(entries)
    for pair in decided:
        key = (pair.item_id, min(pair.chosen, pair.rejected), max(pair.chosen, pair.rejected), -1)
        entries.append((key, pair.chosen, pair.rejected, pair.tie, pair.margin, 1.0))
    rows: list[dict[str, Any]] = []
    ties_kept = ties_dropped = 0
    for (item_id, _, _, _), chosen, rejected, tie, margin, weight in sorted(entries, key=lambda e: e[0]):
        if tie and not keep_ties:
            ties_dropped += 1
            continue
        ties_kept += tie
        prompt_id, meta, _, _ = items[item_id]
        row = {"prompt": prompts[prompt_id], "chosen": text_of(item_id, chosen), "rejected": text_of(item_id, rejected)}
        if margin is not None:
            row["margin"] = float(margin)
        if tie:
            row["tie"] = True
        if isinstance(meta.get("subset"), str):
            row["subset"] = meta["subset"]
        scale = item_weight(item_id, meta)
        row["weight"] = weight if scale is None else round(weight * scale, 6)
        rows.append(row)
    counts.update({"votes": n_votes, "ties_kept": ties_kept, "ties_dropped": ties_dropped})
    by_name = {names.get(who, str(who)): w for who, w in weights.items()}
    figures.update({"votes/method": "reliability", "votes/weights": dict(sorted(by_name.items()))})
    return rows


def item_weight(item_id: int, meta: dict[str, Any]) -> float | None:
    """The ``weight`` an item carries in its meta (from an imported weighted row), None when it has none."""
    if meta.get("weight") is None:
        return None
    try:
        return check_weight(meta["weight"])
    except RowValueError as exc:
        raise TetherError(f"item {item_id}: {exc}", fix=exc.fix) from None
