"""Judgments: the task an annotator sees, submitting, skipping and correcting (never an update in place), and the
review of an item (all its judgments, adjudication, gold).

A judgment's ``value`` is stored in item positions (see tether.feedback.judgments); the order the annotator saw is
stored beside it as ``shown_order`` so that position bias can be measured and removed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from tether.checks.inputs import require_storable
from tether.errors import Conflict, Forbidden, NotFound, TetherError
from tether.store.campaigns.projects import (
    MAX_SKIP_REASON_CHARS,
    check_value,
    current_guideline,
    current_schema,
    schema_version,
)
from tether.store.campaigns.queue import ITEM_AND_PROJECT, free_slot, own_assignment, take_slot
from tether.store.db import audit
from tether.store.tables import (
    Assignment,
    Completion,
    Guideline,
    Item,
    ItemCompletion,
    Judgment,
    LabelSchema,
    Prompt,
    User,
    as_utc,
    utcnow,
)

_IN_FORCE = (
    select(
        LabelSchema.version,
        LabelSchema.spec,
        select(func.max(Guideline.version)).where(Guideline.project_id == bindparam("project_id")).scalar_subquery(),
    )
    .where(LabelSchema.project_id == bindparam("project_id"))
    .order_by(LabelSchema.version.desc())
    .limit(1)
)


_TASK_ITEM = (
    select(Item.id, Item.project_id, Item.kind, Prompt.text, Prompt.messages)
    .join(Prompt, Prompt.id == Item.prompt_id)
    .where(Item.id == bindparam("item_id"))
)


_TASK_COMPLETIONS = (
    select(ItemCompletion.position, Completion.text, Completion.messages)
    .join(Completion, Completion.id == ItemCompletion.completion_id)
    .where(ItemCompletion.item_id == bindparam("item_id"))
)


def _in_force(session: Session, project_id: int) -> tuple[int, dict[str, Any], int | None]:
    """(schema version, schema spec, guideline version) in force, in one statement."""
    row = session.execute(_IN_FORCE, {"project_id": project_id}).first()
    if row is None:
        raise TetherError(f"project {project_id} has no label schema", fix="imported feedback sets cannot be annotated; create a project")
    return row[0], row[1], row[2]


def task_view(session: Session, assignment: Assignment, with_guideline: bool = False) -> dict[str, Any]:
    """What the annotator sees: the prompt and the completions in the shown order, with the versions in force
    (and the guideline itself under ``"guideline"`` when ``with_guideline``)."""
    item_id, project_id, kind, prompt_text, prompt_messages = session.execute(_TASK_ITEM, {"item_id": assignment.item_id}).one()
    rows = session.execute(_TASK_COMPLETIONS, {"item_id": item_id}).all()
    by_position = {position: (text, messages) for position, text, messages in rows}
    order = list(assignment.shown_order) or sorted(by_position)
    schema_version_number, spec, guideline_version = _in_force(session, project_id)
    return {
        "assignment_id": assignment.id,
        "item_id": item_id,
        "project_id": project_id,
        "kind": kind,
        "prompt": {"text": prompt_text, "messages": prompt_messages},
        "completions": [{"position": pos, "text": by_position[pos][0], "messages": by_position[pos][1]} for pos in order],
        "shown_order": order,
        "expires_at": as_utc(assignment.expires_at),
        "guideline_version": guideline_version,
        "schema_version": schema_version_number,
        "schema": spec,
        "guideline": current_guideline(session, project_id) if with_guideline else None,
    }


def submit_judgment(
    session: Session,
    *,
    assignment_id: int,
    user: User,
    value: dict[str, Any],
    time_spent_ms: int | None = None,
    guideline_version: int | None = None,
    schema_version_number: int | None = None,
    source: str = "web",
    max_answer_chars: int = 20_000,
    now: datetime | None = None,
    actor: str | None = None,
) -> Judgment:
    """Record the annotator's answer to their assignment: once, validated, immutable, with the versions in force.

    ``time_spent_ms`` (what the page measured) is clamped to the time since the assignment was made.
    """
    now = now or utcnow()
    assignment = own_assignment(session, assignment_id=assignment_id, user=user, lock=True)
    if assignment.state == "done":
        raise Conflict(f"assignment {assignment_id} was answered already", fix="a correction goes through the judgment's correct call")
    if assignment.state not in ("pending", "expired"):
        raise Conflict(f"assignment {assignment_id} is {assignment.state}", fix="ask for your next item")
    item, project = session.execute(ITEM_AND_PROJECT, {"item_id": assignment.item_id}).one()
    # A pending assignment holds its slot even past its time; an expired one gave it back and takes it again if free.
    if assignment.state == "expired" and not take_slot(session, item.id, item.is_gold):
        raise Conflict(f"assignment {assignment_id} expired and its item went to someone else", fix="ask for your next item")
    current_version, spec, current_guideline_version = _in_force(session, project.id)
    if schema_version_number not in (None, current_version):  # answered under an older version of the questions
        spec = schema_version(session, project.id, schema_version_number).spec
        current_version = schema_version_number
    n = len(assignment.shown_order) or 1
    value = check_value(spec, value, n, max_answer_chars)
    if guideline_version is None:
        guideline_version = current_guideline_version
    elif guideline_version != current_guideline_version and session.scalar(
        select(Guideline.id).where(Guideline.project_id == project.id, Guideline.version == guideline_version)
    ) is None:
        raise TetherError(f"project {project.id} has no guideline version {guideline_version}", fix="leave guideline_version out")
    elapsed_ms = int((now - (as_utc(assignment.created_at) or now)).total_seconds() * 1000)
    if time_spent_ms is None or time_spent_ms < 0:
        time_spent_ms = elapsed_ms
    time_spent_ms = max(0, min(int(time_spent_ms), max(elapsed_ms, 0)))
    judgment = Judgment(
        item_id=item.id, user_id=user.id, assignment_id=assignment.id, kind=item.kind, value=value,
        shown_order=list(assignment.shown_order), guideline_version=guideline_version, schema_version=current_version,
        time_spent_ms=time_spent_ms, source=source, created_at=now,
    )
    session.add(judgment)
    assignment.state = "done"
    assignment.completed_at = now
    session.flush()
    audit(session, "judgment.create", "judgment", judgment.id, actor_name=actor, item_id=item.id, assignment_id=assignment.id)
    return judgment


def skip_assignment(
    session: Session, *, assignment_id: int, user: User, reason: str, now: datetime | None = None, actor: str | None = None
) -> Assignment:
    """Give an item back with a reason; it goes to someone else, never again to this annotator."""
    reason = (reason or "").strip()
    require_storable(reason, "the skip reason")
    if not reason:
        raise TetherError("a skip needs a reason", fix="say why, e.g. 'not my expertise'")
    if len(reason) > MAX_SKIP_REASON_CHARS:
        raise TetherError(f"the skip reason has {len(reason)} characters; the limit is {MAX_SKIP_REASON_CHARS}", fix="shorten it")
    assignment = own_assignment(session, assignment_id=assignment_id, user=user, lock=True)
    if assignment.state != "pending":
        raise Conflict(f"assignment {assignment_id} is {assignment.state}", fix="ask for your next item")
    assignment.state = "skipped"
    free_slot(session, assignment.item_id)
    assignment.skip_reason = reason
    assignment.completed_at = now or utcnow()
    audit(session, "assignment.skip", "assignment", assignment.id, actor_name=actor, item_id=assignment.item_id, reason=reason)
    return assignment


def correct_judgment(
    session: Session, *, judgment_id: int, user: User, value: dict[str, Any], max_answer_chars: int = 20_000,
    source: str = "web", now: datetime | None = None, actor: str | None = None,
) -> Judgment:
    """A correction: a new judgment that supersedes the user's own earlier one (which stays, unchanged)."""
    old = session.scalar(select(Judgment).where(Judgment.id == judgment_id).with_for_update())
    if old is None or old.user_id != user.id:
        raise Forbidden(f"judgment {judgment_id} is not yours", fix="you can correct only your own judgments")
    if session.scalar(select(Judgment.id).where(Judgment.supersedes_id == old.id)) is not None:
        raise Conflict(f"judgment {judgment_id} was corrected already", fix="correct the newest judgment instead")
    item = session.get(Item, old.item_id)
    schema = current_schema(session, item.project_id)
    n = len(old.shown_order or []) or session.scalar(select(func.count()).select_from(ItemCompletion).where(ItemCompletion.item_id == item.id))
    value = check_value(schema.spec, value, n, max_answer_chars)
    guideline = current_guideline(session, item.project_id)
    new = Judgment(
        item_id=item.id, user_id=user.id, assignment_id=old.assignment_id, kind=old.kind, value=value,
        shown_order=old.shown_order, guideline_version=guideline.version if guideline else None,
        schema_version=schema.version, time_spent_ms=None, source=source, supersedes_id=old.id, created_at=now or utcnow(),
    )
    session.add(new)
    session.flush()
    audit(session, "judgment.correct", "judgment", new.id, actor_name=actor, supersedes=old.id)
    return new


def item_detail(session: Session, item_id: int) -> dict[str, Any]:
    """An item with its completions in item order and every judgment of it (for reviewers and admins)."""
    item = session.get(Item, item_id)
    if item is None:
        raise NotFound(f"no item with id {item_id}", fix="check the id")
    prompt = session.get(Prompt, item.prompt_id)
    completions = session.execute(
        select(ItemCompletion.position, Completion)
        .join(Completion, Completion.id == ItemCompletion.completion_id)
        .where(ItemCompletion.item_id == item.id)
        .order_by(ItemCompletion.position)
    ).all()
    judgments = session.execute(
        select(Judgment, User.name).join(User, User.id == Judgment.user_id).where(Judgment.item_id == item.id).order_by(Judgment.id)
    ).all()
    skips = session.execute(
        select(Assignment, User.name).join(User, User.id == Assignment.user_id).where(Assignment.item_id == item.id, Assignment.state == "skipped")
    ).all()
    return {
        "item": item,
        "prompt": prompt,
        "completions": [{"position": pos, "completion": comp} for pos, comp in completions],
        "judgments": [{"judgment": j, "user": name} for j, name in judgments],
        "skips": [{"user": name, "reason": a.skip_reason} for a, name in skips],
    }


def adjudicate(
    session: Session, *, item_id: int, reviewer: User, value: dict[str, Any], max_answer_chars: int = 20_000, actor: str | None = None
) -> Judgment:
    """A reviewer's deciding answer for an item, stored as a judgment with source "review"."""
    item = session.get(Item, item_id)
    if item is None:
        raise NotFound(f"no item with id {item_id}", fix="check the id")
    schema = current_schema(session, item.project_id)
    n = session.scalar(select(func.count()).select_from(ItemCompletion).where(ItemCompletion.item_id == item.id))
    value = check_value(schema.spec, value, n, max_answer_chars)
    guideline = current_guideline(session, item.project_id)
    judgment = Judgment(
        item_id=item.id, user_id=reviewer.id, kind=item.kind, value=value, shown_order=list(range(n)),
        guideline_version=guideline.version if guideline else None, schema_version=schema.version, source="review",
    )
    session.add(judgment)
    session.flush()
    audit(session, "judgment.adjudicate", "item", item.id, actor_name=actor, judgment_id=judgment.id)
    return judgment


def mark_gold(
    session: Session, *, item_id: int, value: dict[str, Any] | None, max_answer_chars: int = 20_000, actor: str | None = None
) -> Item:
    """Make an item gold with its correct answer (item positions), or ordinary again with ``value=None``."""
    item = session.get(Item, item_id)
    if item is None:
        raise NotFound(f"no item with id {item_id}", fix="check the id")
    if value is not None:
        schema = current_schema(session, item.project_id)
        n = session.scalar(select(func.count()).select_from(ItemCompletion).where(ItemCompletion.item_id == item.id))
        value = check_value(schema.spec, value, n, max_answer_chars)
    item.is_gold = value is not None
    item.gold_value = value
    audit(session, "item.gold" if value is not None else "item.ungold", "item", item.id, actor_name=actor, value=value)
    return item
