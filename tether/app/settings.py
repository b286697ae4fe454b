"""The web app's settings: one typed config for `tether serve`, every field documented."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from tether.errors import TetherError
from tether.store.accounts import PASSWORD_PROFILES

MIB = 1024 * 1024


@dataclass
class AppSettings:
    """What the app needs to run. ``from_env`` fills it for `tether serve`; tests build it directly."""

    # The store: sqlite:///... or postgresql+psycopg://...
    database_url: str
    # Signs session cookies and CSRF tokens. Every worker of one deployment must share it.
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32))
    # argon2id parameters: "default" (argon2-cffi's RFC 9106 low-memory profile, ~0.2 s per hash) for real use;
    # "cheapest" only for tests, where thousands of hashes would otherwise take minutes.
    password_profile: str = "default"
    # How long a login lasts, in seconds.
    session_ttl_s: int = 12 * 3600
    # Mark cookies Secure (HTTPS only). Turn on behind a TLS proxy; requests over https set it anyway.
    secure_cookies: bool = False
    # Largest request body in bytes for forms and JSON calls, and for uploads of prompts and completions.
    max_body_bytes: int = 2 * MIB
    max_upload_bytes: int = 64 * MIB
    # Longest prompt or completion text, and longest critique or rewrite, in characters.
    max_text_chars: int = 200_000
    max_answer_chars: int = 20_000
    # Most items in one upload (file or API call).
    max_items_per_upload: int = 50_000
    # PostgreSQL: requests working in the store at once per process; keep it below the connection pool (30) and
    # the worker threads (40). SQLite always takes one at a time (one writer).
    db_concurrency: int = 20

    def validate(self) -> AppSettings:
        if self.password_profile not in PASSWORD_PROFILES:
            raise TetherError(
                f"password_profile must be one of {PASSWORD_PROFILES}, got {self.password_profile!r}",
                fix="set TETHER_PASSWORD_PROFILE=default (cheapest is for tests only)",
            )
        if len(self.secret_key) < 32:
            raise TetherError("the secret key is shorter than 32 characters", fix="set TETHER_SECRET_KEY to a long random string")
        for name in ("session_ttl_s", "max_body_bytes", "max_upload_bytes", "max_text_chars", "max_answer_chars", "max_items_per_upload", "db_concurrency"):
            if getattr(self, name) <= 0:
                raise TetherError(f"{name} must be positive, got {getattr(self, name)}", fix=f"set {name} to a positive number")
        return self

    @classmethod
    def from_env(cls, database_url: str, secret_file: Path | None = None) -> AppSettings:
        """Settings for a server: the secret from TETHER_SECRET_KEY, else a file kept beside the workspace."""
        secret = os.environ.get("TETHER_SECRET_KEY") or (_read_or_make_secret(secret_file) if secret_file else None)
        kwargs: dict = {"database_url": database_url}
        if secret:
            kwargs["secret_key"] = secret
        if os.environ.get("TETHER_PASSWORD_PROFILE"):
            kwargs["password_profile"] = os.environ["TETHER_PASSWORD_PROFILE"]
        if os.environ.get("TETHER_SECURE_COOKIES", "").lower() in ("1", "true", "yes"):
            kwargs["secure_cookies"] = True
        if os.environ.get("TETHER_MAX_UPLOAD_MB"):
            kwargs["max_upload_bytes"] = int(float(os.environ["TETHER_MAX_UPLOAD_MB"]) * MIB)
        return cls(**kwargs).validate()


def _read_or_make_secret(path: Path) -> str:
    """The workspace's secret key, made once (readable by its owner only)."""
    from tether.store.workspace import read_or_make_secret

    return read_or_make_secret(path)
