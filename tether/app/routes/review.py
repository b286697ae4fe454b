"""Reviewers (and admins): every judgment of an item, adjudication, gold marking."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from tether.app.deps import DbSession, Settings, WebReviewer, actor_of, csrf_protect, page
from tether.app.schemas import MAX_ID, IdPath, plain_int
from tether.errors import NotFound
from tether.store import campaigns
from tether.store.tables import Item, Judgment, Project

router = APIRouter(prefix="/review", dependencies=[Depends(csrf_protect)])
PAGE_SIZE = 50
SCAN_CHUNK = 500  # items read at once when filtering by disagreement


@router.get("")
def review_index(
    request: Request,
    session: DbSession,
    user: WebReviewer,
    project_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    disagree: bool = False,
    offset: Annotated[int, Query(le=MAX_ID)] = 0,
) -> Response:
    projects = campaigns.web_projects(session)
    project = session.get(Project, project_id) if project_id else (projects[0] if projects else None)
    offset = max(0, offset)
    rows: list[dict] = []
    total: int | None = 0
    has_older = False
    if project is not None:
        rows, total, has_older = review_page(session, project.id, disagree=disagree, offset=offset, limit=PAGE_SIZE)
    return page(request, "review_index.html", user=user, projects=projects, project=project, rows=rows, disagree=disagree,
                offset=offset, total=total, has_older=has_older, page_size=PAGE_SIZE)


def review_page(session: Session, project_id: int, *, disagree: bool, offset: int, limit: int) -> tuple[list[dict], int | None, bool]:
    """One page of a project's judged items, newest first: (rows, total or None, whether older rows exist).

    Only the page's judgments are read. With ``disagree`` the filter needs the answers, so items are read in
    chunks of ``SCAN_CHUNK`` until the page is full (the total is then unknown: None).
    """
    judged = exists().where(Judgment.item_id == Item.id)
    newest_first = select(Item).where(Item.project_id == project_id, judged).order_by(Item.id.desc())
    if not disagree:
        total = session.scalar(select(func.count()).select_from(Item).where(Item.project_id == project_id, judged)) or 0
        items = session.scalars(newest_first.offset(offset).limit(limit)).all()
        return _summaries(session, items), total, offset + limit < total
    found: list[dict] = []
    skipped = 0
    before: int | None = None
    while len(found) <= limit:  # one row past the page says whether an older page exists
        query = newest_first.limit(SCAN_CHUNK) if before is None else newest_first.where(Item.id < before).limit(SCAN_CHUNK)
        items = session.scalars(query).all()
        if not items:
            break
        before = items[-1].id
        for row in _summaries(session, items):
            if not row["disagree"]:
                continue
            if skipped < offset:
                skipped += 1
            else:
                found.append(row)
    return found[:limit], None, len(found) > limit


def _summaries(session: Session, items: list[Item]) -> list[dict]:
    """Per item: how many judgments, the distinct answers (a corrected judgment counts by its newest version only)."""
    found = session.execute(
        select(Judgment.item_id, Judgment.id, Judgment.value, Judgment.supersedes_id)
        .where(Judgment.item_id.in_([item.id for item in items]))
        .order_by(Judgment.id)
    ).all() if items else []
    superseded = {old for *_, old in found if old is not None}
    by_item = {item.id: {"item": item, "judgments": 0, "answers": set()} for item in items}
    for item_id, judgment_id, value, _old in found:
        row = by_item[item_id]
        row["judgments"] += 1
        if judgment_id not in superseded:
            row["answers"].add(_headline(row["item"].kind, value))
    for row in by_item.values():
        row["answers"] = sorted(row["answers"])
        row["disagree"] = len(row["answers"]) > 1
    return list(by_item.values())


def _headline(kind: str, value: dict) -> str:
    """A short summary of an answer, in item positions (A = position 0)."""
    if kind == "pairwise":
        choice = value.get("choice")
        return "tie" if choice == "tie" else f"{str(choice).upper()} better"
    if kind == "ranking" and "ranking" in value:
        return " > ".join(str(p + 1) for p in value["ranking"])
    if kind == "rating":
        return ", ".join(f"{a} {s}" for a, s in value.get("ratings", {}).items())
    return "?"


@router.get("/items/{item_id}")
def item_page(request: Request, item_id: IdPath, session: DbSession, user: WebReviewer) -> Response:
    detail = campaigns.item_detail(session, item_id)
    schema = campaigns.current_schema(session, detail["item"].project_id)
    project = session.get(Project, detail["item"].project_id)
    for row in detail["judgments"]:
        row["headline"] = _headline(detail["item"].kind, row["judgment"].value)
    return page(request, "review_item.html", user=user, detail=detail, spec=schema.spec, project=project,
                gold_headline=_headline(detail["item"].kind, detail["item"].gold_value) if detail["item"].gold_value else None)


def _listed_judgment(session: Session, item_id: int, raw: str) -> Judgment:
    """The judgment a review form names (one of the item's listed judgments); anything else is a 404."""
    number = plain_int(raw)
    judgment = session.get(Judgment, number) if number is not None and 1 <= number <= MAX_ID else None
    if judgment is None or judgment.item_id != item_id:
        raise NotFound(f"item {item_id} has no judgment {raw[:40]!r}", fix="pick one of the judgments listed")
    return judgment


@router.post("/items/{item_id}/gold")
def gold(item_id: IdPath, session: DbSession, user: WebReviewer, settings: Settings, judgment_id: Annotated[str, Form()] = "") -> Response:
    value = _listed_judgment(session, item_id, judgment_id).value if judgment_id else None  # none: ordinary again
    campaigns.mark_gold(session, item_id=item_id, value=value, max_answer_chars=settings.max_answer_chars, actor=actor_of(user))
    return RedirectResponse(f"/review/items/{item_id}", status_code=303)


@router.post("/items/{item_id}/adjudicate")
def adjudicate(item_id: IdPath, session: DbSession, user: WebReviewer, settings: Settings, judgment_id: Annotated[str, Form()]) -> Response:
    judgment = _listed_judgment(session, item_id, judgment_id)
    campaigns.adjudicate(session, item_id=item_id, reviewer=user, value=dict(judgment.value), max_answer_chars=settings.max_answer_chars,
                          actor=actor_of(user))
    return RedirectResponse(f"/review/items/{item_id}", status_code=303)
