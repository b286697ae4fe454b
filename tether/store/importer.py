"""Bulk import of a feedback file into the store: one transaction per file, rows inserted in bulk.

A file becomes one feedback set: a ``Project`` named by the user (source ``"import:<format>"``) holding
- prompts, de-duplicated by content hash within the set, and completions, de-duplicated per prompt;
- one item per record (kind pairwise, ranking, rating or thumbs) with its completions in order (``ItemCompletion``);
- external annotators (role ``"external"``): ``"<set>/annotator1"``.. for multi-annotator files (PandaLM),
  ``"<set>/import"`` for files that carry one unsigned label per record;
- judgments (source ``"import"``) whose values follow tether.feedback.judgments.
Prompt-only files make prompts and nothing else.

Records are parsed in chunks and each chunk is written with a few ``executemany`` inserts (ids reserved first
where later rows need them), all inside the caller's one transaction: a file imports whole or not at all. On
SQLite that transaction holds the write lock for the length of the import; a second writer waits for it (up to
``tether.store.db.SQLITE_BUSY_TIMEOUT_S``) and then fails with a clear "busy" error, writing nothing.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tether.data.canonical import messages_text
from tether.data.formats import FORMAT_KEYS, IMPORT_FORMATS, Entry, SkipRecord, detect_format, parse_record
from tether.data.records import content_hash, read_records, where
from tether.errors import TetherError
from tether.feedback.judgments import to_pairs
from tether.store.db import audit
from tether.store.tables import Completion, Item, ItemCompletion, Judgment, Project, Prompt, User, utcnow

# Set and snapshot names: they name files and prefix annotator names ("<set>/annotator1"), so no "/" or spaces.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
CHUNK_RECORDS = 2000
MAX_EXAMPLES = 10
_EMPTY: dict[str, Any] = {}  # shared by rows with no meta (bound once per executemany); never mutated


def check_name(name: str, what: str = "set") -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise TetherError(
            f"invalid {what} name {name!r}",
            fix="use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


@dataclass
class ImportResult:
    """What an import did. ``imported``/``skipped`` count records; the rest count rows written to the store."""

    name: str
    file: str
    format: str
    records: int = 0
    imported: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[dict[str, Any]] = field(default_factory=list)
    coerced: dict[str, int] = field(default_factory=dict)
    coerced_examples: list[dict[str, Any]] = field(default_factory=list)
    prompts: int = 0
    completions: int = 0
    items: int = 0
    judgments: int = 0
    comparisons: int = 0
    annotators: int = 0
    seconds: float = 0.0
    redacted: dict[str, int] = field(default_factory=dict)  # PII spans replaced per kind (--redact pii)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_file(
    path: Path,
    name: str,
    *,
    session: Session,
    fmt: str = "auto",
    skip_invalid: bool = False,
    on_progress: Callable[[float], None] | None = None,
    redact_pii: bool = False,
) -> ImportResult:
    """Import ``path`` as the new feedback set ``name`` inside ``session``'s transaction.

    ``fmt`` is ``"auto"`` (recognised from the first readable record's keys) or one of ``IMPORT_FORMATS``.
    Invalid records raise a TetherError naming the file, line and reason, unless ``skip_invalid``: then they are
    skipped and counted per reason. Identical chosen/rejected pairs are always skipped and counted.
    """
    start = time.perf_counter()
    path = Path(path)
    check_name(name)
    if fmt != "auto" and fmt not in IMPORT_FORMATS:
        raise TetherError(f"unknown format {fmt!r}", fix=f"use auto or one of: {', '.join(IMPORT_FORMATS)}")
    _refuse_existing(session, name)
    result = ImportResult(name=name, file=str(path), format=fmt)
    skips: Counter[str] = Counter()
    coerced: Counter[str] = Counter()

    def skip(number: int, reason: str, invalid: bool, fix: str | None = None) -> None:
        if invalid and not skip_invalid:
            raise TetherError(
                f"{where(path, number)}: {reason}",
                fix=fix or f"fix or remove that record, or pass --skip-invalid to skip bad records (format {result.format})",
            )
        skips[reason] += 1
        if len(result.skipped_examples) < MAX_EXAMPLES:
            result.skipped_examples.append({"where": where(path, number), "reason": reason})

    def bad_line(number: int, reason: str) -> None:
        result.records += 1
        skip(number, reason, invalid=True)

    writer: _SetWriter | None = None
    pending: list[Entry] = []
    for number, record in read_records(path, on_bad=bad_line if skip_invalid else None, on_progress=on_progress):
        result.records += 1
        if redact_pii:  # governance: PII in any text of the record is replaced before anything is stored
            from tether.checks.redact import redact_record

            record, _ = redact_record(record, result.redacted)
        if result.format == "auto":
            detected = detect_format(record)
            if detected is None:
                skip(
                    number,
                    f"cannot tell the format from the keys {sorted(record)[:12]} (expected {FORMAT_KEYS})",
                    invalid=True,
                    fix="pass --format NAME, or give the records the keys of a supported format (README: Data formats)",
                )
                continue
            result.format = detected
        try:
            entry = parse_record(result.format, record)
        except SkipRecord as exc:
            skip(number, str(exc), invalid=False)
            continue
        except ValueError as exc:
            skip(number, str(exc), invalid=True, fix=getattr(exc, "fix", None))
            continue
        for reason in entry.coerced:
            coerced[reason] += 1
            if len(result.coerced_examples) < MAX_EXAMPLES:
                result.coerced_examples.append({"where": where(path, number), "reason": reason})
        pending.append(entry)
        if len(pending) >= CHUNK_RECORDS:
            writer = writer or _SetWriter.create(session, name, result.format, path)
            writer.write(pending)
            pending = []
    if result.records == 0:
        raise TetherError(f"{path}: no records (the file is empty)", fix="point at a file with at least one record")
    if pending:
        writer = writer or _SetWriter.create(session, name, result.format, path)
        writer.write(pending)
    result.skipped = sum(skips.values())
    result.skip_reasons = dict(skips.most_common())
    result.coerced = dict(coerced.most_common())
    if writer is None:
        first = result.skipped_examples[0] if result.skipped_examples else {"where": str(path), "reason": "?"}
        raise TetherError(
            f"{path}: no record could be imported ({result.skipped} skipped; first: {first['where']}: {first['reason']})",
            fix=f"check the file's format (expected {FORMAT_KEYS}), or pass --format",
        )
    result.imported = result.records - result.skipped
    for key in ("prompts", "completions", "items", "judgments", "comparisons", "annotators"):
        setattr(result, key, writer.counts[key])
    result.seconds = round(time.perf_counter() - start, 3)
    summary = {k: v for k, v in result.to_dict().items() if k not in ("name", "skipped_examples", "coerced_examples")}
    writer.finish(summary)
    audit(session, "data.import", "project", writer.project_id, name=name, **summary)
    return result


def _refuse_existing(session: Session, name: str) -> None:
    existing = session.execute(select(Project.source, Project.created_at).where(Project.name == name)).first()
    if existing is not None:
        raise TetherError(
            f"a feedback set named {name!r} already exists ({existing.source}, made {existing.created_at:%Y-%m-%d %H:%M})",
            fix="import under another --name: sets are immutable, so a corrected file becomes a new set",
        )


def _reserve_ids(session: Session, table: Table, n: int) -> list[int]:
    """``n`` new ids for ``table``, so that rows can go in with a plain executemany (no RETURNING).

    On SQLite the transaction holds the write lock (BEGIN IMMEDIATE), so max(id)+1.. are ours; on PostgreSQL
    they come from the id sequence. (SQLAlchemy's ordered INSERT .. RETURNING runs one statement per row on
    SQLite: 6x slower.)
    """
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        first = session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one() + 1
        return list(range(first, first + n))
    sequence = func.pg_get_serial_sequence(table.name if table.name != "user" else '"user"', "id")
    return list(session.execute(select(func.nextval(sequence)).select_from(func.generate_series(1, n))).scalars())


def _insert_ids(session: Session, table: Table, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` (each without "id"); their new ids, in order.

    A row whose "messages" is None leaves that column out, so it stays SQL NULL (not JSON null): such rows go in
    a second executemany with their own column list.
    """
    if not rows:
        return []
    ids = _reserve_ids(session, table, len(rows))
    groups: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for new_id, row in zip(ids, rows):  # the rows are ours: fill them in place
        row["id"] = new_id
        null_messages = "messages" in row and row["messages"] is None
        if null_messages:
            del row["messages"]
        groups[null_messages].append(row)
    for group in groups.values():
        _executemany(session, table, group)
    return ids


def _executemany(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT ``rows`` (same keys each) with one DBAPI executemany, values bound by the columns' own types.

    SQLAlchemy's per-row parameter handling for an executemany costs about as much as SQLite's own work, so the
    statement goes to the driver directly; values pass through each column type's bind processor (JSON, dates)
    exactly as SQLAlchemy would bind them, once per distinct object (rows share their timestamp and empty metas).
    """
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    quote = dialect.identifier_preparer
    columns = list(rows[0])
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {quote.format_table(table)} ({', '.join(quote.quote(c) for c in columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))})"
    )
    params = [[row[c] for c in columns] for row in rows]
    for index, column in enumerate(columns):
        process = table.c[column].type.dialect_impl(dialect).bind_processor(dialect)
        if process is None:
            continue
        bound: dict[int, Any] = {}  # id -> bound value; every object stays alive in `rows` meanwhile
        for values in params:
            key = id(values[index])
            if key not in bound:
                bound[key] = process(values[index])
            values[index] = bound[key]
    connection.exec_driver_sql(sql, [tuple(values) for values in params])


def _text_fields(value: Any) -> tuple[str, list[Any] | None]:
    """(text, messages) of a prompt or completion that is a string or a message list."""
    if isinstance(value, str):
        return value, None
    return messages_text(value), value


class _SetWriter:
    """Writes the entries of one set in bulk, remembering prompt, completion and annotator ids across chunks."""

    def __init__(self, session: Session, project_id: int, name: str):
        self.session = session
        self.project_id = project_id
        self.name = name
        self.now = utcnow()
        self.prompt_ids: dict[str, int] = {}
        self.completion_ids: dict[tuple[int, str], int] = {}
        self.user_ids: dict[str, int] = {}
        self.counts = Counter({k: 0 for k in ("prompts", "completions", "items", "judgments", "comparisons", "annotators")})

    @classmethod
    def create(cls, session: Session, name: str, fmt: str, path: Path) -> _SetWriter:
        row = {
            "name": name,
            "description": f"imported from {path.name}",
            "source": f"import:{fmt}",
            "overlap": 1,
            "gold_rate": 0.0,
            "assignment_ttl_s": 3600,
            "meta": {"file": str(path), "format": fmt},
            "created_at": utcnow(),
        }
        try:
            with session.begin_nested():
                (project_id,) = _insert_ids(session, Project.__table__, [row])
        except IntegrityError:  # another process made the same set between our check and this insert
            _refuse_existing(session, name)
            raise
        return cls(session, project_id, name)

    def finish(self, summary: dict[str, Any]) -> None:
        project = Project.__table__
        overlap = max(1, self.counts["annotators"])
        meta = {"file": summary["file"], "format": summary["format"], "import": summary}
        self.session.execute(project.update().where(project.c.id == self.project_id).values(meta=meta, overlap=overlap))

    def _annotator(self, annotator: str) -> int:
        if annotator not in self.user_ids:
            name = f"{self.name}/{annotator}"
            found = self.session.execute(select(User.id, User.role).where(User.name == name)).first()
            if found is not None and found.role != "external":
                raise TetherError(f"user {name!r} exists and is not an external annotator", fix="import under another --name")
            if found is not None:  # left by an earlier set of the same name that was deleted
                self.user_ids[annotator] = found.id
            else:
                row = {"name": name, "role": "external", "password_hash": None, "active": True, "meta": {"set": self.name}, "created_at": self.now}
                (self.user_ids[annotator],) = _insert_ids(self.session, User.__table__, [row])
            self.counts["annotators"] += 1
        return self.user_ids[annotator]

    def write(self, entries: list[Entry]) -> None:
        # ALGO LOGIC: de-duplicate prompts by content hash within the set, completions per prompt.
        prompt_hashes = [content_hash(e.prompt) for e in entries]
        new_prompts: dict[str, dict[str, Any]] = {}
        for entry, digest in zip(entries, prompt_hashes):
            if digest not in self.prompt_ids and digest not in new_prompts:
                text, messages = _text_fields(entry.prompt)
                new_prompts[digest] = {
                    "project_id": self.project_id, "text": text, "messages": messages, "content_hash": digest,
                    "external_id": None, "meta": entry.prompt_meta or _EMPTY, "created_at": self.now,
                }
        ids = _insert_ids(self.session, Prompt.__table__, list(new_prompts.values()))
        self.prompt_ids.update(zip(new_prompts, ids))
        self.counts["prompts"] += len(ids)

        item_entries = [(e, self.prompt_ids[h]) for e, h in zip(entries, prompt_hashes) if e.kind != "prompt"]
        completion_keys: list[list[tuple[int, str]]] = []
        new_completions: dict[tuple[int, str], dict[str, Any]] = {}
        for entry, prompt_id in item_entries:
            keys = []
            for completion in entry.completions:
                key = (prompt_id, content_hash(completion))
                keys.append(key)
                if key not in self.completion_ids and key not in new_completions:
                    text, messages = _text_fields(completion)
                    new_completions[key] = {
                        "prompt_id": prompt_id, "text": text, "messages": messages, "content_hash": key[1],
                        "model": None, "gen_settings": _EMPTY, "meta": _EMPTY, "created_at": self.now,
                    }
            completion_keys.append(keys)
        ids = _insert_ids(self.session, Completion.__table__, list(new_completions.values()))
        self.completion_ids.update(zip(new_completions, ids))
        self.counts["completions"] += len(ids)
        if not item_entries:
            return

        item_rows = [
            {
                "project_id": self.project_id, "prompt_id": prompt_id, "kind": entry.kind, "is_gold": False,
                "external_id": entry.external_id, "meta": entry.item_meta or _EMPTY, "created_at": self.now,
            }
            for entry, prompt_id in item_entries
        ]
        item_ids = _insert_ids(self.session, Item.__table__, item_rows)
        links = [
            {"item_id": item_id, "position": position, "completion_id": self.completion_ids[key]}
            for item_id, keys in zip(item_ids, completion_keys)
            for position, key in enumerate(keys)
        ]
        _executemany(self.session, ItemCompletion.__table__, links)
        judgments = []
        for item_id, (entry, _) in zip(item_ids, item_entries):
            for annotator, value in entry.judgments:
                judgments.append({
                    "item_id": item_id, "user_id": self._annotator(annotator), "kind": entry.kind, "value": value,
                    "source": "import", "created_at": self.now,
                })
                self.counts["comparisons"] += 1 if entry.kind == "pairwise" else len(to_pairs(entry.kind, value))
        _executemany(self.session, Judgment.__table__, judgments)
        self.counts["items"] += len(item_ids)
        self.counts["judgments"] += len(judgments)
