"""Reading campaigns out: judgments for pipelines, a project's progress and an annotator's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from tether.store.tables import (
    Assignment,
    Completion,
    Item,
    ItemCompletion,
    Judgment,
    Project,
    Prompt,
    User,
    as_utc,
    utcnow,
)


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
            "created_at": as_utc(judgment.created_at).isoformat(),
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
