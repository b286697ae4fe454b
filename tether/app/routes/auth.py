"""Signing in and out, and changing one's own password. A session is a row in the store named by a random HttpOnly,
SameSite=Lax cookie (see tether.store.accounts); every password check is throttled per account and per client address
(tether.app.throttle).

A password check takes three steps, so its hash (0.2 s of CPU) runs outside the store gate: (1) refuse a throttled
key at once, else count the attempt and read the account; (2) check the password; (3) forgive the attempt and act,
or record the failure. The account may change between (1) and (3): a new password or deactivation wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tether.app import security, throttle
from tether.app.deps import (
    DbSession,
    LoginRequired,
    OptionalWebUser,
    Settings,
    WebUser,
    csrf_protect,
    in_store,
    page,
)
from tether.app.settings import AppSettings
from tether.errors import TetherError
from tether.store import accounts
from tether.store.db import audit
from tether.store.tables import User

router = APIRouter(dependencies=[Depends(csrf_protect)])

HOME_BY_ROLE = {"admin": "/admin", "reviewer": "/review", "annotator": "/annotate"}


def _safe_next(target: str | None) -> str | None:
    """Only same-site paths: never an absolute URL or a scheme-relative ``//host``."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


def _set_session_cookie(response: Response, request: Request, settings: AppSettings, cookie: str) -> None:
    response.set_cookie(security.SESSION_COOKIE, cookie, max_age=settings.session_ttl_s, httponly=True, samesite="lax",
                        secure=settings.secure_cookies or request.url.scheme == "https", path="/")


@dataclass
class Check:
    """Steps (1) and (2) of a password check."""

    address: str
    keys: list
    wait: int | None  # seconds to wait: a key was locked and nothing was checked
    found: User | None  # the account as read in step (1), detached
    right: bool
    locked_s: float


def _address(request: Request) -> str:
    return throttle.client_address(request.client.host if request.client else None)


def _attempt(session: Session, check: Check, name: str) -> None:
    check.wait, check.locked_s = throttle.attempt(session, check.keys, throttle.store_now(session))
    if check.wait is None:
        check.found = accounts.find_user(session, name)


def _still_right(session: Session, check: Check) -> User | None:
    """Step (3): the account, when the password was right and the account is as it was checked."""
    user = session.get(User, check.found.id) if check.found is not None else None
    if check.right and accounts.can_sign_in(user) and user.password_hash == check.found.password_hash:
        throttle.forgive(session, check.keys)
        return user
    return None


def _failed(session: Session, check: Check, action: str) -> None:
    now = throttle.store_now(session)
    locked = max(check.locked_s, throttle.failed(session, check.keys, now))
    throttle.sweep(session, now)
    user = session.get(User, check.found.id) if check.found is not None else None
    # The typed name is kept only when it names an account: people type their password into the name field.
    audit(session, action, "user", user.id if user else None, actor_name=f"address:{check.address}",
          name=user.name if user else None, address=check.address, locked_s=locked)


def _throttled(request: Request, template: str, wait: int, **context) -> Response:
    response = page(request, template, status_code=429,
                    error=f"Too many failed sign-ins for this name or from this address. Try again in {wait} s.", **context)
    response.headers["Retry-After"] = str(wait)
    return response


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
    """Every way to fail answers the same words. An admin or reviewer whose password no longer meets the rules (set
    before them, or before a promotion) is signed in and sent to change it."""
    address = _address(request)
    check = Check(address, throttle.keys_for(name, address, settings.secret_key), None, None, False, 0.0)
    await in_store(request, lambda session: _attempt(session, check, name))
    if check.wait is not None:
        return _throttled(request, "login.html", check.wait, next=_safe_next(next) or "")
    check.right = await run_in_threadpool(accounts.check_login, check.found, password, settings.password_profile)

    def after(session: Session) -> tuple[str, str, bool] | None:
        user = _still_right(session, check)
        if user is None:
            _failed(session, check, "user.login_failed")
            return None
        if accounts.needs_rehash(user.password_hash, settings.password_profile):
            user.password_hash = accounts.hash_password(password, settings.password_profile)
        cookie = accounts.start_session(session, user=user, ttl_s=settings.session_ttl_s, address=address)
        audit(session, "user.login", "user", user.id, actor_name=f"user:{user.name}", address=address)
        try:
            accounts.check_password_rules(password, role=user.role, name=user.name)
            weak = False
        except TetherError:
            weak = True
        return cookie, user.role, weak

    opened = await in_store(request, after)
    if opened is None:
        return page(request, "login.html", next=_safe_next(next) or "", error="Wrong name or password.", status_code=401)
    cookie, role, weak = opened
    target = "/account?weak=1" if weak else _safe_next(next) or HOME_BY_ROLE.get(role, "/annotate")
    response = RedirectResponse(target, status_code=303)
    _set_session_cookie(response, request, settings, cookie)
    return response


@router.post("/logout")
def logout(request: Request, session: DbSession) -> Response:
    """End this browser's session in the store: a copy of the cookie taken before opens nothing afterwards."""
    user_id = accounts.end_session(session, request.cookies.get(security.SESSION_COOKIE))
    if user_id is not None:
        user = session.get(User, user_id)
        audit(session, "user.logout", "user", user_id, actor_name=f"user:{user.name}" if user else None)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path="/")
    return response


def _rules_hint(role: str) -> str:
    minimum = accounts.MIN_PRIVILEGED_PASSWORD_CHARS if role in accounts.PRIVILEGED_ROLES else accounts.MIN_PASSWORD_CHARS
    return f"{minimum}+ characters; not your name, not a common password"


@router.get("/account")
def account_page(request: Request, user: WebUser, weak: bool = False, changed: bool = False) -> Response:
    notice = None
    if weak:
        notice = f"Your password no longer meets the rules for {user.role}s ({_rules_hint(user.role)}). Please choose a new one."
    if changed:
        notice = "Password changed. Your other sessions have ended."
    return page(request, "account.html", user=user, error=None, notice=notice, hint=_rules_hint(user.role))


@router.post("/account/password")
async def change_password(
    request: Request,
    settings: Settings,
    current_password: Annotated[str, Form(max_length=1024)],
    new_password: Annotated[str, Form(max_length=1024)],
    new_password_again: Annotated[str, Form(max_length=1024)],
) -> Response:
    """One's own new password: the current one is checked (and throttled) as at sign-in; every other session of the
    account ends and this browser gets a fresh one."""
    cookie = request.cookies.get(security.SESSION_COOKIE)
    address = _address(request)
    check = Check(address, [], None, None, False, 0.0)

    def before(session: Session) -> User | None:
        user = accounts.user_for_session(session, cookie)
        if user is not None:
            check.keys = throttle.keys_for(user.name, address, settings.secret_key)
            _attempt(session, check, user.name)
        return user

    user = await in_store(request, before)
    if user is None:
        raise LoginRequired()
    context = {"user": user, "notice": None, "hint": _rules_hint(user.role)}
    if check.wait is not None:
        return _throttled(request, "account.html", check.wait, **context)
    check.right = await run_in_threadpool(accounts.check_login, check.found, current_password, settings.password_profile)
    problem, new_hash = None, None
    if check.right:
        try:
            if new_password != new_password_again:
                raise TetherError("the two new passwords differ", fix="type the same new password twice")
            accounts.check_password_rules(new_password, role=user.role, name=user.name)
            new_hash = await run_in_threadpool(accounts.hash_password, new_password, settings.password_profile)
        except TetherError as exc:
            problem = f"{exc.message}; {exc.fix}" if exc.fix else exc.message

    def after(session: Session) -> str | None:
        account = _still_right(session, check)
        if account is None:
            _failed(session, check, "user.password_failed")
            return None
        if problem is not None:  # the current password was right: not a failed guess, nothing changes
            return None
        accounts.store_password_hash(session, user=account, password_hash=new_hash, actor=f"user:{account.name}")
        return accounts.start_session(session, user=account, ttl_s=settings.session_ttl_s, address=address)

    fresh = await in_store(request, after)
    if fresh is None:
        error = problem if check.right and problem else "The current password is wrong."
        return page(request, "account.html", status_code=400 if problem else 401, error=error, **context)
    response = RedirectResponse("/account?changed=1", status_code=303)
    _set_session_cookie(response, request, settings, fresh)
    return response
