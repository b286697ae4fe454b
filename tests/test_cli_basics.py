"""The CLI's first contact: help, version, init, and clear errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys


def test_version_and_help_answer(cli):
    result = cli("--version")
    assert result.code == 0 and result.stdout.startswith("tether ")
    result = cli("--help")
    assert result.code == 0 and "tether demo" in result.stdout


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from tether.cli import app; import tether.cli; heavy = [m for m in ('torch', 'transformers', 'pandas', 'mlflow', 'sqlalchemy') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_init_makes_a_workspace(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("TETHER_HOME", raising=False)
    result = cli("init", tmp_path / "ws")
    assert result.code == 0, result.stderr
    for name in ("tether.toml", "tether.db", "artifacts"):
        assert (tmp_path / "ws" / name).exists()
    again = cli("init", tmp_path / "ws")  # idempotent
    assert again.code == 0


def test_no_workspace_is_a_clear_error(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("TETHER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    result = cli("db", "current")
    assert result.code == 2
    assert "no Tether workspace" in result.stderr and "tether init" in result.stderr
    assert "Traceback" not in result.stderr
