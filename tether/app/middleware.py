"""One small ASGI middleware for every request: body size limits, security headers, the CSRF cookie.

- A body larger than the limit is refused with 413 and a message that names the limit: at once when the
  Content-Length says so, else as soon as the streamed body passes it.
- Every response carries a strict Content-Security-Policy (scripts and styles from this origin only, no inline
  script, no plugins, no framing), ``nosniff`` and a same-origin referrer policy.
- A visitor without a ``tether_csrf`` cookie gets one (HttpOnly, SameSite=Lax); forms carry its HMAC.
- ``Server-Timing: app;dur=<ms>`` tells how long the app held the request.
"""

from __future__ import annotations

import json
import re
import time
from http.cookies import SimpleCookie
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from tether.app import security
from tether.app.settings import AppSettings

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
# Paths that take uploads of prompts and completions get the larger limit.
UPLOAD_PATHS = re.compile(r"^(/admin/projects/new|/admin/projects/\d+/upload|/api/v1/projects/\d+/items)$")


def _mb(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    return f"{n / 1024:.0f} KB"


def too_large_message(limit: int, upload: bool) -> str:
    what = "uploads of prompts and completions" if upload else "this request"
    fix = "split the file into smaller uploads (or raise TETHER_MAX_UPLOAD_MB)" if upload else "send less text at once"
    return f"the request is too large: the limit for {what} is {_mb(limit)}; {fix}"


class WebMiddleware:
    def __init__(self, app: Any, settings: AppSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        upload = bool(UPLOAD_PATHS.match(path))
        limit = self.settings.max_upload_bytes if upload else self.settings.max_body_bytes
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            await self._refuse(scope, send, too_large_message(limit, upload), path)
            return

        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header: treat as none
            cookie = SimpleCookie()
        csrf_cookie = cookie[security.CSRF_COOKIE].value if security.CSRF_COOKIE in cookie else ""
        new_csrf = None
        if len(csrf_cookie) < 16:
            new_csrf = csrf_cookie = security.new_csrf_cookie()
        scope.setdefault("state", {})["csrf_cookie"] = csrf_cookie
        secure = self.settings.secure_cookies or scope.get("scheme") == "https"

        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, detail=too_large_message(limit, upload))
            return message

        started = time.perf_counter()

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = list(SECURITY_HEADERS)
                # How long the app took, for operators and the load benchmark (queueing inside the app included).
                extra.append((b"server-timing", f"app;dur={(time.perf_counter() - started) * 1000:.1f}".encode()))
                if new_csrf and not path.startswith(("/api/", "/static/")):
                    flags = "; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")
                    extra.append((b"set-cookie", f"{security.CSRF_COOKIE}={new_csrf}{flags}".encode()))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, limited_receive, send_with_headers)

    async def _refuse(self, scope: dict, send: Any, message: str, path: str) -> None:
        if path.startswith("/api/"):
            body = json.dumps({"error": message, "fix": None}).encode()
            content_type = b"application/json"
        else:
            body = message.encode()
            content_type = b"text/plain; charset=utf-8"
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), (b"connection", b"close"), *SECURITY_HEADERS],
        })
        await send({"type": "http.response.body", "body": body})
