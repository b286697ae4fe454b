"""The store's tables (SQLAlchemy 2.0 typed mappings).

Raw human input is immutable: a ``Judgment`` is never updated in place; a correction is a new row whose
``supersedes_id`` points at the row it replaces. Everything derived (snapshots, QC figures) can be recomputed.
The schema is created and upgraded by the Alembic migrations in ``migrations/``, never by ``create_all``.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime | None) -> datetime | None:
    """A stored datetime with its zone: SQLite hands them back naive, and the store writes UTC only."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


# Roles a user can have. "external" marks annotators who come from imported data (no login).
ROLES = ("admin", "reviewer", "annotator", "external")
# What an item asks for; the value of its judgments follows tether.feedback.judgments.
ITEM_KINDS = ("pairwise", "ranking", "rating", "thumbs", "prompt")
ASSIGNMENT_STATES = ("pending", "done", "skipped", "expired")


class Project(Base):
    """A feedback campaign or an imported feedback set (``tether data import --name`` makes one)."""

    __tablename__ = "project"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(40), default="web")  # "web" or "import:<format>"
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    assignment_ttl_s: Mapped[int] = mapped_column(Integer, default=3600)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Guideline(Base):
    """One version of a project's written guidelines (markdown). Versions only grow."""

    __tablename__ = "guideline"
    __table_args__ = (UniqueConstraint("project_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LabelSchema(Base):
    """One version of the questions asked (see tether.feedback.judgments for the spec's shape)."""

    __tablename__ = "label_schema"
    __table_args__ = (UniqueConstraint("project_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def name_key(name: str) -> str:
    """A login name as compared: NFKC-normalized and case-folded (``ＡＤＭＩＮ１``, ``ADMIN1`` and ``admin1`` are one)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def _default_name_key(context: Any) -> str | None:
    params = context.get_current_parameters()
    return None if params.get("role") == "external" else name_key(params["name"])


class User(Base):
    """An annotator, reviewer or admin; imported annotators are role "external" and cannot log in.

    ``name_key`` is the login name NFKC-normalized and case-folded (tether.store.accounts.name_key), unique among login
    accounts (migration 0004), so ``ADMIN1`` cannot sit beside ``admin1``. Imported annotators have none: their
    names come from the data as they are.
    """

    __tablename__ = "user"
    __table_args__ = (Index("ux_user_name_key", "name_key", unique=True),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    name_key: Mapped[str | None] = mapped_column(String(200), default=_default_name_key)
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# What an API token may do: "full" acts with its holder's role; "annotate" only takes items and answers them.
TOKEN_SCOPES = ("full", "annotate")


class ApiToken(Base):
    """A bearer token for the JSON API; only its sha256 is stored. It ends at ``expires_at`` (a token without one,
    which only a hand-made row can be, is refused) or when revoked."""

    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    scope: Mapped[str] = mapped_column(String(20), default="full", server_default="full")
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # Who minted it ("user:<admin>", "cli:<os user>"): an admin's token for someone else is the admin's act.
    issued_by: Mapped[str | None] = mapped_column(String(200), default=None)


class WebSession(Base):
    """A signed-in browser. The cookie carries a random id; only its sha256 is stored, so a copy of the table
    opens no session. Logout, a new password, a role change and deactivation delete the user's rows."""

    __tablename__ = "web_session"
    id: Mapped[int] = mapped_column(primary_key=True)
    id_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    address: Mapped[str | None] = mapped_column(String(64), default=None)


class LoginThrottle(Base):
    """Failed sign-ins per key ("account:<keyed hash of the name>" or "address:<client address>"), shared by every
    worker and host on the store (tether.app.throttle)."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Prompt(Base):
    """A prompt: plain text, and the chat messages when it came as a conversation."""

    __tablename__ = "prompt"
    __table_args__ = (UniqueConstraint("project_id", "content_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    messages: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    content_hash: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(200), default=None)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Completion(Base):
    """A model's (or a person's) answer to a prompt, with which model made it and how."""

    __tablename__ = "completion"
    __table_args__ = (UniqueConstraint("prompt_id", "content_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    messages: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    content_hash: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    gen_settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Item(Base):
    """What an annotator sees: a prompt with 1..k completions (in ``ItemCompletion`` order)."""

    __tablename__ = "item"
    __table_args__ = (
        # The queue's lookups (migration 0002): open ordinary items, and gold items, of a project in id order.
        Index("ix_item_open", "project_id", "is_gold", "id", sqlite_where=text("open_slots > 0"), postgresql_where=text("open_slots > 0")),
        Index("ix_item_project_gold", "project_id", "is_gold", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_value: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    external_id: Mapped[str | None] = mapped_column(String(200), default=None)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The project's overlap minus the item's pending and done assignments, kept by tether.store.campaigns in the
    # transaction that changes either (gold items keep it too, though the queue ignores it for them).
    open_slots: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    completions: Mapped[list[ItemCompletion]] = relationship(
        order_by="ItemCompletion.position", cascade="all, delete-orphan", passive_deletes=True
    )


class ItemCompletion(Base):
    """The completions of an item, in their canonical order (position 0 is "A")."""

    __tablename__ = "item_completion"
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    completion_id: Mapped[int] = mapped_column(ForeignKey("completion.id", ondelete="CASCADE"), index=True)


class Assignment(Base):
    """An item given to one annotator. Never twice to the same annotator; blind to others' answers."""

    __tablename__ = "assignment"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id"),
        Index("ix_assignment_user_state", "user_id", "state"),
        Index("ix_assignment_state_expires", "state", "expires_at"),  # pending assignments whose time ran out
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(20), default="pending")
    # The order in which the completions were shown: a permutation of item positions (randomized A/B order).
    shown_order: Mapped[list[Any]] = mapped_column(JSON, default=list)
    skip_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Judgment(Base):
    """One annotator's answers to one item. Immutable: corrections are new rows that supersede old ones.

    ``value`` holds the answer in item positions (not shown positions); see tether.feedback.judgments for its shape per kind.
    """

    __tablename__ = "judgment"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    assignment_id: Mapped[int | None] = mapped_column(ForeignKey("assignment.id", ondelete="SET NULL"), default=None)
    kind: Mapped[str] = mapped_column(String(20))
    value: Mapped[dict[str, Any]] = mapped_column()
    shown_order: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    guideline_version: Mapped[int | None] = mapped_column(Integer, default=None)
    schema_version: Mapped[int | None] = mapped_column(Integer, default=None)
    time_spent_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    source: Mapped[str] = mapped_column(String(20), default="web")  # web | api | import | sim
    supersedes_id: Mapped[int | None] = mapped_column(
        ForeignKey("judgment.id", ondelete="SET NULL"), unique=True, default=None
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Snapshot(Base):
    """A frozen, aggregated training set written as JSONL in the workspace, stamped with a sha256 digest."""

    __tablename__ = "snapshot"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("project.id", ondelete="SET NULL"), index=True)
    aggregate: Mapped[str] = mapped_column(String(40))
    filters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    qc: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    path: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    row_count: Mapped[int] = mapped_column(Integer)
    # Set when data behind the snapshot was purged (governance): the file may no longer be used for training.
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    purge_note: Mapped[str | None] = mapped_column(Text, default=None)
    # True when the judgments it used are recorded in ``snapshot_judgment`` (every snapshot made since migration
    # 0003); older snapshots have no record, and a purge marks them whenever their set lost judgments.
    judgments_recorded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SnapshotJudgment(Base):
    """One judgment a snapshot used (migration 0003): the lineage judgments -> snapshots -> models.

    A purge follows it from a person's judgments to the snapshots they shaped, whatever their timestamps say. The
    rows go when either side is deleted; a snapshot's ``counts["judgments"]`` keeps how many it used.
    """

    __tablename__ = "snapshot_judgment"
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("snapshot.id", ondelete="CASCADE"), primary_key=True)
    judgment_id: Mapped[int] = mapped_column(ForeignKey("judgment.id", ondelete="CASCADE"), primary_key=True, index=True)


class AuditEvent(Base):
    """Who did what to which object, when. Written for every write through the CLI, web app and API."""

    __tablename__ = "audit_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))  # "user:<name>", "cli:<os user>", "api:<name>"
    action: Mapped[str] = mapped_column(String(80))
    object_type: Mapped[str] = mapped_column(String(40))
    object_id: Mapped[str | None] = mapped_column(String(200), default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ProductionRecord(Base):
    """A logged production interaction, for monitoring (``tether monitor ingest``)."""

    __tablename__ = "production_record"
    __table_args__ = (Index("ix_production_record_ts", "ts"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    prompt: Mapped[str] = mapped_column(Text)
    completion: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(200), default=None)
    user_ref: Mapped[str | None] = mapped_column(String(200), default=None)
    feedback: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    reward: Mapped[float | None] = mapped_column(Float, default=None)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
