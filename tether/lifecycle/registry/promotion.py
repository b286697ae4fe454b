"""Approvals and promotion: an admin of the store approves a version; promotion to ``champion`` needs every gate
to pass and that approval, and refuses versions that rest on purged data."""

from __future__ import annotations

from typing import Any

from tether.errors import TetherError
from tether.lifecycle.registry.card import model_card
from tether.lifecycle.registry.common import _actor, _audit, _client, _figures, _now, _ref, _resolve
from tether.lifecycle.registry.gates import check_gates, gates_for
from tether.lifecycle.registry.versions import show
from tether.lifecycle.registry.walk import purge_problems


def _admin(session: Any, name: str) -> Any:
    from sqlalchemy import select

    from tether.store.tables import User

    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise TetherError(f"no user named {name!r} in the store", fix="an admin approves: create one with the admin pages or `tether serve --create-admin`")
    if user.role != "admin" or not user.active:
        raise TetherError(f"{name!r} is not an active admin (role: {user.role})", fix="only a user with role admin can approve a model version")
    return user


PURGED_FIX = "retrain on a new snapshot of the data that remains (`tether data snapshot SET`) and register that model"


def approve(ws: Any, ref: str, *, admin: str, password: str | None = None, note: str = "") -> dict[str, Any]:
    """Record an admin's approval of a version (audit event ``registry.approve`` and tags).

    When the admin has a password in the store, ``password`` must match it. A version trained on purged data
    (``purge_problems``) is refused.
    """
    from tether.store.db import audit, session_scope

    client = _client(ws.root)
    mv = _resolve(client, ref)
    purged = purge_problems(ws, _ref(mv))
    if purged:
        _audit(ws, "registry.approve_refused", _ref(mv), admin=admin, reasons=purged)
        raise TetherError(f"cannot approve {_ref(mv)}:\n  - " + "\n  - ".join(purged), fix=PURGED_FIX)
    with session_scope(ws.database_url) as session:
        user = _admin(session, admin)
        if user.password_hash:
            if password is None:
                raise TetherError(f"approving as {admin!r} needs their password", fix="pass --password or set TETHER_PASSWORD")
            from argon2 import PasswordHasher
            from argon2.exceptions import InvalidHashError, VerificationError

            try:
                PasswordHasher().verify(user.password_hash, password)
            except (VerificationError, InvalidHashError):
                raise TetherError(f"wrong password for {admin!r}", fix="try again") from None
        at = _now()
        figures = _figures(dict(mv.tags))
        audit(session, "registry.approve", "model_version", _ref(mv), admin=admin, note=note, figures=figures)
    client.set_model_version_tag(mv.name, mv.version, "tether.approved_by", admin)
    client.set_model_version_tag(mv.name, mv.version, "tether.approved_at", at)
    if note:
        client.set_model_version_tag(mv.name, mv.version, "tether.approval_note", note[:2000])
    return {"version": _ref(mv), "approved_by": admin, "approved_at": at}


def approvals(ws: Any, ref: str) -> list[dict[str, Any]]:
    """The approvals of a version recorded in the store, oldest first, each by a user who is an admin now."""
    from sqlalchemy import select

    from tether.store.db import session_scope
    from tether.store.tables import AuditEvent, User

    with session_scope(ws.database_url) as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "registry.approve", AuditEvent.object_id == ref).order_by(AuditEvent.id)
        ).all()
        admins = set(session.scalars(select(User.name).where(User.role == "admin", User.active.is_(True))).all())
        return [{"admin": e.detail.get("admin"), "at": e.at.isoformat(), "note": e.detail.get("note", "")} for e in events if e.detail.get("admin") in admins]


def promote(ws: Any, ref: str, *, alias: str = "champion") -> dict[str, Any]:
    """Move ``alias`` to a version. ``champion`` needs every gate to pass and an admin's approval in the store;
    otherwise a TetherError lists each reason. Returns ``show()`` of the version."""
    client = _client(ws.root)
    mv = _resolve(client, ref)
    tags = dict(mv.tags)
    version_ref = _ref(mv)
    if alias == "champion":
        purged = purge_problems(ws, version_ref)
        problems = purged + [g.reason() for g in check_gates(gates_for(ws, tags.get("tether.kind", "?")), _figures(tags)) if not g.passed]
        if not purged and not approvals(ws, version_ref):
            problems.append(f"no approval by an admin (run `tether registry approve {version_ref} --admin NAME`)")
        if problems:
            _audit(ws, "registry.promote_refused", version_ref, alias=alias, reasons=problems)
            raise TetherError(
                f"cannot promote {version_ref} to champion:\n  - " + "\n  - ".join(problems),
                fix=PURGED_FIX if purged else "record evaluation figures that pass the gates in tether.toml [gates] and get an admin's approval",
            )
    client.set_registered_model_alias(mv.name, alias, mv.version)
    by = _actor()
    if alias == "champion":
        client.set_model_version_tag(mv.name, mv.version, "tether.promoted_by", by)
        client.set_model_version_tag(mv.name, mv.version, "tether.promoted_at", _now())
    _audit(ws, "registry.promote", version_ref, alias=alias)
    mv = client.get_model_version(mv.name, mv.version)
    client.update_model_version(mv.name, mv.version, description=model_card(version_ref, dict(mv.tags))[:4900])
    return show(ws, version_ref)
