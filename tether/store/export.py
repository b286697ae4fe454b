"""`tether data export`: a snapshot's (or a set's) rows written in the format another tool reads (TRL, HH-RLHF, or
Tether's own JSON lines)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from tether.data.canonical import HH_ASSISTANT, canonical_line
from tether.errors import TetherError
from tether.store.db import audit
from tether.store.snapshots import resolve

EXPORT_FORMATS = ("trl", "hh", "jsonl")


def _hh_turns(messages: list[dict[str, Any]]) -> str:
    speaker = {"user": "Human", "assistant": "Assistant", "system": "Human"}
    return "".join(f"\n\n{speaker.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)


def _hh_row(row: dict[str, Any]) -> dict[str, str]:
    """A preference row as two whole HH dialogues. HH-shaped prompts round-trip exactly; others are wrapped."""
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    if isinstance(prompt, list):
        prompt = _hh_turns(prompt) + HH_ASSISTANT
        chosen, rejected = (_hh_turns(c)[len("\n\nAssistant:"):] if isinstance(c, list) else c for c in (chosen, rejected))
    elif not prompt.endswith(HH_ASSISTANT):
        prompt = f"\n\nHuman: {prompt}{HH_ASSISTANT}"
        chosen, rejected = (" " + c if c and not c.startswith(" ") else c for c in (chosen, rejected))
    return {"chosen": prompt + chosen, "rejected": prompt + rejected}


def export_rows(rows: list[dict[str, Any]], row_kind: str, fmt: str, *, drop_weights: bool = False) -> tuple[list[dict[str, Any]], int]:
    """``(rows in the export format, rows left out)``. TRL and HH have no tie: tie rows are left out of them. Neither
    has a row weight: rows whose weights differ are refused unless ``drop_weights`` (each row then counts fully)."""
    if fmt not in EXPORT_FORMATS:
        raise TetherError(f"unknown export format {fmt!r}", fix=f"use one of: {', '.join(EXPORT_FORMATS)}")
    if fmt == "jsonl":
        if drop_weights:  # an option that would do nothing: said, not ignored
            raise TetherError("--drop-weights is for --format trl or hh: jsonl keeps each row's weight", fix="drop --drop-weights, or export --format trl")
        return rows, 0
    weights = {float(row.get("weight", 1.0)) for row in rows}  # one value for all rows: only the loss's scale
    if len(weights) > 1 and not drop_weights:
        # a vote snapshot weights each annotator's votes by reliability: a TRL or HH file would count an
        # unreliable annotator's votes as fully as anyone's, and nothing downstream would say so
        raise TetherError(
            f"these rows carry weights ({len(weights)} distinct values, {min(weights):g} to {max(weights):g}: how much each row counts in the loss), which the {fmt} format cannot hold",
            fix="export --format jsonl (weights kept; `tether train reward` reads them), snapshot the set without --votes reliability for one aggregated row per pair, or pass --drop-weights to write every row at full weight",
        )
    if row_kind == "preference":
        kept = [row for row in rows if not row.get("tie")]
        if fmt == "trl":
            out = [{k: row[k] for k in ("prompt", "chosen", "rejected", "margin") if k in row} for row in kept]
        else:
            out = [_hh_row(row) for row in kept]
        return out, len(rows) - len(kept)
    if fmt == "trl" and row_kind in ("unpaired", "prompt"):  # TRL's unpaired-preference and prompt-only formats
        return rows, 0
    raise TetherError(
        f"{row_kind} rows have no {fmt} format",
        fix="use --format jsonl" + (" (TRL has no ratings format)" if row_kind == "rating" else ""),
    )


def write_jsonl(rows: list[dict[str, Any]], out: Path) -> None:
    """One JSON object per line (canonical form), gzipped when ``out`` ends in .gz; written atomically."""
    import gzip

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    data = "".join(canonical_line(row) + "\n" for row in rows).encode("utf-8")
    if out.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    tmp.write_bytes(data)
    os.replace(tmp, out)


def export(name: str, fmt: str, out: Path, *, session: Session, root: Path, force: bool = False, drop_weights: bool = False) -> dict[str, Any]:
    """Write snapshot (or set) ``name`` to ``out`` as ``fmt``; returns a summary."""
    out = Path(out)
    if not (out.name.endswith(".jsonl") or out.name.endswith(".jsonl.gz")):
        raise TetherError(f"export writes JSON lines: {out.name!r} should end in .jsonl or .jsonl.gz", fix="rename the output file")
    if out.exists() and not force:
        raise TetherError(f"{out} exists", fix="pass --force to overwrite it, or choose another -o")
    resolved = resolve(name, session=session, root=root)
    rows, left_out = export_rows(resolved["rows"], resolved["row_kind"], fmt, drop_weights=drop_weights)
    write_jsonl(rows, out)
    audit(session, "data.export", resolved["source"], name, format=fmt, path=str(out), rows=len(rows))
    return {"name": name, "source": resolved["source"], "format": fmt, "path": str(out), "rows": len(rows),
            "left_out_ties": left_out, "digest": resolved["digest"],
            "weights_dropped": fmt != "jsonl" and len({float(row.get("weight", 1.0)) for row in resolved["rows"]}) > 1}
