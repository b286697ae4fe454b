"""Passwords (argon2id), session ids, CSRF tokens and API tokens: the primitives, no store access.

Sessions live in the store (tether.app.service): the cookie carries a random id, the ``web_session`` table its
sha256, so ending a session is deleting its row and holds across workers and hosts. CSRF uses the signed
double-submit pattern: a random ``tether_csrf`` cookie and, in every form, ``HMAC(secret, cookie)``; a cross-site
page can neither read the cookie nor forge the HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import lru_cache

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError

SESSION_COOKIE = "tether_session"
CSRF_COOKIE = "tether_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
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


def _sign(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def new_session_id() -> str:
    """The random id a session cookie carries (256 bits); the store keeps only ``token_hash`` of it."""
    return SESSION_PREFIX + secrets.token_urlsafe(32)


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
    """sha256 of an API token or a session id: what the store keeps (both are random, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()
