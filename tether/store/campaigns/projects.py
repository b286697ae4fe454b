"""Campaigns: projects, their versioned guidelines and label schemas, and the check of a judgment value against
its schema."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tether.checks.inputs import require_storable
from tether.errors import Conflict, NotFound, TetherError
from tether.feedback.judgments import FLAG_CATEGORIES, validate_value
from tether.store.db import audit
from tether.store.tables import Guideline, Item, LabelSchema, Project

SCHEMA_KINDS = ("pairwise", "ranking", "rating")


DEFAULT_ASPECTS = ("helpfulness", "harmlessness", "honesty", "policy compliance")


MAX_RANKED = 9  # digit keys 1..9 rank the responses


MAX_FLAGS = 9  # Shift+1..9 toggle the flags


MAX_SKIP_REASON_CHARS = 500


MAX_GUIDELINE_CHARS = 200_000


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


def web_projects(session: Session) -> list[Project]:
    """The campaigns people annotate in the web app (not the feedback sets an import made), oldest first."""
    return list(session.scalars(select(Project).where(Project.source == "web").order_by(Project.id)))


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
