"""Feedback campaigns in the store: projects, versioned guidelines and label schemas, items, the assignment
queue, immutable judgments, progress. The web app, the JSON API and the CLI all write through these functions.

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

A judgment's ``value`` is stored in item positions (see tether.feedback.judgments); the order the annotator saw is stored
beside it as ``shown_order`` so that position bias can be measured and removed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, exists, func, literal_column, or_, select, update
from sqlalchemy.orm import Session

from tether.checks.inputs import find_unstorable, require_storable
from tether.data.canonical import is_messages, messages_text
from tether.data.formats import FORMAT_KEYS, SkipRecord, detect_format, parse_record
from tether.data.records import content_hash
from tether.errors import Conflict, Forbidden, NotFound, TetherError
from tether.feedback.judgments import FLAG_CATEGORIES, validate_value
from tether.store.db import audit
from tether.store.tables import (
    Assignment,
    Completion,
    Guideline,
    Item,
    ItemCompletion,
    Judgment,
    LabelSchema,
    Project,
    Prompt,
    User,
    as_utc,
    utcnow,
)

SCHEMA_KINDS = ("pairwise", "ranking", "rating")
DEFAULT_ASPECTS = ("helpfulness", "harmlessness", "honesty", "policy compliance")
MAX_RANKED = 9  # digit keys 1..9 rank the responses
MAX_FLAGS = 9  # Shift+1..9 toggle the flags
MAX_SKIP_REASON_CHARS = 500
MAX_GUIDELINE_CHARS = 200_000
_rng = random.Random()


# ---------------------------------------------------------------------------------------------------------------
# Label schemas


def normalize_schema(spec: dict[str, Any]) -> dict[str, Any]:
    """A complete, checked label schema from a partial one (defaults filled in).

    ``{"kind": "pairwise" | "ranking" | "rating", "strength": bool, "aspects": [str], "scale": [lo, hi],
    "flags": [category], "critique": bool, "rewrite": bool}``. ``strength`` applies to pairwise (much better /
    better / slightly better / tie); ``aspects`` and ``scale`` to rating (Likert per aspect).
    """
    if not isinstance(spec, dict):
        raise TetherError("the label schema must be a JSON object", fix='for example {"kind": "pairwise"}')
    require_storable(spec, "the label schema")
    unknown = set(spec) - {"kind", "strength", "aspects", "scale", "flags", "critique", "rewrite"}
    if unknown:
        raise TetherError(f"unknown label schema field(s) {sorted(unknown)}", fix="use kind, strength, aspects, scale, flags, critique, rewrite")
    kind = spec.get("kind", "pairwise")
    if kind not in SCHEMA_KINDS:
        raise TetherError(f"label schema kind must be one of {SCHEMA_KINDS}, got {kind!r}", fix="pick pairwise, ranking or rating")
    out: dict[str, Any] = {"kind": kind}
    out["strength"] = bool(spec.get("strength", kind == "pairwise")) if kind == "pairwise" else False
    if kind == "rating":
        aspects = [str(a).strip() for a in spec.get("aspects", DEFAULT_ASPECTS)]
        if not aspects or any(not a for a in aspects) or len(set(aspects)) != len(aspects):
            raise TetherError(f"rating aspects must be distinct non-empty names, got {aspects}", fix="e.g. helpfulness, harmlessness, honesty")
        scale = spec.get("scale", [1, 5])
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(isinstance(s, int) and not isinstance(s, bool) for s in scale)):
            raise TetherError(f"scale must be two integers [low, high], got {scale!r}", fix="e.g. [1, 5] or [1, 7]")
        lo, hi = scale
        if not 0 <= lo < hi <= 9:
            raise TetherError(f"scale {scale} must lie within 0..9 with low < high (one digit key per point)", fix="e.g. [1, 5] or [1, 7]")
        out["aspects"], out["scale"] = aspects, [lo, hi]
    flags = spec.get("flags", list(FLAG_CATEGORIES))
    if not isinstance(flags, list) or any(not isinstance(f, str) or not f.strip() for f in flags) or len(set(flags)) != len(flags):
        raise TetherError(f"flags must be a list of distinct category names, got {flags!r}", fix=f"e.g. {list(FLAG_CATEGORIES)}")
    if len(flags) > MAX_FLAGS:
        raise TetherError(f"at most {MAX_FLAGS} flag categories (one Shift+digit key each), got {len(flags)}", fix="merge some categories")
    out["flags"] = [f.strip() for f in flags]
    out["critique"] = bool(spec.get("critique", True))
    out["rewrite"] = bool(spec.get("rewrite", False))
    return out


def completions_for(kind: str) -> tuple[int, int]:
    """How many completions an item of ``kind`` holds: (fewest, most)."""
    return {"pairwise": (2, 2), "ranking": (2, MAX_RANKED), "rating": (1, 1)}[kind]


def check_value(spec: dict[str, Any], value: Any, n_completions: int, max_answer_chars: int) -> dict[str, Any]:
    """A judgment value checked against the schema (and tether.feedback.judgments); returns it normalized."""
    kind = spec["kind"]
    require_storable(value, "the answer")
    validate_value(kind, value, n_completions)
    allowed = {"pairwise": {"choice", "strength"}, "ranking": {"ranking", "comparisons"}, "rating": {"ratings", "scale"}}[kind]
    allowed |= {"flags", "critique", "rewrite"}
    unknown = set(value) - allowed
    if unknown:
        raise TetherError(f"unknown answer field(s) {sorted(unknown)} for a {kind} item", fix=f"use {sorted(allowed)}")
    out = dict(value)
    if kind == "pairwise":
        if spec["strength"] and out["choice"] != "tie" and out.get("strength") not in (1, 2, 3):
            raise TetherError("this project asks how much better: strength 1 (slightly), 2 (better) or 3 (much better)", fix="add strength")
        if out["choice"] == "tie":
            out["strength"] = 0 if spec["strength"] else None
        elif not spec["strength"]:
            out["strength"] = None
    elif kind == "rating":
        ratings = out["ratings"]
        if set(ratings) != set(spec["aspects"]):
            raise TetherError(f"rate exactly the aspects {spec['aspects']}, got {sorted(ratings)}", fix="give one number per aspect")
        lo, hi = spec["scale"]
        bad = {a: s for a, s in ratings.items() if s != int(s) or not lo <= s <= hi}
        if bad:
            raise TetherError(f"ratings must be whole numbers in {lo}..{hi}, got {bad}", fix=f"use {lo}..{hi}")
        out["ratings"] = {a: int(ratings[a]) for a in spec["aspects"]}
        out["scale"] = [lo, hi]
    flags = out.get("flags") or []
    unknown_flags = [f for f in flags if f not in spec["flags"]]
    if unknown_flags:
        raise TetherError(f"unknown flag(s) {unknown_flags}", fix=f"this project's flags are {spec['flags']}")
    out["flags"] = [f for f in spec["flags"] if f in flags]  # schema order, no repeats
    for field in ("critique", "rewrite"):
        text = out.get(field)
        if text in (None, ""):
            out.pop(field, None)
            continue
        if not spec[field]:
            raise TetherError(f"this project does not ask for a {field}", fix=f"leave {field} out")
        if not isinstance(text, str):
            raise TetherError(f"{field} must be text", fix=f"send {field} as a string")
        if len(text) > max_answer_chars:
            raise TetherError(f"the {field} has {len(text):,} characters; the limit is {max_answer_chars:,}", fix=f"shorten the {field}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Projects, guidelines, schemas


def _check_project_numbers(overlap: int, gold_rate: float, assignment_ttl_s: int) -> None:
    if not isinstance(overlap, int) or not 1 <= overlap <= 100:
        raise TetherError(f"overlap must be a whole number 1..100, got {overlap!r}", fix="how many different annotators judge each item")
    if not 0.0 <= gold_rate <= 0.5:
        raise TetherError(f"gold rate must lie in 0..0.5, got {gold_rate}", fix="e.g. 0.05 mixes one gold item in twenty")
    if not 60 <= assignment_ttl_s <= 7 * 24 * 3600:
        raise TetherError(f"assignment expiry must be 60 s..7 days, got {assignment_ttl_s} s", fix="e.g. 3600 (an hour)")


def _check_guideline(text: str) -> str:
    if not isinstance(text, str):
        raise TetherError("guidelines must be markdown text", fix="send the guidelines as a string")
    require_storable(text, "the guidelines")
    if len(text) > MAX_GUIDELINE_CHARS:
        raise TetherError(f"the guidelines have {len(text):,} characters; the limit is {MAX_GUIDELINE_CHARS:,}", fix="shorten them or link to a longer document")
    return text


def create_project(
    session: Session,
    *,
    name: str,
    schema: dict[str, Any],
    guidelines: str = "",
    description: str = "",
    overlap: int = 1,
    gold_rate: float = 0.0,
    assignment_ttl_s: int = 3600,
    actor: str | None = None,
) -> Project:
    """A new feedback campaign with guideline version 1 and label schema version 1."""
    require_storable({"name": name, "description": description}, "")
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise TetherError("a project needs a name of 1..200 characters", fix="choose a short name, e.g. helpfulness-v1")
    _check_project_numbers(overlap, gold_rate, assignment_ttl_s)
    spec = normalize_schema(schema)
    _check_guideline(guidelines)
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise Conflict(f"a project named {name!r} exists already", fix="choose another name")
    project = Project(
        name=name, description=description or "", source="web", overlap=overlap, gold_rate=float(gold_rate),
        assignment_ttl_s=assignment_ttl_s, meta={"kind": spec["kind"]},
    )
    session.add(project)
    session.flush()
    session.add(Guideline(project_id=project.id, version=1, text=guidelines))
    session.add(LabelSchema(project_id=project.id, version=1, spec=spec))
    audit(session, "project.create", "project", project.id, actor_name=actor, name=name, overlap=overlap, gold_rate=gold_rate, schema=spec)
    session.flush()
    return project


def get_project(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"no project with id {project_id}", fix="list the projects to find its id")
    return project


def project_kind(session: Session, project: Project) -> str:
    return current_schema(session, project.id).spec["kind"]


def update_project(
    session: Session, *, project: Project, overlap: int | None = None, gold_rate: float | None = None,
    assignment_ttl_s: int | None = None, description: str | None = None, actor: str | None = None,
) -> Project:
    new = {
        "overlap": project.overlap if overlap is None else overlap,
        "gold_rate": project.gold_rate if gold_rate is None else float(gold_rate),
        "assignment_ttl_s": project.assignment_ttl_s if assignment_ttl_s is None else assignment_ttl_s,
    }
    _check_project_numbers(**new)
    require_storable(description, "the description")
    changed = {k: v for k, v in new.items() if getattr(project, k) != v}
    if description is not None and description != project.description:
        changed["description"] = description
    if "overlap" in changed:  # every item's free slots move with the overlap (an item may go below zero: full)
        session.execute(
            update(Item.__table__).where(Item.__table__.c.project_id == project.id)
            .values(open_slots=Item.__table__.c.open_slots + (changed["overlap"] - project.overlap))
        )
    for key, value in changed.items():
        setattr(project, key, value)
    if changed:
        audit(session, "project.update", "project", project.id, actor_name=actor, **changed)
    return project


def current_guideline(session: Session, project_id: int) -> Guideline | None:
    return session.scalar(select(Guideline).where(Guideline.project_id == project_id).order_by(Guideline.version.desc()).limit(1))


def current_schema(session: Session, project_id: int) -> LabelSchema:
    schema = session.scalar(select(LabelSchema).where(LabelSchema.project_id == project_id).order_by(LabelSchema.version.desc()).limit(1))
    if schema is None:
        raise TetherError(f"project {project_id} has no label schema", fix="imported feedback sets cannot be annotated; create a project")
    return schema


def schema_version(session: Session, project_id: int, version: int | None) -> LabelSchema:
    if version is None:
        return current_schema(session, project_id)
    schema = session.scalar(select(LabelSchema).where(LabelSchema.project_id == project_id, LabelSchema.version == version))
    if schema is None:
        raise TetherError(f"project {project_id} has no label schema version {version}", fix="leave schema_version out to use the current one")
    return schema


def add_guideline_version(session: Session, *, project: Project, text: str, actor: str | None = None) -> Guideline:
    """A new version of the guidelines; earlier versions are kept (judgments name the one they were made under)."""
    _check_guideline(text)
    latest = current_guideline(session, project.id)
    if latest is not None and latest.text == text:
        return latest
    guideline = Guideline(project_id=project.id, version=(latest.version if latest else 0) + 1, text=text)
    session.add(guideline)
    session.flush()
    audit(session, "guideline.version", "project", project.id, actor_name=actor, version=guideline.version, chars=len(text))
    return guideline


def add_schema_version(session: Session, *, project: Project, spec: dict[str, Any], actor: str | None = None) -> LabelSchema:
    """A new version of the label schema. The kind (pairwise, ranking, rating) is fixed: the items depend on it."""
    latest = current_schema(session, project.id)
    new = normalize_schema(spec)
    if new["kind"] != latest.spec["kind"]:
        raise TetherError(
            f"the schema kind is {latest.spec['kind']}; a new version cannot change it to {new['kind']}",
            fix="create a new project for another kind of question",
        )
    if new == latest.spec:
        return latest
    schema = LabelSchema(project_id=project.id, version=latest.version + 1, spec=new)
    session.add(schema)
    session.flush()
    audit(session, "schema.version", "project", project.id, actor_name=actor, version=schema.version, spec=new)
    return schema


# ---------------------------------------------------------------------------------------------------------------
# Items: prompts and completions pushed by an admin or a pipeline


def _content(value: Any, what: str) -> tuple[str, list[Any] | None]:
    """(text, messages) of a prompt or completion given as a string or a list of chat messages."""
    if isinstance(value, str):
        return value, None
    if is_messages(value):
        return messages_text(value), value
    raise ValueError(f"{what} must be text or a list of {{role, content}} messages")


def item_row(record: dict[str, Any]) -> dict[str, Any]:
    """One upload record as ``{"prompt", "completions": [{"content", "model", "gen_settings"}], ...}``.

    Unlabeled shapes: ``{"prompt", "completions": [...]}`` (each a string, messages, or ``{"text" | "messages",
    "model", "gen_settings"}``) and ``{"prompt", "completion"}`` (one completion). Every format the importer
    reads (``tether.data.parse_record``: TRL and HH-RLHF pairs, chosen first; PandaLM; rankings;
    ratings) is accepted too, its labels left out: a campaign collects fresh judgments. Optional:
    ``external_id``, ``gold`` (a judgment value in item positions), ``meta``.
    """
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    problem = find_unstorable(record)
    if problem is not None:
        raise ValueError(problem)
    keys = record.keys()
    external_id = record.get("external_id", record.get("id"))
    if "completions" in keys and not keys & {"ranking", "comparisons", "preference"}:
        prompt, completions = record.get("prompt"), record["completions"]
        if not isinstance(completions, list) or not completions:
            raise ValueError("'completions' must be a non-empty list")
    elif "completion" in keys and not keys & {"ratings", "rating", "label"}:
        prompt, completions = record.get("prompt"), [record["completion"]]
    else:
        fmt = detect_format(record)
        if fmt is None or fmt == "prompts":
            raise ValueError(f"expected prompt and completions; known shapes: {{prompt, completions}}, {{prompt, completion}}, {FORMAT_KEYS}")
        try:
            entry = parse_record(fmt, record)
        except SkipRecord as exc:
            raise ValueError(str(exc) or "the completions are identical") from None
        prompt, completions = entry.prompt, entry.completions
        external_id = external_id if external_id is not None else entry.external_id
    if prompt is None:
        raise ValueError("missing 'prompt'")
    out_completions = []
    for index, completion in enumerate(completions):
        model, settings = None, {}
        if isinstance(completion, dict) and not {"role", "content"} <= completion.keys():
            model, settings = completion.get("model"), completion.get("gen_settings") or {}
            completion = completion.get("messages", completion.get("text"))
        _content(completion, f"completion {index + 1}")
        out_completions.append({"content": completion, "model": model, "gen_settings": settings})
    _content(prompt, "prompt")
    return {
        "prompt": prompt,
        "completions": out_completions,
        "external_id": None if external_id is None else str(external_id)[:200],
        "gold": record.get("gold"),
        "meta": record.get("meta") if isinstance(record.get("meta"), dict) else {},
    }


def add_items(
    session: Session,
    *,
    project: Project,
    rows: Sequence[dict[str, Any]],
    where: Sequence[str] | None = None,
    max_text_chars: int = 200_000,
    max_items: int = 50_000,
    actor: str | None = None,
) -> dict[str, int]:
    """Make items from rows of prompts and completions (see ``item_row``); all or nothing.

    Prompts and completions are deduplicated by content within the project, and an item with the same prompt
    and the same completions in the same order as an existing one is counted as a duplicate, not added twice.
    ``where`` names each row in error messages (e.g. ``file.jsonl:12``). Returns counts.
    """
    if len(rows) > max_items:
        raise TetherError(f"{len(rows):,} items in one upload; the limit is {max_items:,}", fix="split the file into smaller uploads")
    schema = current_schema(session, project.id).spec
    kind = schema["kind"]
    fewest, most = completions_for(kind)
    labels = list(where) if where is not None else [f"item {i}" for i in range(1, len(rows) + 1)]
    parsed = []
    for label, record in zip(labels, rows):
        try:
            row = item_row(record)
        except ValueError as exc:
            raise TetherError(f"{label}: {exc}", fix="see the upload formats on the project page or in `tether.client` docs") from None
        n = len(row["completions"])
        if not fewest <= n <= most:
            want = str(fewest) if fewest == most else f"{fewest}..{most}"
            raise TetherError(f"{label}: a {kind} project needs {want} completions per item, this row has {n}", fix="check the file matches the project's kind")
        for what, content in [("prompt", row["prompt"])] + [(f"completion {i + 1}", c["content"]) for i, c in enumerate(row["completions"])]:
            size = len(_content(content, what)[0])
            if size > max_text_chars:
                raise TetherError(f"{label}: the {what} has {size:,} characters; the limit is {max_text_chars:,}", fix="shorten it or leave that row out")
        if row["gold"] is not None:
            try:
                row["gold"] = check_value(schema, row["gold"], n, max_text_chars)
            except TetherError as exc:
                raise TetherError(f"{label}: gold answer: {exc.message}", fix=exc.fix) from None
        parsed.append(row)

    # ALGO LOGIC: get-or-create prompts and completions by content hash, then items, in three bulk flushes.
    prompt_ids = dict(session.execute(select(Prompt.content_hash, Prompt.id).where(Prompt.project_id == project.id)).all())
    new_prompts: dict[str, Prompt] = {}
    for row in parsed:
        row["prompt_hash"] = content_hash(row["prompt"])
        if row["prompt_hash"] not in prompt_ids and row["prompt_hash"] not in new_prompts:
            text, messages = _content(row["prompt"], "prompt")
            new_prompts[row["prompt_hash"]] = Prompt(project_id=project.id, text=text, messages=messages, content_hash=row["prompt_hash"])
    session.add_all(new_prompts.values())
    session.flush()
    prompt_ids.update({h: p.id for h, p in new_prompts.items()})

    touched = {prompt_ids[row["prompt_hash"]] for row in parsed}
    completion_ids = {
        (pid, h): cid
        for pid, h, cid in session.execute(
            select(Completion.prompt_id, Completion.content_hash, Completion.id).where(Completion.prompt_id.in_(touched))
        ).all()
    } if touched else {}
    new_completions: dict[tuple[int, str], Completion] = {}
    for row in parsed:
        pid = prompt_ids[row["prompt_hash"]]
        for comp in row["completions"]:
            comp["key"] = (pid, content_hash(comp["content"]))
            if comp["key"] not in completion_ids and comp["key"] not in new_completions:
                text, messages = _content(comp["content"], "completion")
                new_completions[comp["key"]] = Completion(
                    prompt_id=pid, text=text, messages=messages, content_hash=comp["key"][1],
                    model=comp["model"], gen_settings=comp["gen_settings"],
                )
    session.add_all(new_completions.values())
    session.flush()
    completion_ids.update({key: c.id for key, c in new_completions.items()})

    existing = {}
    for item_id, prompt_id, _position, completion_id in session.execute(
        select(Item.id, Item.prompt_id, ItemCompletion.position, ItemCompletion.completion_id)
        .join(ItemCompletion, ItemCompletion.item_id == Item.id)
        .where(Item.project_id == project.id)
        .order_by(Item.id, ItemCompletion.position)
    ).all():
        existing.setdefault(item_id, [prompt_id]).append(completion_id)
    seen = {tuple(v) for v in existing.values()}
    added = duplicates = gold = 0
    new_items = []
    for row in parsed:
        pid = prompt_ids[row["prompt_hash"]]
        cids = [completion_ids[c["key"]] for c in row["completions"]]
        key = (pid, *cids)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        item = Item(
            project_id=project.id, prompt_id=pid, kind=kind, is_gold=row["gold"] is not None, gold_value=row["gold"],
            external_id=row["external_id"], meta=row["meta"], open_slots=project.overlap,
        )
        item.completions = [ItemCompletion(position=i, completion_id=cid) for i, cid in enumerate(cids)]
        new_items.append(item)
        added += 1
        gold += row["gold"] is not None
    session.add_all(new_items)
    session.flush()
    counts = {"items": added, "duplicates": duplicates, "gold": gold, "prompts": len(new_prompts), "completions": len(new_completions)}
    audit(session, "items.add", "project", project.id, actor_name=actor, **counts)
    return counts


# ---------------------------------------------------------------------------------------------------------------
# The queue


_aware = as_utc  # SQLite hands datetimes back without their zone


def _expired(assignment: Assignment, now: datetime) -> bool:
    expires = _aware(assignment.expires_at)
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


def _take_slot(session: Session, item_id: int, gold: bool) -> bool:
    """Count one more holder of the item's slots; False (nothing changed) when an ordinary item is full."""
    result = session.execute(_HOLD_SLOT if gold else _TAKE_SLOT, {"item_id": item_id})
    return result.rowcount == 1


def _free_slot(session: Session, item_id: int, n: int = 1) -> None:
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
        _free_slot(session, item_id, per_item[item_id])
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
    if lapsed is not None and _take_slot(session, lapsed[0].item_id, lapsed[1]):
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
            if not _take_slot(session, item_id, gold):
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
_ITEM_AND_PROJECT = select(Item, Project).join(Project, Project.id == Item.project_id).where(Item.id == bindparam("item_id"))


def own_assignment(session: Session, *, assignment_id: int, user: User, lock: bool = False) -> Assignment:
    """The user's assignment; someone else's or a missing one is the same 403 (nothing leaks)."""
    assignment = session.scalar(_ASSIGNMENT_LOCKED if lock else _ASSIGNMENT, {"assignment_id": assignment_id})
    if assignment is None or assignment.user_id != user.id:
        raise Forbidden(f"assignment {assignment_id} is not yours", fix="ask for your next item")
    return assignment


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
        "expires_at": _aware(assignment.expires_at),
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
    item, project = session.execute(_ITEM_AND_PROJECT, {"item_id": assignment.item_id}).one()
    # A pending assignment holds its slot even past its time; an expired one gave it back and takes it again if free.
    if assignment.state == "expired" and not _take_slot(session, item.id, item.is_gold):
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
    elapsed_ms = int((now - (_aware(assignment.created_at) or now)).total_seconds() * 1000)
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
    _free_slot(session, assignment.item_id)
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


# ---------------------------------------------------------------------------------------------------------------
# Review: all judgments of an item, adjudication, gold


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


# ---------------------------------------------------------------------------------------------------------------
# Reading out: judgments for pipelines, progress


def list_judgments(
    session: Session, *, project_id: int, after_id: int = 0, limit: int = 1000, include_text: bool = False
) -> list[dict[str, Any]]:
    """Judgments of a project in id order (page with ``after_id``), values in item positions."""
    rows = session.execute(
        select(Judgment, User.name, Item.external_id, Item.is_gold)
        .join(Item, Item.id == Judgment.item_id)
        .join(User, User.id == Judgment.user_id)
        .where(Item.project_id == project_id, Judgment.id > after_id)
        .order_by(Judgment.id)
        .limit(max(1, min(limit, 5000)))
    ).all()
    item_ids = sorted({j.item_id for j, *_ in rows})
    completions: dict[int, list[Any]] = {}
    if item_ids:
        query = select(ItemCompletion.item_id, ItemCompletion.position, Completion.id, Completion.text, Completion.model).join(
            Completion, Completion.id == ItemCompletion.completion_id
        ).where(ItemCompletion.item_id.in_(item_ids)).order_by(ItemCompletion.item_id, ItemCompletion.position)
        for item_id, _pos, cid, text, model in session.execute(query).all():
            completions.setdefault(item_id, []).append({"id": cid, "text": text, "model": model})
    prompts: dict[int, str] = {}
    if include_text and item_ids:
        prompts = dict(session.execute(select(Item.id, Prompt.text).join(Prompt, Prompt.id == Item.prompt_id).where(Item.id.in_(item_ids))).all())
    out = []
    for judgment, user_name, external_id, is_gold in rows:
        row = {
            "id": judgment.id,
            "item_id": judgment.item_id,
            "item_external_id": external_id,
            "item_is_gold": is_gold,
            "user": user_name,
            "kind": judgment.kind,
            "value": judgment.value,
            "shown_order": judgment.shown_order,
            "guideline_version": judgment.guideline_version,
            "schema_version": judgment.schema_version,
            "time_spent_ms": judgment.time_spent_ms,
            "source": judgment.source,
            "supersedes_id": judgment.supersedes_id,
            "created_at": _aware(judgment.created_at).isoformat(),
            "completion_ids": [c["id"] for c in completions.get(judgment.item_id, [])],
        }
        if include_text:
            row["prompt"] = prompts.get(judgment.item_id)
            row["completions"] = [{"text": c["text"], "model": c["model"]} for c in completions.get(judgment.item_id, [])]
        out.append(row)
    return out


def _gold_agrees(kind: str, gold: dict[str, Any], value: dict[str, Any]) -> bool | None:
    if kind == "pairwise":
        return gold.get("choice") == value.get("choice")
    if kind == "ranking" and "ranking" in gold and "ranking" in value:
        return gold["ranking"][0] == value["ranking"][0]
    if kind == "rating":
        common = set(gold.get("ratings", {})) & set(value.get("ratings", {}))
        return all(abs(gold["ratings"][a] - value["ratings"][a]) <= 1 for a in common) if common else None
    return None


def project_progress(session: Session, *, project: Project, now: datetime | None = None) -> dict[str, Any]:
    """How far a campaign is: items, filled slots, judgments, skips, and per-annotator counts and gold agreement."""
    now = now or utcnow()
    n_items, n_gold = session.execute(
        select(func.count(), func.coalesce(func.sum(case((Item.is_gold.is_(True), 1), else_=0)), 0)).where(Item.project_id == project.id)
    ).one()
    in_project = select(Item.id).where(Item.project_id == project.id)
    done_per_item = session.execute(
        select(Assignment.item_id, func.count())
        .where(Assignment.state == "done", Assignment.item_id.in_(in_project.where(Item.is_gold.is_(False))))
        .group_by(Assignment.item_id)
    ).all()
    filled = sum(min(n, project.overlap) for _, n in done_per_item)
    complete = sum(1 for _, n in done_per_item if n >= project.overlap)
    slots = (n_items - n_gold) * project.overlap
    states = dict(
        session.execute(
            select(Assignment.state, func.count()).where(Assignment.item_id.in_(in_project)).group_by(Assignment.state)
        ).all()
    )
    in_flight = session.scalar(
        select(func.count()).select_from(Assignment).where(
            Assignment.item_id.in_(in_project), Assignment.state == "pending", or_(Assignment.expires_at.is_(None), Assignment.expires_at > now)
        )
    )
    per_user: dict[str, dict[str, Any]] = {}
    for name, state, count in session.execute(
        select(User.name, Assignment.state, func.count())
        .join(User, User.id == Assignment.user_id)
        .where(Assignment.item_id.in_(in_project))
        .group_by(User.name, Assignment.state)
    ).all():
        per_user.setdefault(name, {"done": 0, "skipped": 0, "pending": 0, "expired": 0})[state] = count
    for name, avg_ms in session.execute(
        select(User.name, func.avg(Judgment.time_spent_ms))
        .join(User, User.id == Judgment.user_id)
        .where(Judgment.item_id.in_(in_project), Judgment.source != "review")
        .group_by(User.name)
    ).all():
        per_user.setdefault(name, {"done": 0, "skipped": 0, "pending": 0, "expired": 0})["mean_time_s"] = (
            None if avg_ms is None else round(float(avg_ms) / 1000, 1)
        )
    for name, kind, gold_value, value in session.execute(
        select(User.name, Item.kind, Item.gold_value, Judgment.value)
        .join(Item, Item.id == Judgment.item_id)
        .join(User, User.id == Judgment.user_id)
        .where(Item.project_id == project.id, Item.is_gold.is_(True), Judgment.source != "review")
    ).all():
        agrees = _gold_agrees(kind, gold_value or {}, value)
        if agrees is None:
            continue
        stats = per_user.setdefault(name, {"done": 0, "skipped": 0, "pending": 0, "expired": 0})
        stats["gold_seen"] = stats.get("gold_seen", 0) + 1
        stats["gold_agree"] = stats.get("gold_agree", 0) + int(agrees)
    n_judgments = session.scalar(select(func.count()).select_from(Judgment).where(Judgment.item_id.in_(in_project)))
    return {
        "project": project.name,
        "items": n_items,
        "gold_items": n_gold,
        "overlap": project.overlap,
        "slots": slots,
        "slots_filled": filled,
        "items_complete": complete,
        "fraction_done": round(filled / slots, 4) if slots else 0.0,
        "judgments": n_judgments,
        "assignments": {"done": states.get("done", 0), "skipped": states.get("skipped", 0), "in_flight": in_flight, "expired": states.get("expired", 0)},
        "annotators": dict(sorted(per_user.items())),
    }


def user_progress(session: Session, *, project: Project, user: User) -> dict[str, int | float]:
    """What an annotator sees of their own progress: their counts and how full the campaign is (no one else's answers)."""
    in_project = select(Item.id).where(Item.project_id == project.id)
    mine = dict(
        session.execute(
            select(Assignment.state, func.count()).where(Assignment.user_id == user.id, Assignment.item_id.in_(in_project)).group_by(Assignment.state)
        ).all()
    )
    n_items = session.scalar(select(func.count()).select_from(Item).where(Item.project_id == project.id, Item.is_gold.is_(False))) or 0
    done_slots = session.scalar(
        select(func.count()).select_from(Assignment).where(
            Assignment.state == "done", Assignment.item_id.in_(in_project.where(Item.is_gold.is_(False)))
        )
    ) or 0
    slots = n_items * project.overlap
    return {
        "done": mine.get("done", 0),
        "skipped": mine.get("skipped", 0),
        "project_fraction": round(min(done_slots, slots) / slots, 4) if slots else 0.0,
    }
