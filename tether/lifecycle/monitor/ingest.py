"""Ingesting logged production interactions (JSONL) as ``production_record`` rows, cleaned the same on both stores."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.checks.inputs import find_unstorable, model_text
from tether.errors import TetherError
from tether.lifecycle.monitor.thresholds import parse_time

_TS_KEYS = ("ts", "timestamp", "time", "created_at")


_MODEL_KEYS = ("model_version", "model")


_USER_KEYS = ("user_ref", "user", "user_id")


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in value)
    raise ValueError(f"{what} must be text or a list of chat messages, got {type(value).__name__}")


def _thumbs(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (1, -1, 0):
        return value == 1
    if isinstance(value, str) and value.lower() in ("up", "down", "yes", "no", "good", "bad", "true", "false"):
        return value.lower() in ("up", "yes", "good", "true")
    raise ValueError(f"thumbs must be true/false, up/down or 1/-1, got {value!r}")


def production_row(record: dict[str, Any]) -> dict[str, Any]:
    """A logged record as a ``production_record`` row (raises ValueError naming the problem).

    Keys: ``prompt`` and ``completion`` (text or chat messages), a timestamp (``ts``, ``timestamp``, ``time`` or
    ``created_at``), optional ``model_version`` (or ``model``), ``user_ref`` (or ``user``/``user_id``),
    ``reward`` (a number), ``feedback`` (an object; ``thumbs`` and ``rating`` inside it, or at the top level, are
    normalized to ``{"thumbs": bool}`` and ``{"rating": float}``). Other keys go to ``meta``.
    """
    missing = [k for k in ("prompt", "completion") if k not in record]
    ts_key = next((k for k in _TS_KEYS if k in record), None)
    if ts_key is None:
        missing.append("ts")
    if missing:
        raise ValueError(f"missing key(s) {missing} (need prompt, completion and a timestamp: ts/timestamp/time)")
    row: dict[str, Any] = {
        "ts": parse_time(record[ts_key]),
        "prompt": _text(record["prompt"], "prompt"),
        "completion": _text(record["completion"], "completion"),
        "model_version": None,
        "user_ref": None,
        "reward": None,
        "feedback": None,
    }
    used = {"prompt", "completion", ts_key, "feedback", "thumbs", "rating", "reward"}
    for keys, column in ((_MODEL_KEYS, "model_version"), (_USER_KEYS, "user_ref")):
        key = next((k for k in keys if record.get(k) is not None), None)
        if key is not None:
            row[column] = str(record[key])[:200]
        used.update(keys)
    if record.get("reward") is not None:
        reward = record["reward"]
        if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward!r}")
        row["reward"] = float(reward)
    feedback = record.get("feedback")
    if feedback is not None and not isinstance(feedback, dict):
        raise ValueError(f"feedback must be an object such as {{\"thumbs\": true}}, got {feedback!r}")
    feedback = dict(feedback or {})
    for key in ("thumbs", "rating"):
        if record.get(key) is not None:
            feedback[key] = record[key]
    if feedback.get("thumbs") is not None:
        feedback["thumbs"] = _thumbs(feedback["thumbs"])
    if feedback.get("rating") is not None:
        rating = feedback["rating"]
        if not isinstance(rating, (int, float)) or isinstance(rating, bool):
            raise ValueError(f"rating must be a number, got {rating!r}")
        feedback["rating"] = float(rating)
    row["feedback"] = feedback or None
    row["meta"] = {k: v for k, v in record.items() if k not in used}
    # The logged texts are model output: cleaned as sampled text is (tether.checks.inputs.model_text), the same on both
    # stores; anything else that cannot be stored (NUL in a field, NaN) is refused with its field.
    row["prompt"], row["completion"] = model_text(row["prompt"]), model_text(row["completion"])
    problem = find_unstorable({k: row[k] for k in ("model_version", "user_ref", "feedback", "meta")})
    if problem is not None:
        raise ValueError(problem)
    return row


@dataclass
class IngestReport:
    path: str
    inserted: int = 0
    skipped: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    redacted: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first few skipped records and why
    seconds: float = 0.0


def ingest_file(
    path: Path,
    *,
    session: Any,
    skip_invalid: bool = False,
    redact_pii: bool = False,
    batch_size: int = 20_000,
) -> IngestReport:
    """Bulk-load a JSONL/JSON/parquet file of production records (see ``production_row`` for the keys).

    Rows are inserted in batches: PostgreSQL by ``COPY``, SQLite by one ``executemany`` of plain tuples per
    batch (other databases through SQLAlchemy's bulk insert). A bad record stops the load with its file and line (nothing is written), unless ``skip_invalid``.
    ``redact_pii`` replaces PII in prompts and completions by ``[EMAIL]``, ``[PHONE]``, ... (tether.checks.pii).
    """
    import time

    from tether.data.records import read_records
    from tether.store.db import audit

    start = time.perf_counter()
    report = IngestReport(path=str(path))
    first = last = None
    batch: list[dict[str, Any]] = []
    redact_fn = None
    if redact_pii:
        from tether.checks.pii import redact as redact_fn

    for number, record in read_records(Path(path)):
        try:
            row = production_row(record)
        except ValueError as exc:
            if not skip_invalid:
                raise TetherError(f"{path}:{number}: {exc}", fix="fix that record, or pass --skip-invalid to skip bad records") from None
            report.skipped += 1
            if len(report.problems) < 5:
                report.problems.append(f"{path}:{number}: {exc}")
            continue
        if redact_fn is not None:
            for key in ("prompt", "completion"):
                row[key], counts = redact_fn(row[key])
                for kind, n in counts.items():
                    report.redacted[kind] = report.redacted.get(kind, 0) + n
        first = row["ts"] if first is None or row["ts"] < first else first
        last = row["ts"] if last is None or row["ts"] > last else last
        batch.append(row)
        if len(batch) >= batch_size:
            _insert_rows(session, batch)
            report.inserted += len(batch)
            batch = []
    if batch:
        _insert_rows(session, batch)
        report.inserted += len(batch)
    if report.inserted == 0 and report.skipped == 0:
        raise TetherError(f"{path}: no records", fix="point at a file with one production record per line")
    report.first_ts = first.isoformat() if first else None
    report.last_ts = last.isoformat() if last else None
    report.seconds = time.perf_counter() - start
    audit(
        session,
        "monitor.ingest",
        "production_record",
        None,
        file=str(path),
        inserted=report.inserted,
        skipped=report.skipped,
        redacted=report.redacted,
        first_ts=report.first_ts,
        last_ts=report.last_ts,
    )
    return report


def _insert_rows(session: Any, rows: list[dict[str, Any]]) -> None:
    from sqlalchemy import insert

    from tether.store.tables import ProductionRecord

    conn = session.connection()
    if conn.dialect.name == "postgresql":
        raw = conn.connection.dbapi_connection
        columns = ("ts", "prompt", "completion", "model_version", "user_ref", "feedback", "reward", "meta")
        with raw.cursor() as cur:
            with cur.copy(f"COPY production_record ({', '.join(columns)}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(
                        (
                            r["ts"],
                            r["prompt"],
                            r["completion"],
                            r["model_version"],
                            r["user_ref"],
                            None if r["feedback"] is None else json.dumps(r["feedback"]),
                            r["reward"],
                            json.dumps(r["meta"]),
                        )
                    )
        return
    if conn.dialect.name == "sqlite":  # one executemany of plain tuples; ts in SQLAlchemy's SQLite text format
        conn.exec_driver_sql(
            "INSERT INTO production_record (ts, prompt, completion, model_version, user_ref, feedback, reward, meta) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (r["ts"].strftime("%Y-%m-%d %H:%M:%S.%f"), r["prompt"], r["completion"], r["model_version"], r["user_ref"],
                 None if r["feedback"] is None else json.dumps(r["feedback"]), r["reward"], json.dumps(r["meta"]))
                for r in rows
            ],
        )
        return
    session.execute(insert(ProductionRecord), rows)
