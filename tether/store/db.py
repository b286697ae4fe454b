"""Engine, sessions and migrations.

SQLite (the default, one file in the workspace) runs in WAL mode with foreign keys on; write transactions start
with ``BEGIN IMMEDIATE`` so two writers queue on the lock instead of failing half-way. PostgreSQL is reached by a
``postgresql+psycopg://`` URL. The schema comes only from the Alembic migrations beside this file.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tether.errors import TetherError

MIGRATIONS = Path(__file__).parent / "migrations"
# How long a SQLite writer waits for another writer before giving up with a "busy" error.
SQLITE_BUSY_TIMEOUT_S = 60.0


def _normalize_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


_ENGINES: dict[str, Engine] = {}


def get_engine(url: str) -> Engine:
    """One engine per URL for the life of the process."""
    url = _normalize_url(url)
    if url not in _ENGINES:
        _ENGINES[url] = _make_engine(url)
    return _ENGINES[url]


def dispose_engine(url: str) -> None:
    """Close the pooled connections of ``url``'s engine and forget it."""
    engine = _ENGINES.pop(_normalize_url(url), None)
    if engine is not None:
        engine.dispose()


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # A transaction takes the write lock at its start: a writer that would otherwise upgrade a read lock
            # mid-way (and fail with "database is locked") waits its turn instead. Connections marked read-only
            # (execution option ``tether_readonly``) read the WAL snapshot without waiting for writers.
            if conn.get_execution_options().get("tether_readonly"):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    raise TetherError(
        f"unsupported database URL {url!r}",
        fix="use sqlite:///path/to/tether.db or postgresql+psycopg://user@host:5432/dbname",
    )


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", _normalize_url(url).replace("%", "%%"))
    cfg.attributes["engine"] = get_engine(url)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (creates it on an empty database)."""
    from alembic import command

    try:
        command.upgrade(_alembic_config(url), revision)
    except OperationalError as exc:
        raise TetherError(f"cannot reach the database at {_safe(url)}: {exc.orig}", fix="check the URL and that the server runs") from None


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        conn = conn.execution_options(tether_readonly=True)
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def check_schema(url: str) -> None:
    """Raise a clear error when the database is missing its schema or is behind the code."""
    try:
        current = current_revision(url)
    except OperationalError as exc:
        if _is_busy(exc):
            raise busy_error() from None
        raise TetherError(f"cannot open the database at {_safe(url)}: {exc.orig}", fix="check TETHER_DATABASE_URL or the workspace") from None
    if current is None:
        raise TetherError(f"the database at {_safe(url)} has no Tether schema", fix="run `tether db upgrade`")
    if current != head_revision():
        raise TetherError(
            f"the database schema is at revision {current}, this Tether needs {head_revision()}",
            fix="run `tether db upgrade` (your data is kept)",
        )


def _safe(url: str) -> str:
    """The URL without a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url


def _is_busy(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


def busy_error() -> TetherError:
    return TetherError(
        "the workspace database is busy: another Tether process held the write lock for "
        f"more than {SQLITE_BUSY_TIMEOUT_S:.0f} s",
        fix="wait for the other import or training command to finish and run this one again (nothing was written)",
    )


@contextmanager
def session_scope(url: str, *, readonly: bool = False) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error.

    ``readonly`` sessions on SQLite read the last committed state without queueing behind a writer (a long import
    does not block `tether data list`).
    """
    engine = get_engine(url)
    if readonly:
        engine = engine.execution_options(tether_readonly=True)
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        if _is_busy(exc):
            raise busy_error() from None
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def table_names(url: str) -> list[str]:
    return inspect(get_engine(url)).get_table_names()


def actor() -> str:
    """Who is acting, for audit events written from the CLI."""
    try:
        name = getpass.getuser()
    except Exception:  # no login name in some containers
        name = os.environ.get("USER", "unknown")
    return f"cli:{name}"


def audit(session: Session, action: str, object_type: str, object_id: Any = None, *, actor_name: str | None = None, **detail: Any) -> None:
    """Record an audit event in the caller's transaction."""
    from tether.store.tables import AuditEvent

    session.add(
        AuditEvent(
            actor=actor_name or actor(),
            action=action,
            object_type=object_type,
            object_id=None if object_id is None else str(object_id),
            detail=detail,
        )
    )
