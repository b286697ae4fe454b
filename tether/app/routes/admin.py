"""Admins: projects (guidelines, label schema, settings, uploads, progress), users and tokens, the audit log."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from tether.app.deps import DbSession, Settings, WebAdmin, actor_of, csrf_protect, page
from tether.app.schemas import MAX_ID, IdPath
from tether.app.settings import AppSettings
from tether.errors import NotFound, TetherError
from tether.feedback.judgments import FLAG_CATEGORIES
from tether.store import accounts, campaigns
from tether.store.tables import AuditEvent, Guideline, LabelSchema, Project, User

router = APIRouter(prefix="/admin", dependencies=[Depends(csrf_protect)])

UPLOAD_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".jsonl.gz", ".ndjson.gz", ".json.gz", ".parquet.gz")


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def schema_from_form(kind: str, strength: bool, aspects: str, scale_low: int, scale_high: int, flags: str, critique: bool, rewrite: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": kind, "flags": _split(flags), "critique": critique, "rewrite": rewrite}
    if kind == "pairwise":
        spec["strength"] = strength
    if kind == "rating":
        spec["aspects"] = _split(aspects)
        spec["scale"] = [scale_low, scale_high]
    return spec


def upload_rows(upload: UploadFile, settings: AppSettings) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of an uploaded file (JSONL, JSON, parquet; optionally gzipped) with ``file:line`` labels.

    The upload limit holds for the decompressed bytes too, counted while reading (a small gzip of one huge line
    is refused with 413 before it is expanded in memory)."""
    from tether.data.records import read_records

    name = Path(upload.filename or "upload.jsonl").name
    suffix = next((s for s in UPLOAD_SUFFIXES if name.lower().endswith(s)), None)
    if suffix is None:
        raise TetherError(f"{name}: unknown file type", fix="upload .jsonl, .json or .parquet (optionally .gz)")
    with tempfile.TemporaryDirectory(prefix="tether-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        with path.open("wb") as fh:
            while chunk := upload.file.read(1024 * 1024):
                fh.write(chunk)
        rows, labels = [], []
        try:
            for number, record in read_records(path, max_bytes=settings.max_upload_bytes):
                rows.append(record)
                labels.append(f"{name}:{number}")
                if len(rows) > settings.max_items_per_upload:
                    raise TetherError(f"{name} holds more than {settings.max_items_per_upload:,} rows", fix="split it into smaller files")
        except TetherError as exc:  # name the uploaded file, not the temporary copy
            exc.message = exc.message.replace(str(path), name)
            exc.args = (exc.message,)
            raise
    if not rows:
        raise TetherError(f"{name} holds no rows", fix="upload a file with one prompt and its completions per line")
    return rows, labels


@router.get("")
def admin_home(request: Request, session: DbSession, user: WebAdmin) -> Response:
    rows = []
    for project in session.scalars(select(Project).order_by(Project.id.desc())).all():
        progress = campaigns.project_progress(session, project=project) if project.source == "web" else None
        rows.append({"project": project, "progress": progress})
    return page(request, "admin_index.html", user=user, rows=rows)


@router.get("/projects/new")
def new_project_form(request: Request, user: WebAdmin) -> Response:
    return page(request, "admin_project_new.html", user=user, default_flags=", ".join(FLAG_CATEGORIES),
                default_aspects=", ".join(campaigns.DEFAULT_ASPECTS))


@router.post("/projects/new")
def create_project(
    session: DbSession,
    user: WebAdmin,
    settings: Settings,
    name: Annotated[str, Form(max_length=200)],
    kind: Annotated[str, Form()] = "pairwise",
    description: Annotated[str, Form(max_length=5000)] = "",
    guidelines: Annotated[str, Form()] = "",
    strength: Annotated[bool, Form()] = False,
    aspects: Annotated[str, Form()] = "",
    scale_low: Annotated[int, Form()] = 1,
    scale_high: Annotated[int, Form()] = 5,
    flags: Annotated[str, Form()] = "",
    critique: Annotated[bool, Form()] = False,
    rewrite: Annotated[bool, Form()] = False,
    overlap: Annotated[int, Form()] = 1,
    gold_percent: Annotated[float, Form()] = 0.0,
    ttl_minutes: Annotated[int, Form()] = 60,
    file: UploadFile | None = None,
) -> Response:
    project = campaigns.create_project(
        session, name=name, description=description, guidelines=guidelines,
        schema=schema_from_form(kind, strength, aspects, scale_low, scale_high, flags, critique, rewrite),
        overlap=overlap, gold_rate=gold_percent / 100, assignment_ttl_s=ttl_minutes * 60, actor=actor_of(user),
    )
    if file is not None and file.filename:
        rows, labels = upload_rows(file, settings)
        campaigns.add_items(session, project=project, rows=rows, where=labels, max_text_chars=settings.max_text_chars,
                             max_items=settings.max_items_per_upload, actor=actor_of(user))
    return RedirectResponse(f"/admin/projects/{project.id}", status_code=303)


@router.get("/projects/{project_id}")
def project_page(request: Request, project_id: IdPath, session: DbSession, user: WebAdmin, notice: str | None = None) -> Response:
    project = campaigns.get_project(session, project_id)
    guidelines = session.scalars(select(Guideline).where(Guideline.project_id == project.id).order_by(Guideline.version.desc())).all()
    schemas = session.scalars(select(LabelSchema).where(LabelSchema.project_id == project.id).order_by(LabelSchema.version.desc())).all()
    progress = campaigns.project_progress(session, project=project) if schemas else None
    return page(request, "admin_project.html", user=user, project=project, guidelines=guidelines, schemas=schemas,
                spec=schemas[0].spec if schemas else None, progress=progress, notice=notice)


@router.post("/projects/{project_id}/guidelines")
def new_guidelines(project_id: IdPath, session: DbSession, user: WebAdmin, text: Annotated[str, Form()] = "") -> Response:
    project = campaigns.get_project(session, project_id)
    guideline = campaigns.add_guideline_version(session, project=project, text=text, actor=actor_of(user))
    return RedirectResponse(f"/admin/projects/{project.id}?notice=guidelines+now+at+version+{guideline.version}", status_code=303)


@router.post("/projects/{project_id}/schema")
def new_schema(
    project_id: IdPath,
    session: DbSession,
    user: WebAdmin,
    strength: Annotated[bool, Form()] = False,
    aspects: Annotated[str, Form()] = "",
    scale_low: Annotated[int, Form()] = 1,
    scale_high: Annotated[int, Form()] = 5,
    flags: Annotated[str, Form()] = "",
    critique: Annotated[bool, Form()] = False,
    rewrite: Annotated[bool, Form()] = False,
) -> Response:
    project = campaigns.get_project(session, project_id)
    kind = campaigns.project_kind(session, project)
    schema = campaigns.add_schema_version(
        session, project=project, spec=schema_from_form(kind, strength, aspects, scale_low, scale_high, flags, critique, rewrite),
        actor=actor_of(user),
    )
    return RedirectResponse(f"/admin/projects/{project.id}?notice=label+schema+now+at+version+{schema.version}", status_code=303)


@router.post("/projects/{project_id}/settings")
def project_settings(
    project_id: IdPath,
    session: DbSession,
    user: WebAdmin,
    overlap: Annotated[int, Form()],
    gold_percent: Annotated[float, Form()],
    ttl_minutes: Annotated[int, Form()],
) -> Response:
    project = campaigns.get_project(session, project_id)
    campaigns.update_project(session, project=project, overlap=overlap, gold_rate=gold_percent / 100,
                              assignment_ttl_s=ttl_minutes * 60, actor=actor_of(user))
    return RedirectResponse(f"/admin/projects/{project.id}?notice=settings+saved", status_code=303)


@router.post("/projects/{project_id}/upload")
def upload(project_id: IdPath, session: DbSession, user: WebAdmin, settings: Settings, file: UploadFile) -> Response:
    project = campaigns.get_project(session, project_id)
    rows, labels = upload_rows(file, settings)
    counts = campaigns.add_items(session, project=project, rows=rows, where=labels, max_text_chars=settings.max_text_chars,
                                  max_items=settings.max_items_per_upload, actor=actor_of(user))
    notice = f"added {counts['items']} items ({counts['duplicates']} duplicates skipped)"
    return RedirectResponse(f"/admin/projects/{project.id}?notice={notice.replace(' ', '+')}", status_code=303)


@router.get("/users")
def users_page(request: Request, session: DbSession, user: WebAdmin) -> Response:
    users = accounts.login_users(session)
    return page(request, "admin_users.html", user=user, users=users, roles=accounts.LOGIN_ROLES, token=None, token_user=None)


@router.post("/users")
def add_user(
    session: DbSession,
    user: WebAdmin,
    settings: Settings,
    name: Annotated[str, Form(max_length=200)],
    role: Annotated[str, Form()],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    accounts.create_user(session, name=name, role=role, password=password, password_profile=settings.password_profile, actor=actor_of(user))
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/users/{user_id}")
def update_user(
    user_id: IdPath, session: DbSession, user: WebAdmin, role: Annotated[str, Form()], active: Annotated[bool, Form()] = False
) -> Response:
    target = session.get(User, user_id)
    if target is None or target.role == "external":
        raise NotFound(f"no user with id {user_id}", fix="pick a user from the list")
    if target.id == user.id and (role != "admin" or not active):
        raise TetherError("you cannot remove your own admin role or deactivate yourself", fix="ask another admin")
    accounts.set_role(session, user=target, role=role, active=active, actor=actor_of(user))
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/users/{user_id}/token")
def new_token(
    request: Request,
    user_id: IdPath,
    session: DbSession,
    user: WebAdmin,
    label: Annotated[str, Form(max_length=200)] = "",
    scope: Annotated[str, Form(max_length=20)] = "full",
    days: Annotated[int, Form(ge=1, le=accounts.MAX_TOKEN_DAYS)] = accounts.DEFAULT_TOKEN_DAYS,
) -> Response:
    target = session.get(User, user_id)
    if target is None or target.role == "external":
        raise NotFound(f"no user with id {user_id}", fix="pick a user from the list")
    # Audited as this admin's act (the actor), with the user as its subject.
    token = accounts.issue_token(session, user=target, label=label or "web", scope=scope, days=days, actor=actor_of(user))
    users = accounts.login_users(session)
    # Shown once, in this response only; the store keeps its sha256.
    return page(request, "admin_users.html", user=user, users=users, roles=accounts.LOGIN_ROLES, token=token, token_user=target.name,
                token_scope=scope, token_days=days)


@router.get("/audit")
def audit_page(request: Request, session: DbSession, user: WebAdmin, before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None) -> Response:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(200)
    if before:
        query = query.where(AuditEvent.id < before)
    events = session.scalars(query).all()
    return page(request, "admin_audit.html", user=user, events=events)
