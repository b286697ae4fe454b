"""Annotated dependency aliases: the store session, the signed-in user (web) or token holder (API), role checks,
CSRF checks, and the page renderer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tether.app import security
from tether.app.settings import AppSettings
from tether.errors import Forbidden, TetherError
from tether.store.db import session_scope
from tether.store.tables import User

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
T = TypeVar("T")


class LoginRequired(Exception):
    """No valid session: the web pages redirect to the login form (the API answers 401)."""


class CsrfRefused(TetherError):
    """A form without a valid CSRF token (HTTP 403)."""


class Unauthorized(TetherError):
    """An API call without a valid token (HTTP 401)."""


# Dependencies that do no I/O are ``async``: FastAPI runs them on the event loop instead of a worker thread.
async def get_settings(request: Request) -> AppSettings:
    return request.app.state.settings


Settings = Annotated[AppSettings, Depends(get_settings)]


def db_gate(settings: AppSettings) -> anyio.Semaphore:
    """How many requests may work in the store at once, in this process.

    Each request's store work runs in worker threads, in several hops (authentication, then the endpoint). A
    request that holds the SQLite write lock, or a pooled PostgreSQL connection, and then waits for a free worker
    thread would deadlock with threads that wait for that lock or connection. The gate is taken on the event loop
    *before* any of that, so waiting requests hold nothing. SQLite admits one writer at a time and every Tether
    transaction takes the write lock at BEGIN (db.py), so its gate is 1: requests queue here in order instead of
    polling in SQLite's busy handler, which sleeps in growing steps of up to 100 ms. PostgreSQL gets
    ``db_concurrency`` (below its connection pool and the worker threads).
    """
    if settings.database_url.startswith("sqlite"):
        return anyio.Semaphore(1)
    return anyio.Semaphore(settings.db_concurrency)


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One transaction per request, committed before the response is sent (``scope="function"``)."""
    async with request.app.state.db_gate:
        scope = session_scope(request.app.state.settings.database_url)
        session = scope.__enter__()  # makes a Session: no I/O until the first query
        try:
            yield session
        except BaseException as exc:
            await run_in_threadpool(scope.__exit__, type(exc), exc, exc.__traceback__)
            raise
        await run_in_threadpool(scope.__exit__, None, None, None)


DbSession = Annotated[Session, Depends(get_session, scope="function")]


def actor_of(user: User, via: str = "user") -> str:
    return f"{via}:{user.name}"


# --- web (cookie) -------------------------------------------------------------------------------------------------


def optional_web_user(request: Request, session: DbSession) -> User | None:
    from tether.store.accounts import user_for_session

    user = user_for_session(session, request.cookies.get(security.SESSION_COOKIE))
    if user is None:
        return None
    # What error pages show in their header; a plain copy, since a rollback expires the ORM object.
    request.state.user = SimpleNamespace(name=user.name, role=user.role)
    return user


OptionalWebUser = Annotated[User | None, Depends(optional_web_user)]


def user_for_error_page(request: Request) -> SimpleNamespace | None:
    """The signed-in user as the request's dependencies found it (no store access: error pages stay cheap)."""
    return getattr(request.state, "user", None)


async def web_user(user: OptionalWebUser) -> User:
    if user is None:
        raise LoginRequired()
    return user


WebUser = Annotated[User, Depends(web_user)]


async def web_reviewer(user: WebUser) -> User:
    if user.role not in ("admin", "reviewer"):
        raise Forbidden("this page is for reviewers and admins", fix="ask an admin for the reviewer role")
    return user


async def web_admin(user: WebUser) -> User:
    if user.role != "admin":
        raise Forbidden("this page is for admins", fix="ask an admin if you need access")
    return user


WebReviewer = Annotated[User, Depends(web_reviewer)]
WebAdmin = Annotated[User, Depends(web_admin)]


async def csrf_protect(request: Request) -> None:
    """Refuse any state-changing web request whose CSRF token does not match the visitor's CSRF cookie."""
    if request.method in SAFE_METHODS:
        return
    submitted = request.headers.get(security.CSRF_HEADER)
    if not submitted:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get(security.CSRF_FIELD)
            submitted = value if isinstance(value, str) else None
    if not security.csrf_ok(request.app.state.settings.secret_key, request.cookies.get(security.CSRF_COOKIE), submitted):
        raise CsrfRefused(
            "the form was refused: its security token is missing or stale (or it came from another site)",
            fix="reload the page and submit again",
        )


def csrf_value(request: Request) -> str:
    """The CSRF token for forms on this page (made from the visitor's CSRF cookie, set by the middleware)."""
    return security.csrf_token(request.app.state.settings.secret_key, request.scope["state"]["csrf_cookie"])


def page(request: Request, template: str, user: User | None = None, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a template with what every page needs: the user, the CSRF token and the flash message."""
    templates = request.app.state.templates
    context.update({"user": user, "csrf_token": csrf_value(request), "csrf_field": security.CSRF_FIELD})
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


# --- API (bearer token) -------------------------------------------------------------------------------------------


def token_holder(session: Session, authorization: str) -> tuple[User, str]:
    """``(user, scope)`` of the bearer token of an ``Authorization`` header; 401 without a live one."""
    from tether.store.accounts import user_for_token

    scheme, _, token = authorization.partition(" ")
    found = user_for_token(session, token.strip()) if scheme.lower() == "bearer" else None
    if found is None:
        raise Unauthorized(
            "this API needs a valid token: send 'Authorization: Bearer <token>' (an expired or revoked token is refused)",
            fix="make one with `tether user token NAME`",
        )
    return found


def api_user(request: Request, session: DbSession) -> User:
    user, request.state.token_scope = token_holder(session, request.headers.get("authorization", ""))
    return user


ApiUser = Annotated[User, Depends(api_user)]


async def in_store(request: Request, work: Callable[[Session], T]) -> T:
    """``work(session)`` in one transaction and one worker-thread hop, under the store gate.

    For calls that must not hold the gate for long (sign-in hashes its password between two of these) and for the
    annotators' two hot calls. Through ``DbSession`` a request makes several hops while it holds the gate (token,
    endpoint, commit), and each return to the event loop queues behind the other requests' parsing; under load
    that queueing, multiplied by the SQLite gate, made most of the tail. ``work`` must return plain data or loaded
    objects (the session is closed afterwards).
    """
    url = request.app.state.settings.database_url

    def run() -> T:
        with session_scope(url) as session:
            return work(session)

    async with request.app.state.db_gate:
        return await run_in_threadpool(run)


async def as_token_holder(request: Request, work: Callable[[Session, User], T]) -> T:
    """``work(session, user)`` for the token's holder (any scope: annotate tokens may take items and answer them),
    in one hop (see ``in_store``)."""
    authorization = request.headers.get("authorization", "")
    return await in_store(request, lambda session: work(session, token_holder(session, authorization)[0]))


def _full_scope(request: Request) -> None:
    if getattr(request.state, "token_scope", "full") != "full":
        raise Forbidden("this token may only take items and answer them (scope annotate)",
                        fix="use a full token: `tether user token NAME --scope full`")


async def api_reviewer(request: Request, user: ApiUser) -> User:
    _full_scope(request)
    if user.role not in ("admin", "reviewer"):
        raise Forbidden("this API is for reviewers and admins", fix="use a reviewer's or an admin's token")
    return user


async def api_admin(request: Request, user: ApiUser) -> User:
    _full_scope(request)
    if user.role != "admin":
        raise Forbidden("this API is for admins", fix="use an admin's token")
    return user


ApiReviewer = Annotated[User, Depends(api_reviewer)]
ApiAdmin = Annotated[User, Depends(api_admin)]


# --- input that cannot be stored ----------------------------------------------------------------------------------


def _unstorable(where: str, key: str, value: Any) -> dict[str, Any] | None:
    from tether.checks.inputs import find_unstorable

    problem = find_unstorable(key, "a field name") or find_unstorable(value, key)
    return None if problem is None else {"loc": (where, key), "msg": problem, "type": "value_error"}


async def storable_input(request: Request) -> None:
    """Every request's query string and form fields (file names included) pass ``tether.checks.inputs`` first: NUL and
    lone surrogates are refused (422 for the API, 400 for pages) before a route reads them. JSON bodies are
    checked by their schemas (``tether.app.schemas.Body``), uploaded files by the importer."""
    from fastapi.exceptions import RequestValidationError

    problems = [_unstorable("query", k, v) for k, v in request.query_params.multi_items()]
    content_type = request.headers.get("content-type", "")
    if request.method not in SAFE_METHODS and content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        for key, value in form.multi_items():
            problems.append(_unstorable("form", key, value if isinstance(value, str) else (value.filename or "")))
    found = [p for p in problems if p is not None]
    if found:
        raise RequestValidationError(found[:1])
