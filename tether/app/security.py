"""The web's cookies and CSRF tokens (passwords, session ids and API tokens are tether.store.accounts').

Sessions live in the store: the cookie carries a random id, the ``web_session`` table its sha256, so ending a session is deleting its row and holds across workers and hosts. CSRF uses the signed
double-submit pattern: a random ``tether_csrf`` cookie and, in every form, ``HMAC(secret, cookie)``; a cross-site
page can neither read the cookie nor forge the HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SESSION_COOKIE = "tether_session"
CSRF_COOKIE = "tether_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def _sign(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(secret: str, csrf_cookie: str) -> str:
    return _sign(secret, "csrf|" + csrf_cookie)


def csrf_ok(secret: str, csrf_cookie: str | None, submitted: str | None) -> bool:
    if not csrf_cookie or not submitted:
        return False
    return hmac.compare_digest(csrf_token(secret, csrf_cookie), submitted)


