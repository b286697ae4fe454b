"""Training rows from files (paths only, no database): the rows every trainer reads, as canonical rows of one
kind (tether.data.canonical).

Files of TRL or HH pairs give their rows as they are; PandaLM-style multi-annotator and k-wise ranking files give
the pairs their judgments decide by majority (as a majority snapshot of the imported file would). A snapshot's
file (``snapshot:NAME``, found in the workspace by tether.store.snapshots) holds canonical rows already.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tether.data.canonical import ROW_KINDS, canonical_row
from tether.data.formats import Entry, SkipRecord, detect_format, parse_record
from tether.data.records import read_records, where
from tether.errors import TetherError
from tether.feedback.aggregation import Vote, majority_pairs


def read_snapshot_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a snapshot file (canonical JSON lines)."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_rows(path: str | Path, kind: str = "preference", *, snapshot: bool = False) -> list[dict[str, Any]]:
    """Training rows from the file ``path`` as canonical rows of ``kind`` (see the module doc); ``snapshot``: the
    file is a snapshot's (canonical rows, read as they are)."""
    if kind not in ROW_KINDS:
        raise ValueError(f"unknown row kind {kind!r}; valid: {ROW_KINDS}")
    path = Path(path)
    records = list(enumerate(read_snapshot_rows(path), start=1)) if snapshot else list(read_records(path))
    if not records:
        raise TetherError(f"{path}: no records", fix="the file is empty; point at a file with rows")
    if kind in ("preference", "sft") and not snapshot and detect_format(records[0][1]) in ("pandalm", "ranking"):
        pairs = _judged_preference_rows(path, records)
        return pairs if kind == "preference" else [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs]
    rows = []
    for number, record in records:
        try:
            rows.append(canonical_row(record, kind))
        except ValueError as exc:
            fix = getattr(exc, "fix", f"expected {kind} rows; see `tether data import --help` for the formats")
            raise TetherError(f"{path}: record {number}: {exc}", fix=fix) from None
    return rows


def _judged_preference_rows(path: Path, records: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Multi-annotator (pandalm) and k-wise (ranking) records as preference rows, decided by majority with ties
    and split votes left out: the rows (and digest) `tether data import` + `tether data snapshot` would give."""
    fmt = detect_format(records[0][1])
    entries: list[Entry] = []
    votes: list[Any] = []
    annotators: dict[str, int] = {}
    for number, record in records:
        try:
            entry = parse_record(fmt, record)
        except (ValueError, SkipRecord) as exc:
            raise TetherError(f"{where(path, number)}: {exc}", fix=f"expected {fmt} records; see the README's Data formats") from None
        for annotator, value in entry.judgments:
            votes.append(Vote(len(entries), annotators.setdefault(annotator, len(annotators)), entry.kind, value))
        entries.append(entry)
    rows = []
    for pair in majority_pairs(votes):
        if pair.tie:
            continue
        entry = entries[pair.item_id]
        row = {"prompt": entry.prompt, "chosen": entry.completions[pair.chosen], "rejected": entry.completions[pair.rejected]}
        if pair.margin is not None:
            row["margin"] = float(pair.margin)
        rows.append(row)
    return rows


def skip_ties(rows: list[dict[str, Any]], reading: str, say: Any = print) -> tuple[list[dict[str, Any]], int]:
    """The rows that are not ties, and how many ties were skipped (with a note). A tie (``"tie": true``) says neither
    answer is better; ``reading`` says how the trainer would misread it (e.g. "DPO would read it as chosen > rejected")."""
    kept = [row for row in rows if not row.get("tie")]
    ties = len(rows) - len(kept)
    if ties:
        say(f"note: skipped {ties} tie(s) of {len(rows)} rows: a tie prefers neither answer ({reading}); counted as ties_skipped in tether.json")
    if rows and not kept:
        raise TetherError(f"all {len(rows)} rows are ties: nothing says which answer is better", fix="give preference rows with a winner, or a snapshot made without --keep-ties")
    return kept, ties
