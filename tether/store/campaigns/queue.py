"""The assignment queue: which item an annotator gets next, and the slots that bound each item's overlap.

Queue rules (``next_assignment``):
- each item keeps ``open_slots`` = overlap minus its pending and done assignments, changed in the same transaction
  as the assignment (made, answered late, skipped, expired, taken back) and when the overlap changes (migration
  0002 computed it for existing data); "next item" is then one lookup in a partial index of items with open slots;
- an annotator with a pending assignment in the project gets it back (resume), renewed if its time ran out: a
  pending assignment holds its slot until a "next item" request of anyone marks it expired (``release_overdue``),
  which gives the slot back to the queue; an annotator whose assignment expired takes it back (next item or a late
  answer) while its item still has a free slot, else the late answer is refused;
- otherwise a new item they have never been given, with a free slot, oldest (lowest id) first;
- gold items ignore overlap and are mixed in deterministically: the n-th item an annotator receives is gold when
  ``gold_seen < floor(n * gold_rate)``;
- race-free: SQLite runs every transaction under ``BEGIN IMMEDIATE`` (one writer at a time); on PostgreSQL the
  annotator's row is locked first (two tabs of one person queue), candidate items are taken with
  ``FOR UPDATE SKIP LOCKED`` and a slot is taken by ``UPDATE ... SET open_slots = open_slots - 1 WHERE
  open_slots > 0`` (atomic on the row), so an item never exceeds ``overlap``; ``unique(item_id, user_id)`` backs
  "never twice to one".
"""

from __future__ import annotations

import math
import random
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, exists, func, literal_column, or_, select, update
from sqlalchemy.orm import Session

from tether.errors import Forbidden
from tether.store.tables import Assignment, Item, ItemCompletion, Project, User, as_utc, utcnow

_rng = random.Random()


def _expired(assignment: Assignment, now: datetime) -> bool:
    expires = as_utc(assignment.expires_at)
    return expires is not None and expires <= now


# The hot statements of the queue, built once: building a statement and computing its cache key cost more CPU than
# running it on SQLite. Values come as bind parameters at execution. Slot counts change through Core statements on
# the item table (no ORM bookkeeping); nothing here reads ``Item.open_slots`` back from a loaded object.
_ITEMS = Item.__table__


_NOW = bindparam("now", type_=Assignment.__table__.c.expires_at.type)


_LOCK_USER = select(User.id).where(User.id == bindparam("user_id")).with_for_update()


_PENDING_READ = (
    select(Assignment)
    .where(
        Assignment.user_id == bindparam("user_id"),
        Assignment.state == "pending",
        Assignment.item_id.in_(select(Item.id).where(Item.project_id == bindparam("project_id"))),
    )
    .order_by(Assignment.id)
    .limit(1)
)


_PENDING = _PENDING_READ.with_for_update()


# One of the annotator's expired assignments in the project whose item has a free slot again (or is gold).
_LAPSED = (
    select(Assignment, Item.is_gold)
    .join(Item, Item.id == Assignment.item_id)
    .where(
        Assignment.user_id == bindparam("user_id"),
        Assignment.state == "expired",
        Item.project_id == bindparam("project_id"),
        or_(Item.is_gold.is_(True), Item.open_slots > 0),
    )
    .order_by(Assignment.id)
    .limit(1)
    .with_for_update(of=Assignment)
)


_SEEN = (
    select(func.count(), func.coalesce(func.sum(case((Item.is_gold.is_(True), 1), else_=0)), 0))
    .select_from(Assignment)
    .join(Item, Item.id == Assignment.item_id)
    .where(Assignment.user_id == bindparam("user_id"), Item.project_id == bindparam("project_id"))
)


# Pending assignments whose time ran out, any project (index on state, expires_at); skipped when another
# transaction holds them (their owner is submitting).
_OVERDUE = (
    select(Assignment.id, Assignment.item_id)
    .where(Assignment.state == "pending", Assignment.expires_at <= _NOW)
    .limit(200)
    .with_for_update(skip_locked=True)
)


# Take a free slot (ordinary items: only if one is left, atomically), hold one (gold items ignore overlap), give back.
_TAKE_SLOT = update(_ITEMS).where(_ITEMS.c.id == bindparam("item_id"), _ITEMS.c.open_slots > 0).values(open_slots=_ITEMS.c.open_slots - 1)


_HOLD_SLOT = update(_ITEMS).where(_ITEMS.c.id == bindparam("item_id")).values(open_slots=_ITEMS.c.open_slots - 1)


_FREE_SLOTS = update(_ITEMS).where(_ITEMS.c.id == bindparam("item_id")).values(open_slots=_ITEMS.c.open_slots + bindparam("n"))


def take_slot(session: Session, item_id: int, gold: bool) -> bool:
    """Count one more holder of the item's slots; False (nothing changed) when an ordinary item is full."""
    result = session.execute(_HOLD_SLOT if gold else _TAKE_SLOT, {"item_id": item_id})
    return result.rowcount == 1


def free_slot(session: Session, item_id: int, n: int = 1) -> None:
    session.execute(_FREE_SLOTS, {"item_id": item_id, "n": n})


def release_overdue(session: Session, *, now: datetime | None = None) -> int:
    """Mark pending assignments whose time ran out as expired and give their slots back; returns how many.

    A pending assignment holds its slot until this runs (on every "next item" request), so its owner can come back
    to it until someone else needs the slot. At most 200 per call (the rest on the next calls); items are updated in
    id order so that two sweeping transactions on PostgreSQL never wait on each other in a cycle.
    """
    rows = session.execute(_OVERDUE, {"now": now or utcnow()}).all()
    if not rows:
        return 0
    # An ORM update: assignments already loaded in this session see their new state too.
    session.execute(update(Assignment).where(Assignment.id.in_([r.id for r in rows])).values(state="expired"))
    per_item: dict[int, int] = {}
    for row in rows:
        per_item[row.item_id] = per_item.get(row.item_id, 0) + 1
    for item_id in sorted(per_item):
        free_slot(session, item_id, per_item[item_id])
    return len(rows)


def recount_open_slots(session: Session, *, project_id: int | None = None) -> None:
    """Compute ``Item.open_slots`` from the assignments as stored (all items, or one project's).

    The queue keeps the count itself; call this after changing assignments by other means (e.g. deleting a
    user's assignments when purging their data).
    """
    holders = (
        select(func.count()).select_from(Assignment)
        .where(Assignment.item_id == _ITEMS.c.id, Assignment.state.in_(("pending", "done")))
        .scalar_subquery()
    )
    overlap = select(Project.overlap).where(Project.id == _ITEMS.c.project_id).scalar_subquery()
    statement = update(_ITEMS).values(open_slots=overlap - holders)
    if project_id is not None:
        statement = statement.where(_ITEMS.c.project_id == project_id)
    session.execute(statement)


def _candidates(gold: bool, tried: list[int], lock: bool = True) -> Any:
    """Items this annotator was never given, oldest first; ordinary ones only with a free slot.

    Ordinary items are read from the partial index ``ix_item_open`` (items with open slots), so the lookup does
    not grow with the number of full items. The condition is written as the index's literal ``open_slots > 0``:
    SQLite and PostgreSQL use a partial index only when the query states its condition, not a bound parameter.
    """
    never_given = ~exists().where(Assignment.item_id == Item.id, Assignment.user_id == bindparam("user_id"))
    n_completions = select(func.count()).select_from(ItemCompletion).where(ItemCompletion.item_id == Item.id).correlate(Item).scalar_subquery()
    query = select(Item.id, n_completions).where(Item.project_id == bindparam("project_id"), Item.is_gold == gold, never_given)
    if not gold:
        query = query.where(Item.open_slots > literal_column("0"))
    if tried:
        query = query.where(Item.id.not_in(tried))
    # Ordered by the index's own columns (the same order as by id, the first two being fixed): ordered by id alone,
    # PostgreSQL walked the primary key past every full item (15,000 full of 20,000: 17 ms against 0.5 ms).
    query = query.order_by(Item.project_id, Item.is_gold, Item.id).limit(1)
    return query.with_for_update(skip_locked=True, of=Item) if lock else query


_CANDIDATE = {gold: _candidates(gold, []) for gold in (True, False)}


# PostgreSQL: how often, and how long, to wait for candidates that other transactions hold (see next_assignment).
HELD_RETRIES = 25


HELD_WAIT_S = 0.004


def next_assignment(
    session: Session, *, project: Project, user: User, now: datetime | None = None, rng: random.Random | None = None
) -> Assignment | None:
    """The annotator's next assignment in ``project`` (their pending one, or a new one); None when done."""
    now = now or utcnow()
    rng = rng or _rng
    params = {"user_id": user.id, "project_id": project.id, "now": now}
    renewed = now + timedelta(seconds=project.assignment_ttl_s)
    if not _serialized(session):
        # Two requests of one annotator (two tabs) queue here, so one person never holds two new items at once.
        session.execute(_LOCK_USER, params)
    # ALGO LOGIC: resume the pending assignment (it holds its slot until swept), else take back an expired one whose
    # slot is free, else release overdue assignments and take the oldest open item never given to this annotator.
    assignment = session.scalars(_PENDING, params).first()
    if assignment is not None:
        if _expired(assignment, now):
            assignment.expires_at = renewed
        return assignment
    lapsed = session.execute(_LAPSED, params).first()
    if lapsed is not None and take_slot(session, lapsed[0].item_id, lapsed[1]):
        assignment = lapsed[0]
        assignment.state, assignment.expires_at = "pending", renewed
        return assignment
    release_overdue(session, now=now)

    want_gold = False
    if project.gold_rate > 0:
        seen_total, seen_gold = session.execute(_SEEN, params).one()
        want_gold = seen_gold < math.floor((seen_total + 1) * project.gold_rate + 1e-9)

    tried: list[int] = []
    for gold in ([True, False] if want_gold else [False]):
        waits = 0
        for _attempt in range(50 + HELD_RETRIES):  # bounded: each round assigns, rules one item out, or waits
            query = _candidates(gold, tried) if tried else _CANDIDATE[gold]
            found = session.execute(query, params).first()
            if found is None:
                # SKIP LOCKED passes over items whose row another transaction holds for a moment (taking one of
                # their slots). Such an item may still have a free slot: "nothing left" would be false (it sent
                # annotators away while work remained), so wait briefly while the plain read still shows one.
                # No blocking row lock is taken, so two waiting annotators cannot deadlock.
                if _serialized(session) or waits >= HELD_RETRIES or session.execute(_candidates(gold, tried, lock=False), params).first() is None:
                    break
                waits += 1
                time.sleep(HELD_WAIT_S * waits)
                continue
            item_id, n = found
            # Atomic: on PostgreSQL the row may have filled up since the candidate was read.
            if not take_slot(session, item_id, gold):
                tried.append(item_id)
                continue
            n = n or 1
            assignment = Assignment(
                item_id=item_id, user_id=user.id, state="pending", shown_order=rng.sample(range(n), n), created_at=now, expires_at=renewed,
            )
            session.add(assignment)
            session.flush()
            return assignment
    return None


def pending_assignment(session: Session, *, project: Project, user: User) -> Assignment | None:
    """The annotator's pending assignment in ``project``, read only (for a page that shows it: a GET changes
    nothing); ``next_assignment`` is what takes, resumes and renews assignments."""
    return session.scalars(_PENDING_READ, {"user_id": user.id, "project_id": project.id}).first()


def _serialized(session: Session) -> bool:
    """True on SQLite, where every transaction holds the write lock from its start (BEGIN IMMEDIATE, see db.py)."""
    return session.get_bind().dialect.name == "sqlite"


_ASSIGNMENT = select(Assignment).where(Assignment.id == bindparam("assignment_id"))


_ASSIGNMENT_LOCKED = _ASSIGNMENT.with_for_update()


ITEM_AND_PROJECT = select(Item, Project).join(Project, Project.id == Item.project_id).where(Item.id == bindparam("item_id"))


def own_assignment(session: Session, *, assignment_id: int, user: User, lock: bool = False) -> Assignment:
    """The user's assignment; someone else's or a missing one is the same 403 (nothing leaks)."""
    assignment = session.scalar(_ASSIGNMENT_LOCKED if lock else _ASSIGNMENT, {"assignment_id": assignment_id})
    if assignment is None or assignment.user_id != user.id:
        raise Forbidden(f"assignment {assignment_id} is not yours", fix="ask for your next item")
    return assignment
