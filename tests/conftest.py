"""Shared fixtures: databases (SQLite and PostgreSQL), workspaces, the CLI runner, the shared data."""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEFAULT_PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"


def _postgres_url() -> str | None:
    """The PostgreSQL server for the store's tests, or None when there is none."""
    url = os.environ.get("TETHER_TEST_POSTGRES_URL", DEFAULT_PG_URL)
    if url in ("", "0", "none"):
        return None
    try:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=2):
            pass
    except Exception:
        return None
    return url


_PG = _postgres_url()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (it lies beside the checkout in CI)")
    return SHARED_DATA


@pytest.fixture
def pg_url() -> str:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    if _PG is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable in CI (TETHER_TEST_POSTGRES_URL)")
        pytest.skip("no PostgreSQL server (set TETHER_TEST_POSTGRES_URL)")
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    raw = _PG.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in _PG else "?"
    yield f"{_PG}{sep}options=-csearch_path%3D{schema}"
    from tether.store.db import _ENGINES, dispose_engine

    # Close pooled connections (they hold the schema) before dropping it.
    for engine_url in [u for u in _ENGINES if schema in u]:
        dispose_engine(engine_url)
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """An empty database with the current schema: SQLite, then PostgreSQL."""
    from tether.store.db import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tether.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    upgrade(url)
    return url


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh SQLite workspace selected with TETHER_HOME."""
    from tether.store.workspace import init_workspace

    monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)
    ws = init_workspace(tmp_path / "ws")
    monkeypatch.setenv("TETHER_HOME", str(ws.root))
    return ws


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_workspace(request, tmp_path, monkeypatch):
    """A fresh workspace on SQLite, then on PostgreSQL (TETHER_DATABASE_URL)."""
    from tether.store.workspace import init_workspace

    if request.param == "postgres":
        monkeypatch.setenv("TETHER_DATABASE_URL", request.getfixturevalue("pg_url"))
    else:
        monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)
    ws = init_workspace(tmp_path / "ws")
    monkeypatch.setenv("TETHER_HOME", str(ws.root))
    return ws


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run `tether ARGS...` in-process through the real entry point; returns code, stdout, stderr."""
    from tether.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        old_argv = sys.argv
        sys.argv = ["tether", *map(str, args)]
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = old_argv
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A tiny Llama and its BPE tokenizer, built offline once per test session."""
    from tether.demo.tiny import build_causal_lm, build_tokenizer

    out = tmp_path_factory.mktemp("tiny-lm")
    corpus = [
        "Hello, how can I help you today?",
        "Thank you for contacting support. Your order has shipped.",
        "The quick brown fox jumps over the lazy dog.",
        "I am sorry, I cannot share personal data.",
        "Please reset your password from the account page.",
    ] * 20
    tokenizer = build_tokenizer(corpus, vocab_size=300)
    build_causal_lm(tokenizer, out, hidden_size=32, num_layers=2, num_heads=2)
    return out
