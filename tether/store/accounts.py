"""Accounts in the store: users, passwords (argon2id), web sessions and API tokens; the CLI (``tether user``) and
the web app both go through these functions. Every write takes a keyword-only session and leaves an audit event. There is no default account and no default password: the first admin comes from
``tether user add NAME --role admin``.

Sessions and tokens live in the store, so ending one holds at once for every worker and host on it: logout ends
that session; a new password, a role change or deactivation ends all of the user's sessions; deactivation and a role
change also revoke the user's tokens (an annotate-only token survives a role change: its power does not follow the
role), so reactivating an account revives nothing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from importlib import resources

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import and_, bindparam, case, delete, or_, select
from sqlalchemy.orm import Session

from tether.errors import Conflict, NotFound, TetherError
from tether.store.db import audit
from tether.store.tables import TOKEN_SCOPES, ApiToken, User, WebSession, as_utc, name_key, utcnow

LOGIN_ROLES = ("admin", "reviewer", "annotator")
PRIVILEGED_ROLES = ("admin", "reviewer")
MAX_PASSWORD_CHARS = 1024
MAX_NAME_CHARS = 200
# An API token's lifetime: this many days unless its maker says otherwise, at most MAX_TOKEN_DAYS.
DEFAULT_TOKEN_DAYS = 90
MAX_TOKEN_DAYS = 3650


# --- the primitives: password hashes, session ids and API tokens (random; the store keeps their sha256) --------

PASSWORD_PROFILES = ("default", "cheapest")  # argon2id cost: default (RFC 9106 low memory), cheapest (tests only)
TOKEN_PREFIX = "tth_"
SESSION_PREFIX = "tts_"
# Shortest password: for annotators, and for admins and reviewers, whose accounts can change every project.
MIN_PASSWORD_CHARS = 8
MIN_PRIVILEGED_PASSWORD_CHARS = 12


@lru_cache(maxsize=2)
def _hasher(profile: str) -> PasswordHasher:
    if profile == "cheapest":
        return PasswordHasher.from_parameters(profiles.CHEAPEST)
    return PasswordHasher.from_parameters(profiles.RFC_9106_LOW_MEMORY)


def hash_password(password: str, profile: str = "default") -> str:
    return _hasher(profile).hash(password)


def verify_password(password_hash: str | None, password: str, profile: str = "default") -> bool:
    """True when ``password`` matches; a missing hash (an account without a password) never matches."""
    if not password_hash:
        # Spend the same time as a real check, so a wrong name and a wrong password look alike.
        _hasher(profile).hash(password)
        return False
    try:
        return _hasher(profile).verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str, profile: str = "default") -> bool:
    return _hasher(profile).check_needs_rehash(password_hash)


def new_session_id() -> str:
    """The random id a session cookie carries (256 bits); the store keeps only ``token_hash`` of it."""
    return SESSION_PREFIX + secrets.token_urlsafe(32)


def new_api_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """sha256 of an API token or a session id: what the store keeps (both are random, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


# --- names and passwords ------------------------------------------------------------------------------------------

# Unicode categories a login name may not hold: controls (NUL, escapes), format characters (zero-width space and
# joiners, bidi overrides), surrogates, private use, unassigned code points, and separators (spaces of any kind).
_REFUSED_IN_NAMES = {"Cc": "a control character", "Cf": "an invisible format character (e.g. zero-width)",
                     "Cs": "a lone surrogate", "Co": "a private-use character", "Cn": "an unassigned character",
                     "Zs": "a space", "Zl": "a line separator", "Zp": "a paragraph separator"}


def normalize_name(name: str) -> str:
    """A login name as stored: NFKC-normalized (fullwidth ``ａｌｉｃｅ`` is ``alice``), checked for characters that
    would make two names look alike or hide in logs. Raises TetherError naming the problem."""
    name = unicodedata.normalize("NFKC", (name or "").strip())
    if not name or len(name) > MAX_NAME_CHARS:
        raise TetherError(f"user names are 1..{MAX_NAME_CHARS} characters, got {len(name)}", fix="e.g. alice or a.smith")
    for char in name:
        what = _REFUSED_IN_NAMES.get(unicodedata.category(char))
        if what is not None or char.isspace():
            raise TetherError(f"the user name {name!r} holds {what or 'a space'} (U+{ord(char):04X})",
                              fix="use letters, digits and . _ - (e.g. alice or a.smith)")
    return name


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The packaged list of the most common passwords and stems (tether/store/data/common_passwords.txt)."""
    text = resources.files("tether.store").joinpath("data/common_passwords.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


# Rows of characters people walk along: a password that is a stretch of one (forwards or backwards) is refused.
_RUNS = ("0123456789", "abcdefghijklmnopqrstuvwxyz", "qwertyuiop", "asdfghjkl", "zxcvbnm", "1qaz2wsx3edc4rfv5tgb6yhn",
         "qazwsxedcrfvtgbyhnujmikolp", "!@#$%^&*()")
_DECORATION = re.compile(r"^[\W\d_]*(.*?)[\W\d_]*$")


def _weak_reason(folded: str) -> str | None:
    """Why a case-folded password is easy to guess, or None."""
    if folded in common_passwords():
        return "is on the list of the most common passwords"
    stem = _DECORATION.match(folded).group(1)
    if stem and stem in common_passwords():
        return f"is a common password ({stem!r}) with digits or symbols around it"
    for period in range(1, 5):
        if len(folded) > period and folded == (folded[:period] * (len(folded) // period + 1))[: len(folded)]:
            return "repeats a short pattern"
    laps = len(folded) // 8 + 2  # a walk may go round again (1234567890123)
    if any(folded in run * laps or folded in run[::-1] * laps for run in _RUNS):
        return "is a run of neighbouring keys or characters"
    return None


def check_password_rules(password: str, *, role: str, name: str) -> None:
    """Refuse a password that is easy to guess for this account. Annotators: 8+ characters; admins and reviewers:
    12+. For everyone: not whitespace only, not the user name nor containing it, not a common password."""
    minimum = MIN_PRIVILEGED_PASSWORD_CHARS if role in PRIVILEGED_ROLES else MIN_PASSWORD_CHARS
    fix = "choose a passphrase of a few unrelated words (e.g. four words and a number)"
    if not password.strip():
        raise TetherError("the password is empty or only spaces", fix=fix)
    if len(password) < minimum:
        raise TetherError(f"the password is shorter than {minimum} characters (the least for {role}s)", fix=fix)
    if len(password) > MAX_PASSWORD_CHARS:
        raise TetherError(f"the password is longer than {MAX_PASSWORD_CHARS} characters", fix="choose a shorter one")
    folded, key = name_key(password), name_key(name)
    if folded == key or (len(key) >= 3 and key in folded):
        raise TetherError("the password contains the user name", fix=fix)
    reason = _weak_reason(folded)
    if reason is not None:
        raise TetherError(f"the password {reason}", fix=fix)


# --- users --------------------------------------------------------------------------------------------------------


def _check_role(role: str) -> None:
    if role not in LOGIN_ROLES:
        raise TetherError(f"role must be one of {LOGIN_ROLES}, got {role!r}", fix="admin runs projects, reviewer adjudicates, annotator judges")


def create_user(
    session: Session, *, name: str, role: str, password: str, password_profile: str = "default", actor: str | None = None
) -> User:
    """A login account. The name is normalized and unique without regard to case; the password must pass
    ``check_password_rules`` for the role and is stored only as an argon2id hash."""
    name = normalize_name(name)
    _check_role(role)
    check_password_rules(password, role=role, name=name)
    key = name_key(name)
    clash = session.scalar(select(User.name).where(or_(User.name == name, User.name_key == key)))
    if clash is not None:
        same = "exists already" if clash == name else f"exists already as {clash!r} (names are compared without case)"
        raise Conflict(f"a user named {name!r} {same}", fix="choose another name")
    user = User(name=name, name_key=key, role=role, password_hash=hash_password(password, password_profile))
    session.add(user)
    session.flush()
    audit(session, "user.create", "user", user.id, actor_name=actor, name=name, role=role)
    return user


def login_users(session: Session) -> list[User]:
    """Every account that can sign in (not the external annotators of imported sets), by name."""
    return list(session.scalars(select(User).where(User.role != "external").order_by(User.name)))


def _by_name(name: str):
    """The login account named exactly ``name``, else the one whose key matches (``Alice`` finds ``alice``), else
    an imported annotator of that exact name."""
    exact = unicodedata.normalize("NFKC", (name or "").strip())
    key = name_key(exact)
    rank = case((and_(User.name == exact, User.role != "external"), 0), (User.name_key == key, 1), else_=2)
    return select(User).where(or_(User.name == exact, User.name_key == key)).order_by(rank).limit(1)


def find_user(session: Session, name: str) -> User | None:
    return session.scalar(_by_name(name))


def get_user_by_name(session: Session, name: str) -> User:
    user = find_user(session, name)
    if user is None:
        raise NotFound(f"no user named {name!r}", fix="see `tether user list`")
    return user


def can_sign_in(user: User | None) -> bool:
    return user is not None and user.active and user.role in LOGIN_ROLES


def check_login(user: User | None, password: str, password_profile: str = "default") -> bool:
    """Does ``password`` open ``user``'s account? A missing, inactive or imported user costs the same hash time as
    a wrong password, so timing does not tell which names exist."""
    if not can_sign_in(user):
        verify_password(None, password, password_profile)
        return False
    return verify_password(user.password_hash, password, password_profile)


def authenticate(session: Session, *, name: str, password: str, password_profile: str = "default") -> User | None:
    """The active user with this name and password, or None (no throttling: the web login adds it, tether.app.throttle)."""
    user = find_user(session, name)
    if not check_login(user, password, password_profile):
        return None
    if needs_rehash(user.password_hash, password_profile):
        user.password_hash = hash_password(password, password_profile)
    return user


def set_password(session: Session, *, user: User, password: str, password_profile: str = "default", actor: str | None = None) -> None:
    """A new password; every session of the user ends (API tokens stay: revoke them with ``revoke_tokens``)."""
    if user.role not in LOGIN_ROLES:
        raise TetherError(f"user {user.name!r} is an imported annotator and cannot sign in", fix="add a login account with `tether user add`")
    check_password_rules(password, role=user.role, name=user.name)
    store_password_hash(session, user=user, password_hash=hash_password(password, password_profile), actor=actor)


def store_password_hash(session: Session, *, user: User, password_hash: str, actor: str | None = None) -> None:
    """The store half of ``set_password``, for a caller that checked the rules and hashed outside its transaction
    (the web's own password change keeps the 0.2 s hash out of the store gate)."""
    user.password_hash = password_hash
    ended = end_sessions(session, user=user)
    audit(session, "user.password", "user", user.id, actor_name=actor, sessions_ended=ended)


def set_role(session: Session, *, user: User, role: str | None = None, active: bool | None = None, actor: str | None = None) -> User:
    """Change a login account's role or state. Either ends its sessions; deactivation revokes every token and a role
    change the full-role ones, so that reactivating or promoting the account later revives none of them."""
    if role is not None:
        _check_role(role)
    if user.role not in LOGIN_ROLES:
        raise TetherError(f"user {user.name!r} is an imported annotator (no login)", fix="add a login account with `tether user add`")
    changes: dict = {}
    if role is not None and role != user.role:
        changes["role"] = role
        user.role = role
    if active is not None and active != user.active:
        changes["active"] = active
        user.active = active
    if changes:
        changes["sessions_ended"] = end_sessions(session, user=user)
        if changes.get("active") is False:
            changes["tokens_revoked"] = _revoke(session, user=user)
        elif "role" in changes:
            changes["tokens_revoked"] = _revoke(session, user=user, scope="full")
        audit(session, "user.update", "user", user.id, actor_name=actor, **changes)
    return user


# --- web sessions -------------------------------------------------------------------------------------------------


def start_session(session: Session, *, user: User, ttl_s: int, address: str | None = None, now: datetime | None = None) -> str:
    """A new signed-in session for ``user``; returns the cookie value (shown to the browser only; the store keeps
    its sha256). Expired sessions of anyone are swept here, so the table stays small without a cron job."""
    now = now or utcnow()
    expired = select(WebSession.id).where(WebSession.expires_at < now).with_for_update(skip_locked=True)
    session.execute(delete(WebSession).where(WebSession.id.in_(expired)))
    cookie = new_session_id()
    session.add(WebSession(id_hash=token_hash(cookie), user_id=user.id, created_at=now,
                           expires_at=now + timedelta(seconds=ttl_s), address=(address or "")[:64] or None))
    return cookie


_SESSION_AND_USER = select(WebSession.expires_at, User).join(User, User.id == WebSession.user_id).where(WebSession.id_hash == bindparam("id_hash"))


def user_for_session(session: Session, cookie: str | None, now: datetime | None = None) -> User | None:
    """The user of a live session cookie, or None (unknown, ended, expired, or the account can no longer sign in)."""
    if not cookie or not cookie.startswith(SESSION_PREFIX) or len(cookie) > 100:
        return None
    row = session.execute(_SESSION_AND_USER, {"id_hash": token_hash(cookie)}).first()
    if row is None:
        return None
    expires_at, user = row
    if as_utc(expires_at) <= (now or utcnow()) or not can_sign_in(user):
        return None
    return user


def end_session(session: Session, cookie: str | None) -> int | None:
    """Sign out one browser; returns the user id of the ended session, or None when there was none."""
    if not cookie:
        return None
    row = session.scalar(select(WebSession).where(WebSession.id_hash == token_hash(cookie)))
    if row is None:
        return None
    session.delete(row)
    return row.user_id


def end_sessions(session: Session, *, user: User) -> int:
    """End every session of ``user``; returns how many there were."""
    return session.execute(delete(WebSession).where(WebSession.user_id == user.id)).rowcount or 0


# --- API tokens ---------------------------------------------------------------------------------------------------


def issue_token(
    session: Session, *, user: User, label: str = "", scope: str = "full", days: int = DEFAULT_TOKEN_DAYS, actor: str | None = None,
    now: datetime | None = None,
) -> str:
    """A new API token for ``user``, valid for ``days``. ``scope`` "full" acts with the user's role; "annotate"
    only takes items and answers them (for labeling pipelines). Only its sha256 is stored: the caller must show
    the token now or never. The audit event's actor is whoever minted it (an admin for another user); its subject
    is the user (object ``user``/id, and ``name``: the field a purge pseudonymizes)."""
    if not can_sign_in(user):
        raise TetherError(f"user {user.name!r} cannot hold API tokens (inactive or not a login account)", fix="activate the user first")
    if scope not in TOKEN_SCOPES:
        raise TetherError(f"token scope must be one of {TOKEN_SCOPES}, got {scope!r}", fix="annotate: take items and answer; full: the user's role")
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise TetherError(f"a token lasts 1..{MAX_TOKEN_DAYS} days, got {days}", fix=f"e.g. --days {DEFAULT_TOKEN_DAYS}")
    now = now or utcnow()
    token = new_api_token()
    row = ApiToken(user_id=user.id, token_hash=token_hash(token), label=(label or "")[:200], scope=scope,
                   created_at=now, expires_at=now + timedelta(days=days), issued_by=actor or _cli_actor())
    session.add(row)
    session.flush()
    audit(session, "token.issue", "user", user.id, actor_name=row.issued_by, name=user.name, token_id=row.id,
          label=row.label, scope=scope, expires_at=row.expires_at.isoformat())
    return token


def _cli_actor() -> str:
    from tether.store.db import actor

    return actor()


@dataclass
class TokenInfo:
    id: int
    label: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    issued_by: str | None
    state: str  # live | expired | revoked


def list_tokens(session: Session, *, user: User, now: datetime | None = None) -> list[TokenInfo]:
    now = now or utcnow()
    rows = session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)).all()
    return [TokenInfo(r.id, r.label, r.scope, r.created_at, r.expires_at, r.last_used_at, r.issued_by,
                      "revoked" if r.revoked else "expired" if _expired(r, now) else "live") for r in rows]


def _revoke(session: Session, *, user: User, token_id: int | None = None, scope: str | None = None) -> int:
    query = select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked.is_(False))
    if token_id is not None:
        query = query.where(ApiToken.id == token_id)
    if scope is not None:
        query = query.where(ApiToken.scope == scope)
    rows = session.scalars(query).all()
    for row in rows:
        row.revoked = True
    return len(rows)


def revoke_tokens(session: Session, *, user: User, token_id: int | None = None, actor: str | None = None) -> int:
    """Revoke all of ``user``'s tokens, or the one with ``token_id``; returns how many were live."""
    if token_id is not None and session.scalar(select(ApiToken.id).where(ApiToken.id == token_id, ApiToken.user_id == user.id)) is None:
        raise NotFound(f"user {user.name!r} has no token with id {token_id}", fix=f"see `tether user tokens {user.name}`")
    count = _revoke(session, user=user, token_id=token_id)
    if count:
        audit(session, "token.revoke", "user", user.id, actor_name=actor, name=user.name, count=count, token_id=token_id)
    return count


# A token's last use is written at most this often, so reading the API does not turn every call into a write.
LAST_USED_RESOLUTION = timedelta(minutes=5)


# Built once: on every API call, building the statement and its cache key cost more CPU than running it on SQLite.
_TOKEN_AND_USER = select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.token_hash == bindparam("token_hash"))


def _expired(row: ApiToken, now: datetime) -> bool:
    return row.expires_at is None or as_utc(row.expires_at) <= now  # a token without an expiry was made by hand: refused


def user_for_token(session: Session, token: str, now: datetime | None = None) -> tuple[User, str] | None:
    """``(user, scope)`` of a live API token (not revoked, not expired, its holder active), or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = session.execute(_TOKEN_AND_USER, {"token_hash": token_hash(token)}).first()
    if row is None:
        return None
    api_token, user = row
    now = now or utcnow()
    if api_token.revoked or _expired(api_token, now) or not can_sign_in(user):
        return None
    if api_token.last_used_at is None or now - as_utc(api_token.last_used_at) > LAST_USED_RESOLUTION:
        api_token.last_used_at = now
    return user, api_token.scope

