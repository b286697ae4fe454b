"""Signing in and out. A session is a row in the store named by a random HttpOnly, SameSite=Lax cookie (see
tether.app.service); sign-in is throttled per account and per client address (tether.app.throttle)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tether.app import security, service, throttle
from tether.app.deps import DbSession, OptionalWebUser, Settings, csrf_protect, in_store, page
from tether.store.db import audit
from tether.store.tables import User

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
async def login(
    request: Request,
    settings: Settings,
    name: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Three steps, so the password hash (0.2 s of CPU) runs outside the store gate: (1) refuse a throttled key at
    once, else count this attempt and read the account; (2) check the password; (3) forgive the attempt and open a
    session, or record the failure. Every way to fail answers the same words."""
    address = throttle.client_address(request.client.host if request.client else None)
    keys = throttle.keys_for(name, address, settings.secret_key)

    def before(session: Session) -> tuple[int | None, User | None, float]:
        wait, locked = throttle.attempt(session, keys, throttle.store_now(session))
        if wait is not None:
            return wait, None, 0.0
        return None, service.find_user(session, name), locked

    wait, found, locked_s = await in_store(request, before)
    if wait is not None:
        response = page(request, "login.html", next=_safe_next(next) or "", status_code=429,
                        error=f"Too many failed sign-ins for this name or from this address. Try again in {wait} s.")
        response.headers["Retry-After"] = str(wait)
        return response
    right = await run_in_threadpool(service.check_login, found, password, settings.password_profile)

    def after(session: Session) -> tuple[str, str] | None:
        user = session.get(User, found.id) if found is not None else None
        # The account may have changed while its password was checked: a new password or deactivation wins.
        if right and service.can_sign_in(user) and user.password_hash == found.password_hash:
            throttle.forgive(session, keys)
            if security.needs_rehash(user.password_hash, settings.password_profile):
                user.password_hash = security.hash_password(password, settings.password_profile)
            cookie = service.start_session(session, user=user, ttl_s=settings.session_ttl_s, address=address)
            audit(session, "user.login", "user", user.id, actor_name=f"user:{user.name}", address=address)
            return cookie, user.role
        now = throttle.store_now(session)
        locked = max(locked_s, throttle.failed(session, keys, now))
        throttle.sweep(session, now)
        # The typed name is kept only when it names an account: people type their password into the name field.
        audit(session, "user.login_failed", "user", user.id if user else None, actor_name=f"address:{address}",
              name=user.name if user else None, address=address, locked_s=locked)
        return None

    opened = await in_store(request, after)
    if opened is None:
        return page(request, "login.html", next=_safe_next(next) or "", error="Wrong name or password.", status_code=401)
    cookie, role = opened
    response = RedirectResponse(_safe_next(next) or HOME_BY_ROLE.get(role, "/annotate"), status_code=303)
    response.set_cookie(
        security.SESSION_COOKIE,
        cookie,
        max_age=settings.session_ttl_s,
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies or request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout(request: Request, session: DbSession) -> Response:
    """End this browser's session in the store: a copy of the cookie taken before opens nothing afterwards."""
    user_id = service.end_session(session, request.cookies.get(security.SESSION_COOKIE))
    if user_id is not None:
        user = session.get(User, user_id)
        audit(session, "user.logout", "user", user_id, actor_name=f"user:{user.name}" if user else None)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path="/")
    return response
