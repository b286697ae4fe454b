"""Brute-force protection for the web sign-in: failed attempts per account and per client address, kept in the
store so every worker and every host behind one PostgreSQL sees the same counts.

Each key ("account:<keyed hash of the name>", "address:<client>") may fail a few times freely; every further failure locks it
for ``base * 2**extra`` seconds, at most 15 minutes. A locked key is refused at once with the seconds to wait (HTTP
429 and ``Retry-After``), before any password hashing, so a flood costs the server almost nothing. An attempt on an
account is counted *before* its password is checked (and forgiven if it was right), so a burst of parallel guesses
at one account cannot slip past the count while the hashes run. An address counts only attempts that failed: many
people behind one NAT signing in at once must not lock each other out with attempts still being checked (a burst
at many accounts from one address can pass the address's count by the attempts in flight, each account still
holding at its own). Names that belong to no account are counted the same way, so the throttle does not tell which
names exist. A key forgets its failures an hour after the last one.

Times come from the store's clock on PostgreSQL (hosts whose clocks differ still agree on when a lock ends) and
from this host's clock on SQLite (one file, one host).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, select, text, update
from sqlalchemy.orm import Session

from tether.store.tables import LoginThrottle, as_utc, name_key, utcnow


@dataclass(frozen=True)
class Policy:
    free: int  # failures allowed before the first lock
    base_s: float  # the first lock, doubled by every further failure
    max_s: float  # the longest lock


# An account is guessed at from many addresses, so it locks early; an address (an office behind one NAT, many
# people) gets more room before it locks.
ACCOUNT = Policy(free=5, base_s=1.0, max_s=900.0)
ADDRESS = Policy(free=20, base_s=1.0, max_s=900.0)
FORGET_AFTER = timedelta(hours=1)


def lock_seconds(failures: int, policy: Policy) -> float:
    """How long a key stays locked after its ``failures``-th failure: 0 for the free ones, then 1, 2, 4, ... s."""
    if failures < policy.free:
        return 0.0
    return min(policy.max_s, policy.base_s * 2.0 ** (failures - policy.free))


def client_address(host: str | None) -> str:
    """The throttled unit of a client: its IPv4 address, or its IPv6 /64 (one machine holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(host or "")
    except ValueError:
        return (host or "unknown")[:64]
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def keys_for(name: str, address: str, secret: str) -> list[tuple[str, Policy]]:
    """The account key holds a keyed hash of the typed name, never the name: people type their password into the
    name field, and a purged person's name must not linger here."""
    digest = hmac.new(secret.encode(), b"throttle|" + name_key((name or "").strip()).encode(), hashlib.sha256).hexdigest()
    return [(f"account:{digest[:32]}", ACCOUNT), (f"address:{address}", ADDRESS)]


def store_now(session: Session) -> datetime:
    """The clock that locks are set and read by (see the module docstring)."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(text("SELECT clock_timestamp()"))
    return utcnow()


def _upsert(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(LoginThrottle)


def _count(session: Session, key: str, policy: Policy, now: datetime) -> tuple[float, float]:
    """One failure on ``key`` unless it is locked, as one upsert that takes the row's lock and reads the lock in
    force, so parallel attempts queue behind each other instead of all reading "not locked" first (PostgreSQL runs
    up to ``db_concurrency`` of them at once). Returns ``(seconds the key was still locked for, lock it set now)``."""
    locked = LoginThrottle.locked_until > now  # in the SET clause: the stored row's values
    stale = LoginThrottle.last_failure_at < now - FORGET_AFTER
    statement = _upsert(session).values(key=key, failures=1, last_failure_at=now, locked_until=None)
    statement = statement.on_conflict_do_update(
        index_elements=[LoginThrottle.key],
        set_={
            "failures": case((locked, LoginThrottle.failures), (stale, 1), else_=LoginThrottle.failures + 1),
            "last_failure_at": case((locked, LoginThrottle.last_failure_at), else_=now),
        },
    ).returning(LoginThrottle.failures, LoginThrottle.locked_until)
    failures, until = session.execute(statement).one()
    if until is not None and as_utc(until) > now:
        return (as_utc(until) - now).total_seconds(), 0.0
    seconds = lock_seconds(failures, policy)
    if seconds:
        session.execute(update(LoginThrottle).where(LoginThrottle.key == key).values(locked_until=now + timedelta(seconds=seconds)))
    return 0.0, seconds


def _wait(seconds: float) -> int | None:
    return math.ceil(seconds) if seconds > 0 else None


def attempt(session: Session, keys: list[tuple[str, Policy]], now: datetime) -> tuple[int | None, float]:
    """Before a password is checked: refuse when the address or the account is locked (whole seconds to wait; the
    attempt counts nowhere), else count the attempt on the account. Returns ``(wait, lock set on the account)``."""
    (account, account_policy), (address, _) = keys
    until = session.scalar(select(LoginThrottle.locked_until).where(LoginThrottle.key == address))
    if until is not None and as_utc(until) > now:
        return _wait((as_utc(until) - now).total_seconds()), 0.0
    still, locked = _count(session, account, account_policy, now)
    return _wait(still), locked


def failed(session: Session, keys: list[tuple[str, Policy]], now: datetime) -> float:
    """The password was wrong: count it on the address (the account counted it already); returns the lock set."""
    address, policy = keys[1]
    _, locked = _count(session, address, policy, now)
    return locked


def forgive(session: Session, keys: list[tuple[str, Policy]]) -> None:
    """The password was right: the account starts afresh (the address counted nothing for this attempt)."""
    session.execute(delete(LoginThrottle).where(LoginThrottle.key == keys[0][0]))


def sweep(session: Session, now: datetime) -> None:
    """Forget keys whose last failure is older than FORGET_AFTER (names nobody holds would otherwise pile up).
    Rows another attempt holds are left for the next sweep (``SKIP LOCKED`` on PostgreSQL), so it never waits."""
    stale = select(LoginThrottle.key).where(LoginThrottle.last_failure_at < now - FORGET_AFTER).with_for_update(skip_locked=True)
    session.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(stale)))
