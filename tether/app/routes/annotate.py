"""The annotator's pages: the project list, the task (with the guidelines beside it), submit and skip.

Submitting answers and getting the next item is one request: with HTMX the response is the next task's fragment;
without JavaScript the browser follows a redirect to the task page. The form speaks in *shown* positions (what the
annotator saw: left/right, 1..k); the server maps them to item positions with the assignment's stored order.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from tether.app.deps import DbSession, Settings, WebUser, actor_of, csrf_protect, is_htmx, page
from tether.app.schemas import MAX_ID, IdPath, plain_int
from tether.errors import Forbidden, TetherError
from tether.feedback.judgments import STRENGTH_LABELS
from tether.store import campaigns
from tether.store.tables import Project, User

router = APIRouter(prefix="/annotate", dependencies=[Depends(csrf_protect)])

SKIP_REASONS = (
    "I cannot judge this (outside my knowledge)",
    "The text is broken or unreadable",
    "Content I should not review",
    "Other",
)


def pairwise_options(strength: bool) -> list[dict[str, Any]]:
    """The answer buttons of a pair, left to right, with their keys. ``pick`` values speak in shown sides."""
    if not strength:
        return [
            {"pick": "A", "key": "1", "label": "A is better", "side": "a"},
            {"pick": "T", "key": "2", "label": "Tie", "side": "tie"},
            {"pick": "B", "key": "3", "label": "B is better", "side": "b"},
        ]
    options = [{"pick": f"A{s}", "label": f"A {STRENGTH_LABELS[s]}", "side": "a"} for s in (3, 2, 1)]
    options.append({"pick": "T", "label": "Tie", "side": "tie"})
    options += [{"pick": f"B{s}", "label": f"B {STRENGTH_LABELS[s]}", "side": "b"} for s in (1, 2, 3)]
    for key, option in enumerate(options, start=1):
        option["key"] = str(key)
    return options


def value_from_form(spec: dict[str, Any], form: Any, shown_order: list[int]) -> dict[str, Any]:
    """The judgment value, in item positions, from the task form (which speaks in shown positions)."""
    kind = spec["kind"]
    value: dict[str, Any] = {}
    if kind == "pairwise":
        pick = form.get("pick") or ""
        valid = {o["pick"] for o in pairwise_options(spec["strength"])}
        if pick not in valid:
            raise TetherError("choose which response is better first", fix="press a number key (shown on each button)")
        if pick == "T":
            value["choice"] = "tie"
        else:
            shown_side = 0 if pick[0] == "A" else 1
            value["choice"] = "a" if shown_order[shown_side] == 0 else "b"
            if spec["strength"]:
                value["strength"] = int(pick[1])
    elif kind == "ranking":
        k = len(shown_order)
        ranks = []
        for shown in range(k):
            rank = plain_int(form.get(f"rank_{shown}"))
            if rank is None or not 1 <= rank <= k:
                raise TetherError(f"rank every response from 1 (best) to {k}", fix="press the response numbers from best to worst")
            ranks.append(rank)
        if sorted(ranks) != list(range(1, k + 1)):
            raise TetherError("each rank may be used once", fix="press Backspace to undo and rank again")
        by_rank = sorted(range(k), key=lambda shown: ranks[shown])
        value["ranking"] = [shown_order[shown] for shown in by_rank]
    elif kind == "rating":
        lo, hi = spec["scale"]
        ratings = {}
        for index, aspect in enumerate(spec["aspects"]):
            rating = plain_int(form.get(f"rating_{index}"))
            if rating is None or not lo <= rating <= hi:
                raise TetherError(f"rate '{aspect}' from {lo} to {hi}", fix="press a number key for each aspect")
            ratings[aspect] = rating
        value["ratings"] = ratings
        value["scale"] = [lo, hi]
    flags = [f for f in form.getlist("flag") if isinstance(f, str)]
    if flags:
        value["flags"] = flags
    for field in ("critique", "rewrite"):
        text = form.get(field)
        if isinstance(text, str) and text.strip():
            value[field] = text.strip()
    return value


def _project(session: Any, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None or project.source != "web":
        raise Forbidden(f"project {project_id} is not open for annotation", fix="pick a project from your list")
    return project


def task_context(session: Any, project: Project, user: User, assignment: Any) -> dict[str, Any]:
    """Everything the task template needs (or the "all done" state when ``assignment`` is None)."""
    progress = campaigns.user_progress(session, project=project, user=user)
    context: dict[str, Any] = {"project": project, "progress": progress, "task": None, "skip_reasons": SKIP_REASONS}
    if assignment is None:
        context["guideline"] = campaigns.current_guideline(session, project.id)
        return context
    task = campaigns.task_view(session, assignment, with_guideline=True)
    context["guideline"] = task["guideline"]
    spec = task["schema"]
    context["task"] = task
    context["spec"] = spec
    if spec["kind"] == "pairwise":
        context["options"] = pairwise_options(spec["strength"])
    if spec["kind"] == "rating":
        lo, hi = spec["scale"]
        context["scale_points"] = list(range(lo, hi + 1))
    return context


@router.get("")
def projects(request: Request, session: DbSession, user: WebUser) -> Response:
    rows = []
    for project in campaigns.web_projects(session):
        rows.append({"project": project, "progress": campaigns.user_progress(session, project=project, user=user),
                     "kind": campaigns.project_kind(session, project)})
    return page(request, "annotate_index.html", user=user, rows=rows)


@router.get("/{project_id}")
def task_page(request: Request, project_id: IdPath, session: DbSession, user: WebUser, done: bool = False) -> Response:
    """The annotator's pending task, or a button that takes the next one: a GET assigns nothing (a link
    preview, a prefetch or a crawler would otherwise take items from the queue)."""
    project = _project(session, project_id)
    assignment = campaigns.pending_assignment(session, project=project, user=user)
    return page(request, "annotate.html", user=user, done=done, **task_context(session, project, user, assignment))


@router.post("/{project_id}/next")
def take_next(request: Request, project_id: IdPath, session: DbSession, user: WebUser) -> Response:
    """Take (or resume) the next item: the task fragment for HTMX, else a redirect to the task page."""
    return _next(request, session, _project(session, project_id), user)


def _next(request: Request, session: Any, project: Project, user: User) -> Response:
    """The reply to a submit, a skip or a start: the next item is assigned here, in the POST; then the task
    (HTMX fragment) or a redirect to the task page, which shows it."""
    assignment = campaigns.next_assignment(session, project=project, user=user)
    if not is_htmx(request):
        return RedirectResponse(f"/annotate/{project.id}" + ("" if assignment is not None else "?done=true"), status_code=303)
    return page(request, "_task.html", user=user, done=assignment is None, **task_context(session, project, user, assignment))


@router.post("/{project_id}/assignments/{assignment_id}/submit")
async def submit(request: Request, project_id: IdPath, assignment_id: IdPath, session: DbSession, user: WebUser, settings: Settings) -> Response:
    form = await request.form()
    return await _run_sync(_submit_sync, request, form, project_id, assignment_id, session, user, settings)


def _submit_sync(request: Request, form: Any, project_id: int, assignment_id: int, session: Any, user: User, settings: Any) -> Response:
    project = _project(session, project_id)
    assignment = campaigns.own_assignment(session, assignment_id=assignment_id, user=user)
    schema_version, guideline_version = _version(form, "schema_version"), _version(form, "guideline_version")
    spec = campaigns.schema_version(session, project.id, schema_version).spec
    value = value_from_form(spec, form, list(assignment.shown_order))
    campaigns.submit_judgment(
        session,
        assignment_id=assignment.id,
        user=user,
        value=value,
        time_spent_ms=plain_int(form.get("time_spent_ms")),  # what the page measured; the store clamps it
        guideline_version=guideline_version,
        schema_version_number=schema_version,
        source="web",
        max_answer_chars=settings.max_answer_chars,
        actor=actor_of(user),
    )
    return _next(request, session, project, user)


@router.post("/{project_id}/assignments/{assignment_id}/skip")
async def skip(request: Request, project_id: IdPath, assignment_id: IdPath, session: DbSession, user: WebUser) -> Response:
    form = await request.form()
    return await _run_sync(_skip_sync, request, form, project_id, assignment_id, session, user)


def _skip_sync(request: Request, form: Any, project_id: int, assignment_id: int, session: Any, user: User) -> Response:
    project = _project(session, project_id)
    reason = form.get("reason") or ""
    if reason == "Other":
        reason = (form.get("reason_other") or "").strip() or "Other"
    campaigns.skip_assignment(session, assignment_id=assignment_id, user=user, reason=str(reason), actor=actor_of(user))
    return _next(request, session, project, user)


def _version(form: Any, name: str) -> int | None:
    """A version number the page sent (empty: the one in force); anything but a version number is refused."""
    raw = form.get(name)
    if raw is None or raw == "":
        return None
    number = plain_int(raw)
    if number is None or not 1 <= number <= MAX_ID:
        raise TetherError(f"{name} must be a version number, got {str(raw)[:40]!r}", fix="reload the page and answer again")
    return number


async def _run_sync(fn: Any, *args: Any) -> Any:
    """Store work in a worker thread (the event loop stays free)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)
