"""Reading feedback files and turning them into canonical training rows.

Files: JSONL, JSON (a list of objects, or an object holding one list), parquet, each optionally gzipped. Every
problem is reported with the file, the line (or record number) and the reason.

Canonical training rows (what snapshots hold and what every trainer reads) follow TRL's dataset formats:
- preference: ``{"prompt", "chosen", "rejected"}`` plus optional ``"margin"`` (float), ``"tie"`` (bool) and
  ``"subset"`` (str). Plain rows hold strings; conversational rows hold lists of ``{"role", "content"}``
  messages (the prompt's turns, and the assistant turn(s) of each answer).
- sft: ``{"prompt", "completion"}`` or ``{"messages": [...]}``.
- unpaired: ``{"prompt", "completion", "label": bool}`` (KTO).
- rating: ``{"prompt", "completion", "ratings": {aspect: number}}``.
- prompt: ``{"prompt"}``.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tether.errors import TetherError

HH_ASSISTANT = "\n\nAssistant:"
ROW_KINDS = ("preference", "sft", "unpaired", "rating", "prompt")


def _open_text(path: Path) -> io.TextIOBase:
    raw = path.open("rb")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", errors="strict")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict")


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext in (".jsonl", ".ndjson"):
        if name.endswith(ext):
            return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    raise TetherError(
        f"{path}: unknown file type {path.suffix!r}",
        fix="use .jsonl, .json or .parquet (optionally .gz)",
    )


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_or_record_number, record)`` from a feedback file; clear errors for every failure."""
    path = Path(path)
    if not path.exists():
        raise TetherError(f"file not found: {path}", fix="check the path")
    if path.is_dir():
        raise TetherError(f"{path} is a folder", fix="name a .jsonl, .json or .parquet file")
    kind = _file_kind(path)
    try:
        if kind == "parquet":
            yield from _read_parquet(path)
        elif kind == "jsonl":
            yield from _read_jsonl(path)
        else:
            yield from _read_json(path)
    except UnicodeDecodeError as exc:
        raise TetherError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", fix="re-encode the file as UTF-8") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise TetherError(f"{path}: the gzip stream is truncated or corrupt ({exc})", fix="download or copy the file again") from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TetherError(f"{path}:{line_no}: invalid JSON ({exc.msg} at column {exc.colno})", fix="fix or remove that line, or pass --skip-invalid") from None
            if not isinstance(record, dict):
                raise TetherError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}", fix="each line must be one object")
            yield line_no, record


def _read_json(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_text(path) as fh:
        text = fh.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TetherError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})", fix="fix the file, or save it as JSONL (one object per line)") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise TetherError(f"{path}: expected a list of records", fix="make the top level a JSON list of objects")
        data = lists[0]
    if not isinstance(data, list):
        raise TetherError(f"{path}: expected a list of records", fix="make the top level a JSON list of objects")
    for index, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise TetherError(f"{path}: record {index} is {type(record).__name__}, not an object", fix="each record must be a JSON object")
        yield index, record


def _read_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".gz":
            table = pq.read_table(io.BytesIO(gzip.decompress(path.read_bytes())))
        else:
            table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise TetherError(f"{path}: cannot read parquet ({exc})", fix="check the file is complete parquet") from None
    yield from enumerate(table.to_pylist(), start=1)


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split an HH-RLHF pair into (prompt, chosen completion, rejected completion).

    The prompt is the longest common prefix of the two dialogues cut back to the end of its last
    ``"\\n\\nAssistant:"``; the completions are what follows.
    """
    limit = min(len(chosen), len(rejected))
    common = 0
    while common < limit and chosen[common] == rejected[common]:
        common += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, common)  # the last turn marker wholly inside the shared prefix
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn shared by chosen and rejected")
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def preference_row(record: dict[str, Any]) -> dict[str, Any]:
    """A TRL-style or HH-style record as a canonical preference row (raises ValueError with the reason)."""
    if "chosen" not in record or "rejected" not in record:
        missing = [k for k in ("chosen", "rejected") if k not in record]
        raise ValueError(f"missing key(s) {missing}")
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" in record:
        prompt = record["prompt"]
        ok = (isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str)) or (
            _is_messages(prompt) and _is_messages(chosen) and _is_messages(rejected)
        )
        if not ok:
            raise ValueError("prompt/chosen/rejected must be all strings or all message lists")
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    elif _is_messages(chosen) and _is_messages(rejected):
        # Implicit prompt: both conversations share their turns up to the last answer.
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise ValueError("chosen and rejected conversations share no prompt turns")
        row = {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}
    elif isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen_text, rejected_text = split_hh(chosen, rejected)
        row = {"prompt": prompt, "chosen": chosen_text, "rejected": rejected_text}
    else:
        raise ValueError("chosen/rejected must be strings or message lists")
    if record.get("margin") is not None:
        margin = record["margin"]
        if not isinstance(margin, (int, float)) or isinstance(margin, bool):
            raise ValueError(f"margin must be a number, got {margin!r}")
        row["margin"] = float(margin)
    for key in ("tie", "subset"):
        if record.get(key) is not None:
            row[key] = record[key]
    return row


def canonical_line(row: dict[str, Any]) -> str:
    """One row as canonical JSON: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def rows_digest(rows: list[dict[str, Any]]) -> str:
    """sha256 of the canonical content of ``rows`` (one canonical line per row, joined by newlines)."""
    import hashlib

    digest = hashlib.sha256()
    for index, row in enumerate(rows):
        if index:
            digest.update(b"\n")
        digest.update(canonical_line(row).encode("utf-8"))
    return digest.hexdigest()


def read_snapshot_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def resolve_snapshot(name: str) -> Path:
    """The JSONL file of the snapshot ``name`` in the current workspace (refuses purged snapshots)."""
    from sqlalchemy import select

    from tether.cli.common import workspace_url
    from tether.store.db import session_scope
    from tether.store.tables import Snapshot

    ws, url = workspace_url()
    with session_scope(url) as session:
        snap = session.scalar(select(Snapshot).where(Snapshot.name == name))
        if snap is None:
            raise TetherError(f"no snapshot named {name!r} in {ws.root}", fix="see `tether data list`, or make one with `tether data snapshot`")
        if snap.purged_at is not None:
            raise TetherError(f"snapshot {name!r} was built from purged data ({snap.purge_note})", fix="make a new snapshot from the current data")
        path = Path(snap.path)
    if not path.is_absolute():
        path = ws.root / path
    if not path.exists():
        raise TetherError(f"the file of snapshot {name!r} is missing: {path}", fix="make the snapshot again")
    return path


def load_rows(spec: str | Path, kind: str = "preference") -> list[dict[str, Any]]:
    """Training rows from ``snapshot:NAME`` or a file, as canonical rows of ``kind`` (see the module doc)."""
    if kind not in ROW_KINDS:
        raise ValueError(f"unknown row kind {kind!r}; valid: {ROW_KINDS}")
    spec_text = str(spec)
    if spec_text.startswith("snapshot:"):
        path = resolve_snapshot(spec_text.split(":", 1)[1])
        records = list(enumerate(read_snapshot_rows(path), start=1))
    else:
        path = Path(spec_text)
        records = list(read_records(path))
    if not records:
        raise TetherError(f"{path}: no records", fix="the file is empty; point --data at a file with rows")
    rows = []
    for number, record in records:
        try:
            rows.append(_canonical(record, kind))
        except ValueError as exc:
            raise TetherError(f"{path}: record {number}: {exc}", fix=f"expected {kind} rows; see `tether data import --help` for the formats") from None
    return rows


def _canonical(record: dict[str, Any], kind: str) -> dict[str, Any]:
    if kind == "preference":
        return preference_row(record)
    if kind == "sft":
        if _is_messages(record.get("messages")):
            return {"messages": record["messages"]}
        if "prompt" in record and "completion" in record:
            return {"prompt": record["prompt"], "completion": record["completion"]}
        if "prompt" in record and "chosen" in record:  # preference data: train on the chosen answer
            row = preference_row(record)
            return {"prompt": row["prompt"], "completion": row["chosen"]}
        raise ValueError("expected 'messages', or 'prompt' and 'completion'")
    if kind == "unpaired":
        if not {"prompt", "completion", "label"} <= record.keys():
            raise ValueError("expected 'prompt', 'completion' and 'label'")
        if not isinstance(record["label"], bool):
            raise ValueError(f"label must be true or false, got {record['label']!r}")
        return {"prompt": record["prompt"], "completion": record["completion"], "label": record["label"]}
    if kind == "rating":
        if not {"prompt", "completion"} <= record.keys():
            raise ValueError("expected 'prompt', 'completion' and 'ratings' (or 'rating')")
        ratings = record.get("ratings")
        if ratings is None and "rating" in record:
            ratings = {"overall": record["rating"]}
        if not isinstance(ratings, dict) or not ratings:
            raise ValueError("expected 'ratings': {aspect: number} or 'rating': number")
        return {"prompt": record["prompt"], "completion": record["completion"], "ratings": ratings}
    if "prompt" not in record:
        raise ValueError("expected 'prompt'")
    return {"prompt": record["prompt"]}
