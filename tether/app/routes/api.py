"""The JSON API (``/api/v1``) for labeling pipelines and ``tether.client``; bearer tokens, no cookies.

Admins push prompts and completions and pull judgments; reviewers read judgments and mark gold; any account takes
its next item and answers it. A forbidden call is a 403 before anything is looked up, so nothing leaks.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, Security
from fastapi.security import HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.app.deps import (
    ApiAdmin,
    ApiReviewer,
    ApiUser,
    DbSession,
    Settings,
    actor_of,
    as_token_holder,
    page,
)
from tether.app.schemas import (
    AfterIdQuery,
    CorrectionIn,
    ErrorOut,
    GoldIn,
    GuidelinesIn,
    IdPath,
    ItemsAdded,
    ItemsPush,
    JudgmentCreated,
    JudgmentIn,
    LabelSchemaIn,
    ProjectCreate,
    ProjectPatch,
    ProjectPublic,
    SkipIn,
    TaskPublic,
    UserCreate,
    UserPublic,
    VersionOut,
)
from tether.errors import Forbidden
from tether.store import accounts, campaigns
from tether.store.tables import Item, Project, User

ERRORS = {
    400: "bad input", 401: "no valid token", 403: "not allowed for this token", 404: "no such object",
    409: "clashes with the current state", 413: "too large", 422: "malformed request",
}
# The bearer scheme is declared for the schema (and its readers); the token itself is checked by deps.token_holder.
router = APIRouter(
    prefix="/api/v1", tags=["JSON API"], dependencies=[Security(HTTPBearer(auto_error=False, description="a token from `tether user token NAME`"))],
    responses={code: {"model": ErrorOut, "description": text} for code, text in ERRORS.items()},
)


def _project_public(session: DbSession, project: Project) -> ProjectPublic:
    guideline = campaigns.current_guideline(session, project.id)
    try:
        schema = campaigns.current_schema(session, project.id)
    except Exception:  # an imported feedback set has no schema
        schema = None
    return ProjectPublic(
        id=project.id, name=project.name, description=project.description, kind=schema.spec["kind"] if schema else None,
        overlap=project.overlap, gold_rate=project.gold_rate, assignment_ttl_s=project.assignment_ttl_s,
        guideline_version=guideline.version if guideline else None, guidelines=guideline.text if guideline else None,
        schema_version=schema.version if schema else None, label_schema=schema.spec if schema else None,
    )


def _task_public(session: DbSession, assignment: object | None) -> TaskPublic | None:
    if assignment is None:
        return None
    task = campaigns.task_view(session, assignment)
    task["label_schema"] = task.pop("schema")
    task.pop("guideline")
    return TaskPublic(**task)


def _web_project(session: DbSession, project_id: int) -> Project:
    project = campaigns.get_project(session, project_id)
    if project.source != "web":
        raise Forbidden(f"project {project_id} is an imported feedback set, not open for annotation", fix="pick a campaign")
    return project


@router.get("/me", response_model=UserPublic)
def me(user: ApiUser) -> UserPublic:
    return UserPublic(id=user.id, name=user.name, role=user.role, active=user.active)


@router.get("/projects", response_model=list[ProjectPublic])
def projects(session: DbSession, user: ApiUser) -> list[ProjectPublic]:
    rows = campaigns.web_projects(session)
    return [_project_public(session, p) for p in rows]


@router.post("/projects", response_model=ProjectPublic, status_code=201)
def create_project(body: ProjectCreate, session: DbSession, user: ApiAdmin) -> ProjectPublic:
    project = campaigns.create_project(
        session, name=body.name, description=body.description, guidelines=body.guidelines, schema=body.label_schema.spec(),
        overlap=body.overlap, gold_rate=body.gold_rate, assignment_ttl_s=body.assignment_ttl_s, actor=actor_of(user, "api"),
    )
    return _project_public(session, project)


@router.get("/projects/{project_id}", response_model=ProjectPublic)
def get_project(project_id: IdPath, session: DbSession, user: ApiUser) -> ProjectPublic:
    return _project_public(session, _web_project(session, project_id))


@router.patch("/projects/{project_id}", response_model=ProjectPublic)
def patch_project(project_id: IdPath, body: ProjectPatch, session: DbSession, user: ApiAdmin) -> ProjectPublic:
    project = campaigns.get_project(session, project_id)
    campaigns.update_project(session, project=project, overlap=body.overlap, gold_rate=body.gold_rate,
                              assignment_ttl_s=body.assignment_ttl_s, description=body.description, actor=actor_of(user, "api"))
    return _project_public(session, project)


@router.put("/projects/{project_id}/guidelines", response_model=VersionOut)
def put_guidelines(project_id: IdPath, body: GuidelinesIn, session: DbSession, user: ApiAdmin) -> dict:
    project = _web_project(session, project_id)
    return {"version": campaigns.add_guideline_version(session, project=project, text=body.text, actor=actor_of(user, "api")).version}


@router.put("/projects/{project_id}/schema", response_model=VersionOut)
def put_schema(project_id: IdPath, body: LabelSchemaIn, session: DbSession, user: ApiAdmin) -> dict:
    project = _web_project(session, project_id)
    return {"version": campaigns.add_schema_version(session, project=project, spec=body.spec(), actor=actor_of(user, "api")).version}


@router.post("/projects/{project_id}/items", response_model=ItemsAdded, status_code=201)
def push_items(project_id: IdPath, body: ItemsPush, session: DbSession, user: ApiAdmin, settings: Settings) -> ItemsAdded:
    project = _web_project(session, project_id)
    counts = campaigns.add_items(session, project=project, rows=body.items, max_text_chars=settings.max_text_chars,
                                  max_items=settings.max_items_per_upload, actor=actor_of(user, "api"))
    return ItemsAdded(**counts)


@router.get("/projects/{project_id}/judgments")
def pull_judgments(
    project_id: IdPath,
    session: DbSession,
    user: ApiReviewer,
    after_id: AfterIdQuery = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    include_text: bool = False,
) -> dict:
    campaigns.get_project(session, project_id)
    rows = campaigns.list_judgments(session, project_id=project_id, after_id=after_id, limit=limit, include_text=include_text)
    return {"judgments": rows, "next_after_id": rows[-1]["id"] if rows else after_id}


@router.get("/projects/{project_id}/progress")
def progress(project_id: IdPath, session: DbSession, user: ApiReviewer) -> dict:
    return campaigns.project_progress(session, project=_web_project(session, project_id))


# The annotators' two hot calls run their store work in one hop (see deps.as_token_holder); the rest use the
# DbSession and ApiUser dependencies.
@router.post("/projects/{project_id}/next", response_model=TaskPublic, responses={204: {"description": "nothing left for you"}})
async def next_item(project_id: IdPath, request: Request) -> TaskPublic | Response:
    def work(session: Session, user: User) -> TaskPublic | None:
        project = _web_project(session, project_id)
        return _task_public(session, campaigns.next_assignment(session, project=project, user=user))

    task = await as_token_holder(request, work)
    return task if task is not None else Response(status_code=204)


@router.post("/assignments/{assignment_id}/judgment", response_model=JudgmentCreated, status_code=201)
async def submit(assignment_id: IdPath, body: JudgmentIn, request: Request, settings: Settings, next: bool = False) -> JudgmentCreated:
    def work(session: Session, user: User) -> JudgmentCreated:
        judgment = campaigns.submit_judgment(
            session, assignment_id=assignment_id, user=user, value=body.value, time_spent_ms=body.time_spent_ms,
            guideline_version=body.guideline_version, schema_version_number=body.schema_version, source="api",
            max_answer_chars=settings.max_answer_chars, actor=actor_of(user, "api"),
        )
        upcoming = None
        if next:  # the next item in the same request
            project = session.get(Project, session.scalar(select(Item.project_id).where(Item.id == judgment.item_id)))
            upcoming = _task_public(session, campaigns.next_assignment(session, project=project, user=user))
        return JudgmentCreated(judgment_id=judgment.id, next=upcoming)

    return await as_token_holder(request, work)


@router.post("/assignments/{assignment_id}/skip", status_code=204)
def skip(assignment_id: IdPath, body: SkipIn, session: DbSession, user: ApiUser) -> Response:
    campaigns.skip_assignment(session, assignment_id=assignment_id, user=user, reason=body.reason, actor=actor_of(user, "api"))
    return Response(status_code=204)


@router.post("/judgments/{judgment_id}/correct", response_model=JudgmentCreated, status_code=201)
def correct(judgment_id: IdPath, body: CorrectionIn, session: DbSession, user: ApiUser, settings: Settings) -> JudgmentCreated:
    judgment = campaigns.correct_judgment(session, judgment_id=judgment_id, user=user, value=body.value,
                                           max_answer_chars=settings.max_answer_chars, source="api", actor=actor_of(user, "api"))
    return JudgmentCreated(judgment_id=judgment.id)


@router.get("/items/{item_id}/judgments")
def item_judgments(item_id: IdPath, session: DbSession, user: ApiReviewer) -> dict:
    detail = campaigns.item_detail(session, item_id)
    return {
        "item_id": item_id,
        "is_gold": detail["item"].is_gold,
        "gold_value": detail["item"].gold_value,
        "judgments": [
            {"id": row["judgment"].id, "user": row["user"], "value": row["judgment"].value, "source": row["judgment"].source,
             "supersedes_id": row["judgment"].supersedes_id, "shown_order": row["judgment"].shown_order}
            for row in detail["judgments"]
        ],
        "skips": detail["skips"],
    }


@router.post("/items/{item_id}/gold")
def set_gold(item_id: IdPath, body: GoldIn, session: DbSession, user: ApiReviewer, settings: Settings) -> dict:
    item = campaigns.mark_gold(session, item_id=item_id, value=body.value, max_answer_chars=settings.max_answer_chars, actor=actor_of(user, "api"))
    return {"item_id": item.id, "is_gold": item.is_gold, "gold_value": item.gold_value}


@router.get("/users", response_model=list[UserPublic])
def users(session: DbSession, user: ApiAdmin) -> list[UserPublic]:
    rows = accounts.login_users(session)
    return [UserPublic(id=u.id, name=u.name, role=u.role, active=u.active) for u in rows]


@router.post("/users", response_model=UserPublic, status_code=201)
def create_user(body: UserCreate, session: DbSession, user: ApiAdmin, settings: Settings) -> UserPublic:
    new = accounts.create_user(session, name=body.name, role=body.role, password=body.password,
                              password_profile=settings.password_profile, actor=actor_of(user, "api"))
    return UserPublic(id=new.id, name=new.name, role=new.role, active=new.active)


# --- the reference page -------------------------------------------------------------------------------------------
# FastAPI's Swagger page loads its script from a CDN and runs inline script: blank under this app's CSP and
# offline. This page is the same schema rendered on the server: plain HTML, no script.
reference = APIRouter(include_in_schema=False)


def _type_of(schema: dict[str, Any]) -> str:
    """A short type for a JSON schema: ``integer 1..2147483647``, ``list[ItemPublic]``, ``string | null``."""
    if not isinstance(schema, dict):  # additionalProperties: true
        return "any"
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " | ".join(_type_of(part) for part in schema[key])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list[{_type_of(schema.get('items', {}))}]"
    if kind == "object" and "additionalProperties" in schema:
        return f"object of {_type_of(schema['additionalProperties'])}"
    bounds = [schema.get(k) for k in ("minimum", "maximum", "minLength", "maxLength")]
    if bounds[0] is not None or bounds[1] is not None:
        kind += f" {'' if bounds[0] is None else bounds[0]}..{'' if bounds[1] is None else bounds[1]}"
    if bounds[3] is not None:
        kind += f" (at most {bounds[3]} characters)"
    return kind


def api_reference(openapi: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema shaped for the reference template: the JSON API's operations and its models."""
    operations = []
    for path, methods in openapi.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for method, op in methods.items():
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
            operations.append({
                "method": method.upper(), "path": path, "summary": op.get("summary", ""), "description": op.get("description", ""),
                "parameters": [(p["name"], p["in"], _type_of(p.get("schema", {})), p.get("required", False)) for p in op.get("parameters", [])],
                "body": _type_of(body) if body else None,
                # the errors are one list for all, at the top of the page
                "responses": [(code, r.get("description", "")) for code, r in sorted(op.get("responses", {}).items()) if code < "400"],
            })
    models = []
    for name, schema in sorted(openapi.get("components", {}).get("schemas", {}).items()):
        required = set(schema.get("required", []))
        fields = [(field, _type_of(prop), field in required) for field, prop in schema.get("properties", {}).items()]
        models.append({"name": name, "description": schema.get("description", ""), "fields": fields})
    return {"title": openapi["info"]["title"], "version": openapi["info"]["version"], "operations": operations, "models": models}


@reference.get("/api/docs")
def docs_page(request: Request) -> Response:
    return page(request, "api_docs.html", user=None, reference=api_reference(request.app.openapi()))
