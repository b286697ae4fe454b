"""Store functions for accounts: users, passwords and API tokens. Every write takes a keyword-only session and
leaves an audit event. There is no default account and no default password: the first admin comes from
``tether user add NAME --role admin``.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from tether.app import security
from tether.errors import TetherError
from tether.store.annotation import Conflict, NotFound
from tether.store.db import audit
from tether.store.tables import ApiToken, User, utcnow

LOGIN_ROLES = ("admin", "reviewer", "annotator")
MAX_PASSWORD_CHARS = 1024


def check_password_rules(password: str) -> None:
    if len(password) < security.MIN_PASSWORD_CHARS:
        raise TetherError(f"the password is shorter than {security.MIN_PASSWORD_CHARS} characters", fix="choose a longer one (a passphrase is best)")
    if len(password) > MAX_PASSWORD_CHARS:
        raise TetherError(f"the password is longer than {MAX_PASSWORD_CHARS} characters", fix="choose a shorter one")


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200 or any(c.isspace() for c in name):
        raise TetherError(f"user names are 1..200 characters without spaces, got {name!r}", fix="e.g. alice or a.smith")
    return name


def create_user(
    session: Session, *, name: str, role: str, password: str, password_profile: str = "default", actor: str | None = None
) -> User:
    """A login account. The password is stored only as an argon2id hash."""
    name = _check_name(name)
    if role not in LOGIN_ROLES:
        raise TetherError(f"role must be one of {LOGIN_ROLES}, got {role!r}", fix="admin runs projects, reviewer adjudicates, annotator judges")
    check_password_rules(password)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise Conflict(f"a user named {name!r} exists already", fix="choose another name")
    user = User(name=name, role=role, password_hash=security.hash_password(password, password_profile))
    session.add(user)
    session.flush()
    audit(session, "user.create", "user", user.id, actor_name=actor, name=name, role=role)
    return user


def get_user_by_name(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}", fix="see `tether user list`")
    return user


def authenticate(session: Session, *, name: str, password: str, password_profile: str = "default") -> User | None:
    """The active user with this name and password, or None. A wrong name costs the same time as a wrong password."""
    user = session.scalar(select(User).where(User.name == (name or "").strip()))
    if user is None or not user.active or user.role not in LOGIN_ROLES:
        security.verify_password(None, password, password_profile)
        return None
    if not security.verify_password(user.password_hash, password, password_profile):
        return None
    if security.needs_rehash(user.password_hash, password_profile):
        user.password_hash = security.hash_password(password, password_profile)
    return user


def set_password(session: Session, *, user: User, password: str, password_profile: str = "default", actor: str | None = None) -> None:
    """A new password; every session made with the old one ends (the cookie carries a fingerprint of the hash)."""
    check_password_rules(password)
    user.password_hash = security.hash_password(password, password_profile)
    audit(session, "user.password", "user", user.id, actor_name=actor)


def set_role(session: Session, *, user: User, role: str | None = None, active: bool | None = None, actor: str | None = None) -> User:
    if role is not None and role not in LOGIN_ROLES:
        raise TetherError(f"role must be one of {LOGIN_ROLES}, got {role!r}", fix="pick admin, reviewer or annotator")
    changes = {}
    if role is not None and role != user.role:
        changes["role"] = role
        user.role = role
    if active is not None and active != user.active:
        changes["active"] = active
        user.active = active
    if changes:
        audit(session, "user.update", "user", user.id, actor_name=actor, **changes)
    return user


def issue_token(session: Session, *, user: User, label: str = "", actor: str | None = None) -> str:
    """A new API token for ``user``. Only its sha256 is stored: the caller must show the token now or never."""
    if not user.active or user.role not in LOGIN_ROLES:
        raise TetherError(f"user {user.name!r} cannot hold API tokens (inactive or not a login account)", fix="activate the user first")
    token = security.new_api_token()
    row = ApiToken(user_id=user.id, token_hash=security.token_hash(token), label=(label or "")[:200])
    session.add(row)
    session.flush()
    audit(session, "token.issue", "user", user.id, actor_name=actor, token_id=row.id, label=row.label)
    return token


def revoke_tokens(session: Session, *, user: User, actor: str | None = None) -> int:
    rows = session.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked.is_(False))).all()
    for row in rows:
        row.revoked = True
    if rows:
        audit(session, "token.revoke", "user", user.id, actor_name=actor, count=len(rows))
    return len(rows)


# A token's last use is written at most this often, so reading the API does not turn every call into a write.
LAST_USED_RESOLUTION = timedelta(minutes=5)


# Built once: on every API call, building the statement and its cache key cost more CPU than running it on SQLite.
_TOKEN_AND_USER = select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.token_hash == bindparam("token_hash"))


def user_for_token(session: Session, token: str) -> User | None:
    """The active user holding this unrevoked API token, or None."""
    if not token.startswith(security.TOKEN_PREFIX):
        return None
    row = session.execute(_TOKEN_AND_USER, {"token_hash": security.token_hash(token)}).first()
    if row is None:
        return None
    api_token, user = row
    if api_token.revoked or not user.active or user.role not in LOGIN_ROLES:
        return None
    now = utcnow()
    last = api_token.last_used_at
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=now.tzinfo)
    if last is None or now - last > LAST_USED_RESOLUTION:
        api_token.last_used_at = now
    return user
