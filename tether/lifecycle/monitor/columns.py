"""Loading production records: columns as numpy arrays (aggregated in SQL where it can be), texts by id, and the
thumbs that review judgments give."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from tether.lifecycle.monitor.thresholds import REVIEW_SCHEMA, ReportOptions, parse_time


@dataclass
class Columns:
    """One entry per record, sorted by time. ``t`` is epoch seconds; NaN marks a missing reward/thumbs/rating."""

    id: np.ndarray
    t: np.ndarray
    prompt_len: np.ndarray
    completion_len: np.ndarray
    reward: np.ndarray
    thumbs: np.ndarray
    rating: np.ndarray


@contextmanager
def _connect(bind: Any) -> Iterator[Any]:
    """A connection from a database URL (opened and closed here) or from a Session (its own, in its transaction:
    on SQLite a second connection would wait for the session's write lock)."""
    from tether.store.db import get_engine

    if isinstance(bind, str):
        with get_engine(bind).connect() as conn:
            yield conn
    else:
        yield bind.connection()


def load_columns(bind: Any, options: ReportOptions) -> Columns:
    """The numeric columns of the production records in range, in one SQL query (no ORM objects).

    ``bind``: a database URL or a Session."""
    with _connect(bind) as conn:
        return _load_columns(conn, options)


def _load_columns(conn: Any, options: ReportOptions) -> Columns:
    from sqlalchemy import Float, Integer, cast, func, select

    from tether.store.tables import ProductionRecord as PR

    dialect = conn.dialect.name
    if dialect == "sqlite":
        epoch = (func.julianday(PR.ts) - 2440587.5) * 86400.0
    else:
        epoch = cast(func.extract("epoch", PR.ts), Float)
    thumbs = PR.feedback["thumbs"].as_boolean()
    rating = PR.feedback["rating"].as_float()
    query = select(
        PR.id, epoch, func.length(PR.prompt), func.length(PR.completion), PR.reward,
        cast(cast(thumbs, Integer), Float) if dialect == "postgresql" else thumbs, rating,
    )
    if options.since is not None:
        query = query.where(PR.ts >= _db_time(options.since, dialect))
    if options.until is not None:
        query = query.where(PR.ts < _db_time(options.until, dialect))
    if options.model_version is not None:
        query = query.where(PR.model_version == options.model_version)
    query = query.order_by(PR.ts)  # the ts index gives the order
    result = conn.execute(query)
    # The DBAPI cursor's plain tuples: these columns need no result processing, and building a million
    # SQLAlchemy Row objects (which numpy then probes key by key) costs more than the query itself.
    rows = result.cursor.fetchall()
    result.close()
    if not rows:
        return Columns(*(np.zeros(0) for _ in range(7)))
    data = np.array(rows, dtype=float)  # (N, 7); None -> nan
    return Columns(
        id=data[:, 0].astype(np.int64), t=data[:, 1], prompt_len=data[:, 2], completion_len=data[:, 3],
        reward=data[:, 4], thumbs=data[:, 5], rating=data[:, 6],
    )


def _db_time(dt: datetime, dialect: str) -> datetime:
    dt = parse_time(dt)
    return dt.replace(tzinfo=None) if dialect == "sqlite" else dt


def load_texts(bind: Any, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """``{id: (prompt, completion)}`` for the given record ids (chunked IN queries)."""
    from sqlalchemy import select

    from tether.store.tables import ProductionRecord as PR

    ids = sorted({int(i) for i in ids})
    out: dict[int, tuple[str, str]] = {}
    with _connect(bind) as conn:
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            for rid, prompt, completion in conn.execute(select(PR.id, PR.prompt, PR.completion).where(PR.id.in_(chunk))):
                out[rid] = (prompt, completion)
    return out


def review_label(value: dict[str, Any]) -> bool | None:
    """A review judgment as thumbs: ``{"label": bool}`` as is; ``{"ratings": {...}, "scale": [lo, hi]}`` by its
    mean against the scale's midpoint (above: up, below: down, on it: None)."""
    if isinstance(value.get("label"), bool):
        return value["label"]
    ratings = value.get("ratings")
    if isinstance(ratings, dict) and ratings:
        lo, hi = value.get("scale") or REVIEW_SCHEMA["scale"]
        mean = sum(float(v) for v in ratings.values()) / len(ratings)
        mid = (lo + hi) / 2
        return None if mean == mid else mean > mid
    return None


def load_review_thumbs(bind: Any, project: str) -> dict[int, bool]:
    """Thumbs given in the review project (``tether monitor sample``): ``{production record id: label}``; the
    latest non-superseded judgment of each annotator counts, and the majority of annotators decides."""
    from sqlalchemy import select

    from tether.store.tables import Item, Judgment, Project

    votes: dict[int, list[bool]] = {}
    with _connect(bind) as conn:
        project_id = conn.scalar(select(Project.id).where(Project.name == project))
        if project_id is None:
            return {}
        superseded = select(Judgment.supersedes_id).where(Judgment.supersedes_id.is_not(None))
        rows = conn.execute(
            select(Item.external_id, Judgment.value)
            .join(Judgment, Judgment.item_id == Item.id)
            .where(Item.project_id == project_id, Item.external_id.like("prod:%"), Judgment.id.not_in(superseded))
        )
        for external_id, value in rows:
            label = review_label(value or {})
            if label is not None:
                votes.setdefault(int(external_id.split(":", 1)[1]), []).append(label)
    return {rid: sum(v) * 2 > len(v) for rid, v in votes.items() if sum(v) * 2 != len(v)}
