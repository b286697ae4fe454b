"""Snapshots: a feedback set's training rows, aggregated and frozen as JSONL with a sha256 digest; export.

A snapshot file holds one canonical row per line (see tether.store.formats): ``json.dumps(row, sort_keys=True,
ensure_ascii=False, separators=(",", ":"))``. Its digest is the sha256 of those lines joined by ``"\\n"`` (the
file adds one final newline), so the same rows give the same digest wherever they were made.

Which rows a set gives (its row kind follows its items):
- pairwise and ranking items -> preference rows: every judgment becomes pairs (tether.feedback.judgments.to_pairs; a full
  ranking of k gives k(k-1)/2 pairs) and ``aggregate_pairs`` decides each compared pair of an item;
- rating items -> rating rows: one per item, each aspect the mean of the annotators' ratings (one rating is
  copied as is);
- thumbs items -> unpaired rows: one per item, the majority label (a split vote is dropped and counted);
- prompt-only sets -> prompt rows.
Rows come in item order (the import order), and within an item in order of the pair's positions. Superseded
judgments are left out.

Who decides a label: a gold item's answer (``Item.gold_value``) is its label; else a reviewer's decision (a
judgment with source ``review``, from the review page's "adjudicate"; the latest one counts) is; else the
aggregate of the annotators' votes below. Reviewers' decisions are never votes. Gold and decided items are not
filtered by ``min_agreement``; their votes still feed the aggregation (Dawid-Skene learns each annotator's
reliability from them). ``counts`` says how many labels came from gold and from adjudication.

Aggregation (``--aggregate majority | dawid-skene | bradley-terry``) is tether.feedback.aggregation's. A winning
tie gives a tie row, which is dropped unless ``keep_ties`` (counted as ``ties_dropped``); kept tie rows carry
``"tie": true`` (counted as ``ties_kept``). Filters: ``exclude_annotators`` (e.g. the ones ``tether qc`` flagged)
and ``min_agreement`` (the share of a pair's votes that agree with its outcome).

Votes instead of the aggregate (``votes="reliability"``, ``--votes reliability``, preference sets): one row per
annotator vote, weighted by the annotator's reliability (tether.store.vote_rows). A preference item that carries a
``weight`` in its meta (an imported weighted row) gives its rows that weight.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from tether.data.canonical import canonical_line
from tether.data.rows import load_rows, read_snapshot_rows
from tether.errors import TetherError
from tether.feedback.aggregation import AGGREGATES, AggregatedPair, Vote, aggregate_pairs
from tether.feedback.judgments import to_pairs
from tether.store.db import audit
from tether.store.importer import check_name
from tether.store.tables import (
    Completion,
    Item,
    ItemCompletion,
    Judgment,
    Project,
    Prompt,
    Snapshot,
    SnapshotJudgment,
    User,
)
from tether.store.vote_rows import item_weight, vote_rows

SNAPSHOT_DIR = Path("artifacts") / "snapshots"
# Judgments with this source are a reviewer's decisions (tether.store.campaigns.adjudicate), not votes.
REVIEW_SOURCE = "review"
# What becomes a preference row: the aggregate of a pair's votes (one row per pair), or each vote weighted by its
# annotator's reliability (one row per vote).
VOTES = ("aggregate", "reliability")


# ---------------------------------------------------------------------------------------------------------------
# The rows of a set


def row_kind_of(session: Session, project_id: int) -> str:
    kinds = set(session.scalars(select(Item.kind).where(Item.project_id == project_id).distinct()))
    if kinds & {"pairwise", "ranking"}:
        return "preference"
    if "rating" in kinds:
        return "rating"
    if "thumbs" in kinds:
        return "unpaired"
    return "prompt"


def set_rows(
    session: Session, project_id: int, *, aggregate: str = "majority", keep_ties: bool = False, qc: dict[str, Any] | None = None,
    min_agreement: float | None = None, exclude_annotators: Collection[str] = (), used: list[int] | None = None,
    votes: str = "aggregate",
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """``(row_kind, rows, counts)``: the canonical training rows of a set, as the module doc describes.

    ``exclude_annotators`` (user names): their judgments are left out before aggregation (counted as
    ``excluded_judgments``). ``min_agreement``: aggregated pairs whose share of agreeing votes is below it are
    left out (counted as ``low_agreement``). ``used``, when given, receives the ids of the judgments the rows rest
    on (the aggregation's votes and the reviewers' decisions): a snapshot's lineage. ``votes``: "aggregate" (one
    row per pair) or "reliability" (one weighted row per vote, preference sets only).
    """
    if aggregate not in AGGREGATES:
        raise TetherError(f"unknown aggregation method {aggregate!r}", fix=f"use one of: {', '.join(AGGREGATES)}")
    if votes not in VOTES:
        raise TetherError(f"unknown --votes {votes!r}", fix=f"use one of: {', '.join(VOTES)}")
    if votes == "reliability" and min_agreement is not None:
        raise TetherError(
            "--min-agreement filters aggregated pairs, and --votes reliability aggregates nothing (each vote is a row)",
            fix="leave out --min-agreement; the weights already count unreliable annotators less (or --exclude-flagged leaves them out)",
        )
    kind = row_kind_of(session, project_id)
    if votes == "reliability" and kind != "preference":
        raise TetherError(f"--votes reliability writes preference rows, and this set gives {kind} rows", fix="use it on a set of pairwise or ranking items")
    prompts = {
        pid: (messages if messages is not None else text)
        for pid, text, messages in session.execute(
            select(Prompt.id, Prompt.text, Prompt.messages).where(Prompt.project_id == project_id)
        )
    }
    if kind == "prompt":
        rows = [{"prompt": prompts[pid]} for pid in sorted(prompts)]
        return kind, rows, {"row_kind": kind, "rows": len(rows), "prompts": len(prompts)}
    item_kinds = {"preference": ("pairwise", "ranking"), "rating": ("rating",), "unpaired": ("thumbs",)}[kind]
    items = {
        item_id: (prompt_id, meta or {}, item_kind, gold_value if is_gold else None)
        for item_id, prompt_id, meta, item_kind, is_gold, gold_value in session.execute(
            select(Item.id, Item.prompt_id, Item.meta, Item.kind, Item.is_gold, Item.gold_value)
            .where(Item.project_id == project_id, Item.kind.in_(item_kinds))
        )
    }
    positions: dict[tuple[int, int], int] = {}
    completion_ids = set()
    for item_id, position, completion_id in session.execute(
        select(ItemCompletion.item_id, ItemCompletion.position, ItemCompletion.completion_id)
        .join(Item, Item.id == ItemCompletion.item_id)
        .where(Item.project_id == project_id, Item.kind.in_(item_kinds))
    ):
        positions[item_id, position] = completion_id
        completion_ids.add(completion_id)
    completions = {
        cid: (messages if messages is not None else text)
        for cid, text, messages in session.execute(
            select(Completion.id, Completion.text, Completion.messages)
            .join(Prompt, Prompt.id == Completion.prompt_id)
            .where(Prompt.project_id == project_id)
        )
        if cid in completion_ids
    }
    judged = session.execute(
        select(Judgment.id, Judgment.item_id, Judgment.user_id, Judgment.kind, Judgment.value, Judgment.supersedes_id, Judgment.source)
        .join(Item, Item.id == Judgment.item_id)
        .where(Item.project_id == project_id, Item.kind.in_(item_kinds))
        .order_by(Judgment.id)
    ).all()
    superseded = {j.supersedes_id for j in judged if j.supersedes_id is not None}
    excluded_ids = set(session.scalars(select(User.id).where(User.name.in_(list(exclude_annotators))))) if exclude_annotators else set()
    live = [j for j in judged if j.id not in superseded and j.user_id not in excluded_ids]
    voted = [j for j in live if j.source != REVIEW_SOURCE]
    ballots = [Vote(j.item_id, j.user_id, j.kind, j.value) for j in voted]
    # Who decides an item's label, above the aggregate: its gold answer, else a reviewer's latest decision.
    reviewed = {j.item_id: j for j in live if j.source == REVIEW_SOURCE}  # in id order: the latest stays
    decided: dict[int, dict[str, Any]] = {item_id: dict(j.value) for item_id, j in reviewed.items()}
    gold = {item_id: value for item_id, (_, _, _, value) in items.items() if value is not None}
    decided.update(gold)
    from_review = set(reviewed) - set(gold)
    if used is not None:
        used.extend(j.id for j in voted)
        used.extend(reviewed[item_id].id for item_id in sorted(from_review))
    counts: dict[str, Any] = {
        "row_kind": kind, "items": len(items), "judgments": len(voted) + len(from_review), "superseded": len(superseded),
        "labels_from_gold": len(gold), "labels_from_adjudication": len(from_review),
    }
    if excluded_ids:
        counts["excluded_judgments"] = sum(j.user_id in excluded_ids and j.id not in superseded for j in judged)

    def text_of(item_id: int, position: int) -> Any:
        return completions[positions[item_id, position]]

    if kind == "preference" and votes == "reliability":
        figures = qc if qc is not None else {}
        names = dict(session.execute(select(User.id, User.name).where(User.id.in_({j.user_id for j in voted} or {-1}))).all())
        rows = vote_rows(ballots, names, decided_pairs(items, decided), items, prompts, text_of, keep_ties=keep_ties, counts=counts, figures=figures)
    elif kind == "preference":
        figures = qc if qc is not None else {}  # the aggregation adds its own figures (no_majority) to it
        rows = _preference_rows(aggregate_pairs(aggregate, ballots, qc=figures), items, prompts, decided, text_of,
                                keep_ties=keep_ties, min_agreement=min_agreement, counts=counts)
        counts["no_majority"] = figures.get("aggregate/no_majority")
    else:
        rows = _per_completion_rows(kind, ballots, items, prompts, decided, text_of, counts=counts)
    counts["rows"] = len(rows)
    return kind, rows, counts


def _preference_rows(
    aggregated: list[AggregatedPair], items: dict[int, tuple[Any, ...]], prompts: dict[int, Any], decided: dict[int, dict[str, Any]],
    text_of: Any, *, keep_ties: bool, min_agreement: float | None, counts: dict[str, Any],
) -> list[dict[str, Any]]:
    """Preference rows from the aggregated pairs, the decided items' pairs taking the place of theirs; the counts
    (pairs, ties, low agreement) are added to ``counts``."""
    pairs = [pair for pair in aggregated if pair.item_id not in decided]
    if min_agreement is not None:
        agreed = [pair for pair in pairs if pair.agreement >= min_agreement]
        counts["low_agreement"] = len(pairs) - len(agreed)
        pairs = agreed
    pairs = sorted(pairs + decided_pairs(items, decided), key=lambda p: (p.item_id, min(p.chosen, p.rejected), max(p.chosen, p.rejected)))
    rows: list[dict[str, Any]] = []
    ties_kept = ties_dropped = 0
    for pair in pairs:
        if pair.tie and not keep_ties:
            ties_dropped += 1
            continue
        ties_kept += pair.tie
        prompt_id, meta, _, _ = items[pair.item_id]
        row = {"prompt": prompts[prompt_id], "chosen": text_of(pair.item_id, pair.chosen), "rejected": text_of(pair.item_id, pair.rejected)}
        if pair.margin is not None:
            row["margin"] = float(pair.margin)
        if pair.tie:
            row["tie"] = True
        if isinstance(meta.get("subset"), str):
            row["subset"] = meta["subset"]
        weight = item_weight(pair.item_id, meta)
        if weight is not None:
            row["weight"] = weight
        rows.append(row)
    counts.update({"pairs": len(pairs), "ties_kept": ties_kept, "ties_dropped": ties_dropped})
    return rows


def _per_completion_rows(
    kind: str, votes: list[Vote], items: dict[int, tuple[Any, ...]], prompts: dict[int, Any], decided: dict[int, dict[str, Any]],
    text_of: Any, *, counts: dict[str, Any],
) -> list[dict[str, Any]]:
    """Rating rows (mean ratings) or unpaired rows (majority label; a split vote is left out and counted)."""
    by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for vote in votes:
        by_item[vote.item_id].append(vote.value)
    rows: list[dict[str, Any]] = []
    split = 0
    for item_id in sorted(set(by_item) | set(decided)):
        prompt_id = items[item_id][0]
        values = [decided[item_id]] if item_id in decided else by_item[item_id]
        if kind == "rating":
            rows.append({"prompt": prompts[prompt_id], "completion": text_of(item_id, 0), "ratings": _mean_ratings(values)})
            continue
        labels = Counter(v["label"] for v in values)
        if labels[True] == labels[False]:
            split += 1
            continue
        rows.append({"prompt": prompts[prompt_id], "completion": text_of(item_id, 0), "label": labels[True] > labels[False]})
    if kind == "unpaired":
        counts["no_majority"] = split
    return rows


def decided_pairs(items: dict[int, tuple[Any, ...]], decided: dict[int, dict[str, Any]]) -> list[AggregatedPair]:
    """The pairs of the items whose label a gold answer or a reviewer decided (``items``: id -> (.., .., kind, ..))."""
    pairs = []
    for item_id, value in decided.items():
        for pair in to_pairs(items[item_id][2], value):
            chosen, rejected = (min(pair.chosen, pair.rejected), max(pair.chosen, pair.rejected)) if pair.tie else (pair.chosen, pair.rejected)
            pairs.append(AggregatedPair(item_id, chosen, rejected, pair.tie, votes=1, agreement=1.0, margin=pair.margin))
    return pairs


def _mean_ratings(values: list[dict[str, Any]]) -> dict[str, Any]:
    if len(values) == 1:
        return dict(values[0]["ratings"])
    scores: dict[str, list[float]] = defaultdict(list)
    for value in values:
        for aspect, score in value["ratings"].items():
            scores[aspect].append(score)
    return {aspect: sum(s) / len(s) for aspect, s in scores.items()}


def encode_rows(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """``(content, digest)``: the canonical lines joined by newlines, and their sha256."""
    content = "\n".join(canonical_line(row) for row in rows)
    return content, hashlib.sha256(content.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Snapshots


def find_set(session: Session, name: str) -> Project | None:
    return session.scalar(select(Project).where(Project.name == name))


def require_set(session: Session, name: str) -> Project:
    project = find_set(session, name)
    if project is None:
        raise TetherError(f"no feedback set named {name!r}", fix="see `tether data list`, or import one with `tether data import`")
    return project


def make_snapshot(
    set_name: str,
    *,
    session: Session,
    root: Path,
    aggregate: str = "majority",
    snapshot_name: str | None = None,
    keep_ties: bool = False,
    qc: dict[str, Any] | None = None,
    min_agreement: float | None = None,
    exclude_annotators: Collection[str] = (),
    votes: str = "aggregate",
) -> dict[str, Any]:
    """Freeze the training rows of set ``set_name`` into ``root``/artifacts/snapshots/<name>.jsonl and record it.

    ``qc``: figures to record on the snapshot (from tether.qc, say); the aggregation adds its own to a copy.
    ``min_agreement`` and ``exclude_annotators`` (user names) filter as in ``set_rows``; both are recorded.
    ``votes="reliability"``: one row per vote, weighted by its annotator's reliability (module doc); the snapshot's
    ``aggregate`` is then recorded as "votes:reliability", and ``aggregate`` must stay the default.
    Returns the snapshot's summary (name, path, digest, row_count, counts, qc).
    """
    if votes != "aggregate" and aggregate != "majority":
        raise TetherError(
            f"--aggregate {aggregate} decides one row per pair, and --votes {votes} writes every vote as its own row",
            fix="give one of them: --aggregate METHOD, or --votes reliability",
        )
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise TetherError(f"--min-agreement must lie in 0..1, got {min_agreement}", fix="the share of a pair's votes that agree, e.g. 0.67")
    project = require_set(session, set_name)
    if snapshot_name is None:
        taken = set(session.scalars(select(Snapshot.name).where(Snapshot.name.like(f"{set_name}-v%"))))
        number = 1
        while f"{set_name}-v{number}" in taken:
            number += 1
        snapshot_name = f"{set_name}-v{number}"
    check_name(snapshot_name, "snapshot")
    if session.scalar(select(Snapshot.id).where(Snapshot.name == snapshot_name)) is not None:
        raise TetherError(f"a snapshot named {snapshot_name!r} already exists", fix="pass another --snapshot-name (snapshots are frozen)")
    figures = dict(qc or {})
    used: list[int] = []
    kind, rows, counts = set_rows(
        session, project.id, aggregate=aggregate, keep_ties=keep_ties, qc=figures,
        min_agreement=min_agreement, exclude_annotators=exclude_annotators, used=used, votes=votes,
    )
    if not rows:
        raise TetherError(
            f"set {set_name!r} gives no training rows ({counts})",
            fix="check its judgments with `tether data show`; ties are left out unless --keep-ties",
        )
    content, digest = encode_rows(rows)
    relative = SNAPSHOT_DIR / f"{snapshot_name}.jsonl"
    path = Path(root) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text(content + "\n", encoding="utf-8")
    snapshot = Snapshot(
        name=snapshot_name,
        project_id=project.id,
        aggregate=aggregate if votes == "aggregate" else f"votes:{votes}",
        filters={"row_kind": kind, "keep_ties": keep_ties, "set": set_name, "min_agreement": min_agreement,
                 "exclude_annotators": sorted(exclude_annotators), "votes": votes},
        qc=figures,
        counts=counts,
        path=relative.as_posix(),
        digest=digest,
        row_count=len(rows),
        judgments_recorded=True,
    )
    session.add(snapshot)
    session.flush()
    record_judgments(session, snapshot.id, used)
    os.replace(tmp, path)
    audit(session, "data.snapshot", "snapshot", snapshot.id, name=snapshot_name, set=set_name, digest=digest, rows=len(rows))
    return snapshot_summary(snapshot, set_name)


def record_judgments(session: Session, snapshot_id: int, judgment_ids: Iterable[int]) -> None:
    """The snapshot's lineage rows (``snapshot_judgment``): on PostgreSQL one INSERT of an unnested id array per
    100,000 (links of 100k judgments: 0.8 s instead of 2.0 s by batched executemany); elsewhere one executemany
    per 10,000."""
    if session.get_bind().dialect.name == "postgresql":
        ids = list(judgment_ids)
        statement = text("INSERT INTO snapshot_judgment (snapshot_id, judgment_id) SELECT :snapshot, unnest(CAST(:ids AS integer[]))")
        for start in range(0, len(ids), 100_000):
            session.execute(statement, {"snapshot": snapshot_id, "ids": ids[start : start + 100_000]})
        return
    batch: list[dict[str, int]] = []
    for judgment_id in judgment_ids:
        batch.append({"snapshot_id": snapshot_id, "judgment_id": judgment_id})
        if len(batch) == 10_000:
            session.execute(insert(SnapshotJudgment), batch)
            batch = []
    if batch:
        session.execute(insert(SnapshotJudgment), batch)


def snapshot_summary(snapshot: Snapshot, set_name: str | None) -> dict[str, Any]:
    return {
        "name": snapshot.name,
        "set": set_name,
        "row_kind": snapshot.filters.get("row_kind") or snapshot.counts.get("row_kind"),
        "aggregate": snapshot.aggregate,
        "path": snapshot.path,
        "digest": snapshot.digest,
        "row_count": snapshot.row_count,
        "counts": snapshot.counts,
        "qc": snapshot.qc,
        "created_at": snapshot.created_at,
        "purged_at": snapshot.purged_at,
    }


def snapshot_file_rows(snapshot: Snapshot, root: Path) -> list[dict[str, Any]]:
    """The rows of a snapshot's file, checked against its recorded digest."""
    path = Path(snapshot.path)
    if not path.is_absolute():
        path = Path(root) / path
    if not path.exists():
        raise TetherError(f"the file of snapshot {snapshot.name!r} is missing: {path}", fix="make the snapshot again")
    rows = read_snapshot_rows(path)
    if encode_rows(rows)[1] != snapshot.digest:
        raise TetherError(
            f"the file of snapshot {snapshot.name!r} changed since it was made (digest mismatch): {path}",
            fix="restore the file or make a new snapshot",
        )
    return rows


def resolve(name: str, *, session: Session, root: Path, allow_purged: bool = False) -> dict[str, Any]:
    """A snapshot named ``name`` (looked up first) or else a set: ``{"source", "name", "row_kind", "rows", ...}``.

    For a set the rows are aggregated now by majority, the way a fresh snapshot would be (nothing is recorded).
    A snapshot built from purged data is refused unless ``allow_purged`` (to look at it; its rows are then
    those left in its file, or none when the purge deleted it).
    """
    snapshot = session.scalar(select(Snapshot).where(Snapshot.name == name))
    if snapshot is not None:
        set_name = session.scalar(select(Project.name).where(Project.id == snapshot.project_id)) if snapshot.project_id else None
        info = snapshot_summary(snapshot, set_name)
        if snapshot.purged_at is not None:
            if not allow_purged:
                raise TetherError(f"snapshot {name!r} was built from purged data ({snapshot.purge_note})", fix="make a new snapshot from the current data")
            path = Path(snapshot.path) if Path(snapshot.path).is_absolute() else Path(root) / snapshot.path
            return {"source": "snapshot", **info, "purge_note": snapshot.purge_note, "rows": snapshot_file_rows(snapshot, root) if path.exists() else []}
        return {"source": "snapshot", **info, "rows": snapshot_file_rows(snapshot, root)}
    project = find_set(session, name)
    if project is None:
        raise TetherError(f"no snapshot or feedback set named {name!r}", fix="see `tether data list`")
    kind, rows, counts = set_rows(session, project.id)
    return {"source": "set", "name": name, "set": name, "row_kind": kind, "aggregate": "majority", "counts": counts,
            "digest": encode_rows(rows)[1], "row_count": len(rows), "rows": rows}


def snapshot_file(workspace: Any, name: str) -> Path:
    """The JSONL file of the snapshot ``name`` in ``workspace`` (refuses purged snapshots and missing files)."""
    from tether.store.db import check_schema, session_scope

    check_schema(workspace.database_url)
    with session_scope(workspace.database_url, readonly=True) as session:
        snap = session.scalar(select(Snapshot).where(Snapshot.name == name))
        if snap is None:
            raise TetherError(f"no snapshot named {name!r} in {workspace.root}", fix="see `tether data list`, or make one with `tether data snapshot`")
        if snap.purged_at is not None:
            raise TetherError(f"snapshot {name!r} was built from purged data ({snap.purge_note})", fix="make a new snapshot from the current data")
        path = Path(snap.path)
    if not path.is_absolute():
        path = Path(workspace.root) / path
    if not path.exists():
        raise TetherError(f"the file of snapshot {name!r} is missing: {path}", fix="make the snapshot again")
    return path


def snapshot_digest(database_url: str, name: str) -> str | None:
    """The digest of the snapshot ``name`` (None when there is none)."""
    from tether.store.db import session_scope

    with session_scope(database_url, readonly=True) as session:
        return session.scalar(select(Snapshot.digest).where(Snapshot.name == name))


def snapshot_with_digest(database_url: str, digest: str) -> str | None:
    """The name of the first snapshot whose rows have ``digest`` (None when there is none)."""
    from tether.store.db import session_scope

    with session_scope(database_url, readonly=True) as session:
        return session.scalar(select(Snapshot.name).where(Snapshot.digest == digest).order_by(Snapshot.id).limit(1))


def spec_path(spec: str | Path, workspace: Any) -> tuple[Path, bool]:
    """Where the rows of ``spec`` are: ``snapshot:NAME`` (its file in ``workspace``) or a file path; and whether it is a
    snapshot's file."""
    text = str(spec)
    if not text.startswith("snapshot:"):
        return Path(text), False
    if workspace is None:
        raise TetherError(f"{text} names a snapshot, and no workspace was given to find it in", fix="run the command inside a workspace (tether init) or set TETHER_HOME")
    return snapshot_file(workspace, text.split(":", 1)[1]), True


def training_rows(spec: str | Path, kind: str, *, workspace: Any = None) -> list[dict[str, Any]]:
    """Training rows of ``kind`` (tether.data.rows) from ``snapshot:NAME`` (in ``workspace``) or a file."""
    path, is_snapshot = spec_path(spec, workspace)
    return load_rows(path, kind, snapshot=is_snapshot)


# ---------------------------------------------------------------------------------------------------------------
# Listing


def list_sets(session: Session) -> list[dict[str, Any]]:
    """Every feedback set with its counts (``purged_judgments``: deleted by `tether data purge`), oldest first."""
    def grouped(statement: Any) -> dict[int, int]:
        return dict(session.execute(statement).all())

    items = grouped(select(Item.project_id, func.count()).group_by(Item.project_id))
    prompts = grouped(select(Prompt.project_id, func.count()).group_by(Prompt.project_id))
    judgments = grouped(select(Item.project_id, func.count(Judgment.id)).join(Judgment, Judgment.item_id == Item.id).group_by(Item.project_id))
    annotators = grouped(
        select(Item.project_id, func.count(func.distinct(Judgment.user_id))).join(Judgment, Judgment.item_id == Item.id).group_by(Item.project_id)
    )
    return [
        {"name": p.name, "source": p.source, "prompts": prompts.get(p.id, 0), "items": items.get(p.id, 0),
         "judgments": judgments.get(p.id, 0), "annotators": annotators.get(p.id, 0), "created_at": p.created_at,
         "purged_judgments": ((p.meta or {}).get("purged") or {}).get("judgments", 0)}
        for p in session.scalars(select(Project).order_by(Project.id))
    ]


def list_snapshots(session: Session) -> list[dict[str, Any]]:
    names = dict(session.execute(select(Project.id, Project.name)).all())
    return [snapshot_summary(s, names.get(s.project_id)) for s in session.scalars(select(Snapshot).order_by(Snapshot.id))]


def set_details(session: Session, name: str) -> dict[str, Any]:
    """A set's counts by table and item kind, its annotators, its import summary and its snapshots."""
    project = require_set(session, name)
    item_kinds = dict(session.execute(select(Item.kind, func.count()).where(Item.project_id == project.id).group_by(Item.kind)).all())
    annotators = dict(
        session.execute(
            select(Judgment.user_id, func.count()).join(Item, Item.id == Judgment.item_id).where(Item.project_id == project.id).group_by(Judgment.user_id)
        ).all()
    )
    from tether.store.tables import User

    names = dict(session.execute(select(User.id, User.name).where(User.id.in_(list(annotators) or [-1]))).all())
    completions = session.scalar(
        select(func.count()).select_from(Completion).join(Prompt, Prompt.id == Completion.prompt_id).where(Prompt.project_id == project.id)
    )
    prompts = session.scalar(select(func.count()).select_from(Prompt).where(Prompt.project_id == project.id))
    snapshots = [s.name for s in session.scalars(select(Snapshot).where(Snapshot.project_id == project.id).order_by(Snapshot.id))]
    return {
        "name": project.name,
        "source": project.source,
        "created_at": project.created_at,
        "prompts": prompts,
        "completions": completions,
        "items": sum(item_kinds.values()),
        "item_kinds": item_kinds,
        "judgments": sum(annotators.values()),
        "annotators": {names[uid]: n for uid, n in sorted(annotators.items())},
        "import": (project.meta or {}).get("import"),
        "snapshots": snapshots,
    }


def preview(value: Any, limit: int = 160) -> Any:
    """A row shortened for display: long strings cut in the middle."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[: limit // 2] + " … " + value[-limit // 2 :]
    if isinstance(value, list):
        return [preview(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: preview(v, limit) for k, v in value.items()}
    return value


def dumps_preview(row: dict[str, Any]) -> str:
    return json.dumps(preview(row), ensure_ascii=False, sort_keys=True)
