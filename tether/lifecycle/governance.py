"""Data governance: purging one person's data, retention, audit export (redaction of incoming records is
tether.checks.redact).

- ``purge_annotator`` deletes one annotator's judgments, assignments, API tokens and account;
  ``purge_user_ref`` deletes one end user's production records and the review items made from them;
  ``purge_expired`` applies ``[governance] retention_days`` to production records. Each marks the snapshots
  that used the purged judgments (``purged_at``, ``purge_note``; trainers refuse them), pseudonymizes the person's
  name where earlier audit events and QC figures name a person, and writes one ``data.purge`` audit event that
  names the person only by a keyed hash of the name (``subject_key``).
- ``export_audit`` streams the audit log as JSONL or CSV.

Snapshots are marked by lineage: every snapshot made since migration 0003 records the judgments it used
(``snapshot_judgment``), and a purge marks those that used any of the deleted judgments, whatever the judgments'
timestamps say (simulated annotators stamp their own clock). A snapshot made before that record existed is marked
whenever its set lost judgments: it may hold them. Its file is kept unless ``delete_snapshot_files``; models
trained on it, directly or through a parent, are flagged by ``tether registry lineage`` and cannot be approved or
promoted (tether.lifecycle.registry).

Pseudonyms are ``purged-`` + the first 12 hex digits of HMAC-SHA256(workspace key, name): without the key (a file
in the workspace, or ``TETHER_PSEUDONYM_KEY``) a guessed name cannot be checked against them. Only fields that
name a person are rewritten: an audit event's actor (``user:NAME``, ``api:NAME``, ...), the name of a ``user``
object, and the JSON fields of ``PERSON_FIELDS`` / ``PERSON_MAPS``; the same word elsewhere (a role, a choice
``"a"``) is left alone.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

from sqlalchemy import String, cast, delete, func, or_, select, update
from sqlalchemy.orm import Session

from tether.errors import TetherError
from tether.store.db import audit
from tether.store.tables import (
    ApiToken,
    Assignment,
    AuditEvent,
    Completion,
    Item,
    ItemCompletion,
    Judgment,
    ProductionRecord,
    Project,
    Prompt,
    Snapshot,
    SnapshotJudgment,
    User,
    as_utc,
)

# ---------------------------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Purge
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PurgeResult:
    """What a purge deleted (or, with ``dry_run``, would delete)."""

    subject: str  # "annotator", "user_ref" or "expired"
    subject_key: str | None  # HMAC-SHA256(workspace key, name): answers "was X purged?" only with the key
    dry_run: bool
    pseudonym: str | None = None  # what the name became where it was kept (audit events, QC figures)
    deleted: dict[str, int] = field(default_factory=dict)
    snapshots_marked: list[str] = field(default_factory=list)
    # How many of the purged judgments each marked snapshot used (None: made before snapshots recorded theirs).
    snapshot_judgments: dict[str, int | None] = field(default_factory=dict)
    snapshot_files_deleted: list[str] = field(default_factory=list)
    audit_events_pseudonymized: int = 0  # audit events and other rows whose mention of the name was replaced

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def subject_key(name: str, key: bytes) -> str:
    """HMAC-SHA256 of ``name`` under the workspace's pseudonym key (hex). Unkeyed, anyone could hash guesses."""
    if len(key) < 16:
        raise ValueError("the pseudonym key must have at least 16 bytes")
    return hmac.new(key, name.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonym(name: str, key: bytes) -> str:
    return f"purged-{subject_key(name, key)[:12]}"


def _dependent_snapshots(session: Session, doomed_judgments: Any, project_ids: Iterable[int]) -> dict[int, int | None]:
    """``{snapshot id: how many of the doomed judgments it used}`` by lineage (``snapshot_judgment``), plus
    ``{id: None}`` for the snapshots of ``project_ids`` that recorded no lineage (made before migration 0003) or
    hold prompts (no judgments behind their rows). ``doomed_judgments``: a select of judgment ids."""
    out: dict[int, int | None] = dict(
        session.execute(
            select(SnapshotJudgment.snapshot_id, func.count())
            .where(SnapshotJudgment.judgment_id.in_(doomed_judgments))
            .group_by(SnapshotJudgment.snapshot_id)
        ).all()
    )
    project_ids = list(project_ids)
    if project_ids:
        for snap in session.scalars(select(Snapshot).where(Snapshot.project_id.in_(project_ids))):
            if snap.id not in out and (not snap.judgments_recorded or snap.filters.get("row_kind") == "prompt"):
                out[snap.id] = None
    return out


def _mark_snapshots(
    session: Session, dependent: dict[int, int | None], note: str, root: Path | None, delete_files: bool, result: PurgeResult
) -> None:
    """Mark the snapshots in ``dependent`` (see _dependent_snapshots) as built from purged data."""
    if not dependent:
        return
    now = datetime.now(timezone.utc)
    for snap in session.scalars(select(Snapshot).where(Snapshot.id.in_(list(dependent))).order_by(Snapshot.id)):
        result.snapshots_marked.append(snap.name)
        result.snapshot_judgments[snap.name] = dependent[snap.id]
        if result.dry_run:
            continue
        if snap.purged_at is None:
            snap.purged_at = now
            snap.purge_note = note
        else:
            snap.purge_note = f"{snap.purge_note}; {note}"
        if delete_files and root is not None:
            path = Path(snap.path) if Path(snap.path).is_absolute() else Path(root) / snap.path
            if path.exists():
                path.unlink()
                result.snapshot_files_deleted.append(str(snap.path))


# JSON fields whose value names a person (a string, or a list of strings), and maps keyed by person. Only these
# are rewritten: "annotator" as a role or "a" as a pairwise choice elsewhere stays as it is.
PERSON_FIELDS = frozenset({
    "actor", "admin", "annotator", "approved_by", "promoted_by", "reviewer", "user", "excluded", "excluded_annotators",
    "exclude_annotators", "qc/excluded_annotators", "flagged", "flagged_by_qc",
})
PERSON_MAPS = frozenset({"annotators", "qc/reliability", "qc/flagged", "flagged", "reliability"})


def scrub_json(value: Any, name: str, alias: str, *, subject: bool = False) -> Any:
    """``value`` (JSON) with ``name`` replaced by ``alias`` where a field names a person (``PERSON_FIELDS``,
    ``PERSON_MAPS``; with ``subject``, also the top level's ``name``: a user event's subject). Exact matches only."""

    def person(v: Any) -> Any:
        if v == name:
            return alias
        if isinstance(v, list):
            return [alias if x == name else x for x in v]
        return v

    if isinstance(value, list):
        return [scrub_json(v, name, alias) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if key in PERSON_MAPS and isinstance(v, dict):
            v = {alias if k == name else k: scrub_json(x, name, alias) for k, x in v.items()}
        elif key in PERSON_FIELDS or (subject and key == "name"):
            v = person(v)
        else:
            v = scrub_json(v, name, alias)
        out[key] = v
    return out


def scrub_actor(actor: str, name: str, alias: str) -> str:
    """An audit actor (``NAME`` or ``CHANNEL:NAME``: user:, api:, sim:, cli:) with the person replaced."""
    if actor == name:
        return alias
    channel, sep, who = actor.rpartition(":")
    return f"{channel}{sep}{alias}" if sep and who == name else actor


# JSON columns that may name a person: QC figures per annotator on snapshots, metadata.
_JSON_COLUMNS = ((Snapshot, ("qc", "counts", "filters")), (Project, ("meta",)), (Item, ("meta",)), (Prompt, ("meta",)), (Completion, ("meta",)))


def _pseudonymize(session: Session, name: str, alias: str, dry_run: bool) -> int:
    """Replace ``name`` by ``alias`` in earlier audit events (actor, a user object's id, the detail's person
    fields) and in the JSON columns above; returns the number of rows changed."""
    like = f"%{_like_escape(name)}%"
    changed = 0
    events = session.scalars(
        select(AuditEvent).where(
            AuditEvent.actor.like(like, escape="\\") | (AuditEvent.object_id == name) | cast(AuditEvent.detail, String).like(like, escape="\\")
        )
    ).all()
    for event in events:
        is_user = event.object_type == "user"
        new_actor = scrub_actor(event.actor, name, alias)
        new_detail = scrub_json(event.detail, name, alias, subject=is_user)
        new_object = alias if is_user and event.object_id == name else event.object_id
        if (new_actor, new_detail, new_object) == (event.actor, event.detail, event.object_id):
            continue
        changed += 1
        if not dry_run:
            event.actor, event.detail, event.object_id = new_actor, new_detail, new_object
    for table, columns in _JSON_COLUMNS:
        condition = or_(*(cast(getattr(table, c), String).like(like, escape="\\") for c in columns))
        for row in session.scalars(select(table).where(condition)).all():
            updates = {c: scrub_json(getattr(row, c), name, alias) for c in columns}
            updates = {c: v for c, v in updates.items() if v != getattr(row, c)}
            if updates:
                changed += 1
                if not dry_run:
                    for column, value in updates.items():
                        setattr(row, column, value)
    return changed


# ---------------------------------------------------------------------------------------------------------------
# The workspace outside the store: the registry's tags and cards, the demo's reports
# ---------------------------------------------------------------------------------------------------------------

# Free-text fields of the demo's run records (stage results and notes) that list names as words.
FREE_TEXT_FIELDS = frozenset({"detail", "notes"})


def scrub_text(text: str, name: str, alias: str) -> str:
    """``name`` as a whole word in free text ("bob" but not "bobby", "x/bob" or "bob@x")."""
    return re.sub(r"(?<![\w/.@-])" + re.escape(name) + r"(?![\w/.@-])", alias, text)


def _scrub_record(value: Any, name: str, alias: str) -> Any:
    """A run record (JSON): its person fields, and the name as a word in its free-text fields."""
    value = scrub_json(value, name, alias)
    if isinstance(value, list):
        return [_scrub_record(v, name, alias) for v in value]
    if isinstance(value, dict):
        return {k: (_free(v, name, alias) if k in FREE_TEXT_FIELDS else _scrub_record(v, name, alias)) for k, v in value.items()}
    return value


def _free(value: Any, name: str, alias: str) -> Any:
    if isinstance(value, str):
        return scrub_text(value, name, alias)
    if isinstance(value, list):
        return [_free(v, name, alias) for v in value]
    return value


@dataclass
class WorkspaceScrub:
    """What ``scrub_workspace`` rewrote (or, with ``dry_run``, would rewrite) outside the store."""

    model_versions: list[str] = field(default_factory=list)  # registry versions whose tags and card named the person
    files: list[str] = field(default_factory=list)  # run records rewritten (evaluation.json, summary.jsonl)
    reports: list[str] = field(default_factory=list)  # HTML reports regenerated from the rewritten records
    left: list[str] = field(default_factory=list)  # files that still name the person (not Tether's to rewrite)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scrub_workspace(
    ws: Any, name: str, alias: str, *, dry_run: bool = False, rewrite_report: Callable[[Path, Path], None] | None = None
) -> WorkspaceScrub:
    """Replace ``name`` by ``alias`` outside the store: the registry (model version tags, descriptions, model
    cards) and the demo's run records (``evaluation.json``, ``summary.jsonl``), whose HTML reports are then
    regenerated by ``rewrite_report(run_dir, report_path)`` (the demo's renderer, which the caller passes: their plots
    name annotators too). Other reports that still name the person are listed."""
    out = WorkspaceScrub()
    if (Path(ws.root) / "mlflow.db").exists():
        from tether.lifecycle.registry import scrub_registry

        out.model_versions = scrub_registry(ws, lambda tags: _scrub_tags(tags, name, alias), dry_run=dry_run)
    demo_root = Path(ws.artifacts) / "demo"
    regenerate = []
    for record in sorted(demo_root.glob("*/evaluation.json")) + sorted(demo_root.glob("*/summary.jsonl")):
        text = record.read_text(encoding="utf-8")
        if name not in text:
            continue
        if record.suffix == ".jsonl":
            new = "".join(json.dumps(_scrub_record(json.loads(line), name, alias), ensure_ascii=False, default=str) + "\n" for line in text.splitlines() if line.strip())
        else:
            new = json.dumps(_scrub_record(json.loads(text), name, alias), ensure_ascii=False, default=str)
        if new != text:
            out.files.append(str(record.relative_to(ws.root)))
            if not dry_run:
                _replace(record, new)
            if record.name == "evaluation.json":
                regenerate.append(record.parent)
    for run_dir in regenerate:
        report = Path(ws.reports_dir) / f"{run_dir.name}.html"
        if report.exists():
            out.reports.append(str(report.relative_to(ws.root)))
            if not dry_run and rewrite_report is not None:
                rewrite_report(run_dir, report)
    import html

    needle = re.compile(r"(?<![\w/.@<-])" + re.escape(html.escape(name)) + r"(?![\w/.@-])")
    for path in sorted(Path(ws.reports_dir).glob("*.html")):
        if str(path.relative_to(ws.root)) not in out.reports and needle.search(re.sub(r"<[^>]*>", " ", path.read_text(encoding="utf-8", errors="replace"))):
            out.left.append(str(path.relative_to(ws.root)))
    return out


def _scrub_tags(tags: dict[str, str], name: str, alias: str) -> dict[str, str]:
    """A model version's tags with the person replaced: names in person tags, person fields in JSON tags."""
    out = {}
    for key, value in tags.items():
        if key in ("tether.approved_by", "tether.promoted_by"):
            out[key] = scrub_actor(value, name, alias)
            continue
        try:
            parsed = json.loads(value)
        except ValueError:
            out[key] = value
            continue
        if isinstance(parsed, (dict, list)):
            new = scrub_json(parsed, name, alias)
            out[key] = value if new == parsed else json.dumps(new, sort_keys=True, default=str)
        else:
            out[key] = value
    return out


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _note_purged_sets(session: Session, judgments_by_project: dict[int, int]) -> None:
    """Count the purged judgments on each set (``Project.meta["purged"]``), for `tether data list`."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for project in session.scalars(select(Project).where(Project.id.in_(list(judgments_by_project)))):
        meta = dict(project.meta or {})
        before = meta.get("purged") or {}
        meta["purged"] = {"judgments": int(before.get("judgments", 0)) + judgments_by_project[project.id], "last_at": now}
        project.meta = meta


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def purge_annotator(
    name: str,
    *,
    session: Session,
    key: bytes,
    root: Path | None = None,
    reason: str = "",
    dry_run: bool = False,
    delete_snapshot_files: bool = False,
) -> PurgeResult:
    """Delete annotator ``name``: judgments, assignments, API tokens and the account; mark dependent snapshots.

    ``key``: the workspace's pseudonym key (``Workspace.pseudonym_key()``)."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        like = session.scalars(select(User.name).where(User.name.like(f"%{_like_escape(name)}%", escape="\\")).limit(5)).all()
        raise TetherError(
            f"no annotator named {name!r}",
            fix=f"names that contain it: {', '.join(like)}" if like else "annotator names are exact; imported ones are <set>/annotator1, <set>/annotator2, ... or <set>/import",
        )
    digest = subject_key(name, key)
    alias = pseudonym(name, key)
    result = PurgeResult(subject="annotator", subject_key=digest, dry_run=dry_run, pseudonym=alias)
    per_project = dict(
        session.execute(
            select(Item.project_id, func.count()).join(Judgment, Judgment.item_id == Item.id).where(Judgment.user_id == user.id).group_by(Item.project_id)
        ).all()
    )
    dependent = _dependent_snapshots(session, select(Judgment.id).where(Judgment.user_id == user.id), per_project)
    result.deleted = {
        "judgment": session.scalar(select(func.count()).select_from(Judgment).where(Judgment.user_id == user.id)) or 0,
        "assignment": session.scalar(select(func.count()).select_from(Assignment).where(Assignment.user_id == user.id)) or 0,
        "api_token": session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user.id)) or 0,
        "user": 1,
    }
    note = f"annotator data purged ({alias}){': ' + reason if reason else ''}"
    _mark_snapshots(session, dependent, note, root, delete_snapshot_files, result)
    result.audit_events_pseudonymized = _pseudonymize(session, name, alias, dry_run)
    if dry_run:
        return result
    _note_purged_sets(session, per_project)
    # Corrections by others that superseded this annotator's judgments keep standing (supersedes_id -> NULL).
    session.execute(update(Judgment).where(Judgment.supersedes_id.in_(select(Judgment.id).where(Judgment.user_id == user.id))).values(supersedes_id=None))
    # The queue's per-item slot counts: each pending or done assignment deleted here gives its slot back.
    held = list(session.scalars(select(Assignment.item_id).where(Assignment.user_id == user.id, Assignment.state.in_(("pending", "done")))))
    session.execute(delete(Judgment).where(Judgment.user_id == user.id))
    session.execute(delete(Assignment).where(Assignment.user_id == user.id))
    for item_id in held:  # one assignment per (item, user), so one slot per item
        session.execute(update(Item).where(Item.id == item_id).values(open_slots=Item.open_slots + 1))
    session.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
    session.execute(delete(User).where(User.id == user.id))
    audit(session, "data.purge", "user", alias, subject="annotator", subject_key=digest, reason=reason, deleted=result.deleted,
          snapshots_marked=result.snapshots_marked, snapshot_files_deleted=result.snapshot_files_deleted,
          audit_events_pseudonymized=result.audit_events_pseudonymized)
    return result


def _purge_production(session: Session, condition: Any, result: PurgeResult) -> dict[int, int | None]:
    """Delete the production records matching ``condition`` and the review items made from them.

    Returns the snapshots to mark (see _dependent_snapshots): those that used a judgment of a deleted item.
    """
    result.deleted["production_record"] = session.scalar(select(func.count()).select_from(ProductionRecord).where(condition)) or 0
    review = session.execute(
        select(Item.id, Item.project_id, Item.prompt_id, Item.created_at, Item.external_id).where(Item.external_id.like("prod:%"))
    ).all()
    doomed_ids: set[int] = set()
    if review:
        ref_ids = [int(r.external_id.split(":", 1)[1]) for r in review]
        for start in range(0, len(ref_ids), 900):
            chunk = ref_ids[start : start + 900]
            doomed_ids.update(session.scalars(select(ProductionRecord.id).where(ProductionRecord.id.in_(chunk), condition)))
    items = [r for r in review if int(r.external_id.split(":", 1)[1]) in doomed_ids]
    item_ids = [r.id for r in items]
    result.deleted["review_item"] = len(item_ids)
    result.deleted["judgment"] = 0
    dependent: dict[int, int | None] = {}
    projects = {r.project_id for r in items}
    per_project: dict[int, int] = {}
    for start in range(0, len(item_ids), 900):
        chunk = item_ids[start : start + 900]
        for project_id, n in session.execute(
            select(Item.project_id, func.count()).join(Judgment, Judgment.item_id == Item.id).where(Item.id.in_(chunk)).group_by(Item.project_id)
        ).all():
            per_project[project_id] = per_project.get(project_id, 0) + n
        for snapshot_id, n in _dependent_snapshots(session, select(Judgment.id).where(Judgment.item_id.in_(chunk)), projects).items():
            dependent[snapshot_id] = None if n is None else (dependent.get(snapshot_id) or 0) + n
    result.deleted["judgment"] = sum(per_project.values())
    if result.dry_run:
        return dependent
    _note_purged_sets(session, per_project)
    completion_ids = set()
    for start in range(0, len(item_ids), 900):
        chunk = item_ids[start : start + 900]
        completion_ids.update(session.scalars(select(ItemCompletion.completion_id).where(ItemCompletion.item_id.in_(chunk))))
        session.execute(delete(Judgment).where(Judgment.item_id.in_(chunk)))
        session.execute(delete(Assignment).where(Assignment.item_id.in_(chunk)))
        session.execute(delete(ItemCompletion).where(ItemCompletion.item_id.in_(chunk)))
        session.execute(delete(Item).where(Item.id.in_(chunk)))
    # Prompts and completions go too, unless another item still shows them (the same text from someone else).
    used_completions = set(session.scalars(select(ItemCompletion.completion_id).where(ItemCompletion.completion_id.in_(list(completion_ids))))) if completion_ids else set()
    gone_completions = sorted(completion_ids - used_completions)
    prompt_ids = {r.prompt_id for r in items}
    if gone_completions:
        prompt_ids.update(session.scalars(select(Completion.prompt_id).where(Completion.id.in_(gone_completions))))
        session.execute(delete(Completion).where(Completion.id.in_(gone_completions)))
    used_prompts = set(session.scalars(select(Item.prompt_id).where(Item.prompt_id.in_(list(prompt_ids))))) if prompt_ids else set()
    used_prompts |= set(session.scalars(select(Completion.prompt_id).where(Completion.prompt_id.in_(list(prompt_ids))))) if prompt_ids else set()
    gone_prompts = sorted(prompt_ids - used_prompts)
    if gone_prompts:
        session.execute(delete(Prompt).where(Prompt.id.in_(gone_prompts)))
    result.deleted["completion"] = len(gone_completions)
    result.deleted["prompt"] = len(gone_prompts)
    session.execute(delete(ProductionRecord).where(condition))
    return dependent


def purge_user_ref(
    user_ref: str,
    *,
    session: Session,
    key: bytes,
    root: Path | None = None,
    reason: str = "",
    dry_run: bool = False,
    delete_snapshot_files: bool = False,
) -> PurgeResult:
    """Delete an end user's production records (``user_ref``) and review items made from them."""
    if not user_ref:
        raise TetherError("--user-ref is empty", fix="give the user reference as logged in the production records")
    digest = subject_key(user_ref, key)
    result = PurgeResult(subject="user_ref", subject_key=digest, dry_run=dry_run)
    dependent = _purge_production(session, ProductionRecord.user_ref == user_ref, result)
    if not dry_run and result.deleted["production_record"] == 0:
        raise TetherError(f"no production records with user_ref {user_ref!r}", fix="check the reference (it is matched exactly)")
    note = f"end-user data purged ({pseudonym(user_ref, key)}){': ' + reason if reason else ''}"
    _mark_snapshots(session, dependent, note, root, delete_snapshot_files, result)
    if not dry_run:
        audit(session, "data.purge", "production_record", None, subject="user_ref", subject_key=digest, reason=reason,
              deleted=result.deleted, snapshots_marked=result.snapshots_marked, snapshot_files_deleted=result.snapshot_files_deleted)
    return result


def purge_expired(
    retention_days: float,
    *,
    session: Session,
    root: Path | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    delete_snapshot_files: bool = False,
) -> PurgeResult:
    """Delete production records older than ``retention_days`` (and review items made from them)."""
    if not retention_days or retention_days <= 0:
        raise TetherError(
            "no retention period is set",
            fix="set retention_days under [governance] in tether.toml (e.g. retention_days = 365)",
        )
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=retention_days)
    if session.get_bind().dialect.name == "sqlite":
        cutoff_db = cutoff.astimezone(timezone.utc).replace(tzinfo=None)
    else:
        cutoff_db = cutoff
    result = PurgeResult(subject="expired", subject_key=None, dry_run=dry_run)
    dependent = _purge_production(session, ProductionRecord.ts < cutoff_db, result)
    note = f"production records older than {retention_days:g} days purged (before {cutoff:%Y-%m-%d})"
    _mark_snapshots(session, dependent, note, root, delete_snapshot_files, result)
    if not dry_run:
        audit(session, "data.purge", "production_record", None, subject="expired", retention_days=retention_days,
              cutoff=cutoff.isoformat(), deleted=result.deleted, snapshots_marked=result.snapshots_marked)
    return result


def retention_days(section: dict[str, Any]) -> float | None:
    """``retention_days`` from the ``[governance]`` section of tether.toml (None when unset or 0)."""
    value = section.get("retention_days")
    if value in (None, 0, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TetherError(f"[governance] retention_days must be a positive number of days, got {value!r}", fix="edit tether.toml")
    return float(value)


# ---------------------------------------------------------------------------------------------------------------
# Audit export
# ---------------------------------------------------------------------------------------------------------------

AUDIT_FORMATS = ("jsonl", "csv")
AUDIT_FIELDS = ("id", "at", "actor", "action", "object_type", "object_id", "detail")


def export_audit(
    out: IO[str],
    *,
    session: Session,
    fmt: str = "jsonl",
    since: datetime | None = None,
    until: datetime | None = None,
    action: str | None = None,
) -> int:
    """Write the audit events (oldest first) to ``out`` as JSONL or CSV (``detail`` as JSON text); the count."""
    if fmt not in AUDIT_FORMATS:
        raise TetherError(f"unknown audit format {fmt!r}", fix=f"use one of: {', '.join(AUDIT_FORMATS)}")
    sqlite = session.get_bind().dialect.name == "sqlite"

    def db_time(dt: datetime) -> datetime:
        dt = dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
        return dt.astimezone(timezone.utc).replace(tzinfo=None) if sqlite else dt

    query = select(AuditEvent).order_by(AuditEvent.at, AuditEvent.id).execution_options(yield_per=2000)
    if since is not None:
        query = query.where(AuditEvent.at >= db_time(since))
    if until is not None:
        query = query.where(AuditEvent.at < db_time(until))
    if action:
        query = query.where(AuditEvent.action.like(f"{_like_escape(action)}%", escape="\\"))
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(AUDIT_FIELDS)
    count = 0
    for event in session.scalars(query):
        at = as_utc(event.at).isoformat()
        if writer is not None:
            writer.writerow([event.id, at, event.actor, event.action, event.object_type, event.object_id or "", json.dumps(event.detail, ensure_ascii=False, default=str)])
        else:
            out.write(json.dumps({"id": event.id, "at": at, "actor": event.actor, "action": event.action, "object_type": event.object_type,
                                  "object_id": event.object_id, "detail": event.detail}, ensure_ascii=False, default=str) + "\n")
        count += 1
    return count
