"""Signing in and out. Sessions are signed HttpOnly, SameSite=Lax cookies (see tether.app.security)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from tether.app import security
from tether.app.deps import DbSession, OptionalWebUser, Settings, csrf_protect, page
from tether.app.service import authenticate
from tether.store.db import audit

router = APIRouter(dependencies=[Depends(csrf_protect)])

HOME_BY_ROLE = {"admin": "/admin", "reviewer": "/review", "annotator": "/annotate"}


def _safe_next(target: str | None) -> str | None:
    """Only same-site paths: never an absolute URL or a scheme-relative ``//host``."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


@router.get("/")
def home(user: OptionalWebUser) -> Response:
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse(HOME_BY_ROLE.get(user.role, "/annotate"), status_code=303)


@router.get("/login")
def login_form(request: Request, user: OptionalWebUser, next: str | None = None) -> Response:
    return page(request, "login.html", user=user, next=_safe_next(next) or "", error=None)


@router.post("/login")
def login(
    request: Request,
    session: DbSession,
    settings: Settings,
    name: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    user = authenticate(session, name=name, password=password, password_profile=settings.password_profile)
    if user is None:
        return page(request, "login.html", next=_safe_next(next) or "", error="Wrong name or password.", status_code=401)
    audit(session, "user.login", "user", user.id, actor_name=f"user:{user.name}")
    response = RedirectResponse(_safe_next(next) or HOME_BY_ROLE.get(user.role, "/annotate"), status_code=303)
    response.set_cookie(
        security.SESSION_COOKIE,
        security.make_session_cookie(settings.secret_key, user.id, user.password_hash),
        max_age=settings.session_ttl_s,
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies or request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path="/")
    return response
