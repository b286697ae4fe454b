"""Passwords (argon2id), signed session cookies, CSRF tokens and API tokens.

Sessions are stateless: the cookie holds ``user_id.issued_at.fingerprint`` and an HMAC-SHA256 over it with the
app's secret key. The fingerprint is a short hash of the user's password hash, so changing a password ends every
session made with the old one. CSRF uses the signed double-submit pattern: a random ``tether_csrf`` cookie and,
in every form, ``HMAC(secret, cookie)``; a cross-site page can neither read the cookie nor forge the HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from functools import lru_cache

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError

SESSION_COOKIE = "tether_session"
CSRF_COOKIE = "tether_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
TOKEN_PREFIX = "tth_"
MIN_PASSWORD_CHARS = 8


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


def _sign(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def password_fingerprint(password_hash: str | None) -> str:
    return hashlib.sha256((password_hash or "").encode()).hexdigest()[:12]


def make_session_cookie(secret: str, user_id: int, password_hash: str | None, now: float | None = None) -> str:
    payload = f"{user_id}.{int(now if now is not None else time.time())}.{password_fingerprint(password_hash)}"
    return f"{payload}.{_sign(secret, 'session|' + payload)}"


def read_session_cookie(secret: str, cookie: str | None, ttl_s: int, now: float | None = None) -> tuple[int, str] | None:
    """``(user_id, password fingerprint)`` of a valid, unexpired cookie; None otherwise."""
    if not cookie or cookie.count(".") != 3:
        return None
    payload, signature = cookie.rsplit(".", 1)
    if not hmac.compare_digest(signature, _sign(secret, "session|" + payload)):
        return None
    user_id, issued, fingerprint = payload.split(".")
    if not (user_id.isdigit() and issued.isdigit()):
        return None
    if (now if now is not None else time.time()) - int(issued) > ttl_s:
        return None
    return int(user_id), fingerprint


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(secret: str, csrf_cookie: str) -> str:
    return _sign(secret, "csrf|" + csrf_cookie)


def csrf_ok(secret: str, csrf_cookie: str | None, submitted: str | None) -> bool:
    if not csrf_cookie or not submitted:
        return False
    return hmac.compare_digest(csrf_token(secret, csrf_cookie), submitted)


def new_api_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
