"""`tether user add/token/list` and `tether serve --help`: passwords from stdin, tokens printed once, clear errors."""

from __future__ import annotations

import io

from tether.store import accounts
from tether.store.db import session_scope


def test_user_add_reads_the_password_from_stdin_and_token_works(cli, workspace, monkeypatch):
    monkeypatch.setenv("TETHER_PASSWORD_PROFILE", "cheapest")
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-passphrase\n"))
    result = cli("user", "add", "alice", "--role", "admin")
    assert result.code == 0, result.stderr
    assert "a-long-passphrase" not in result.stdout + result.stderr
    token = cli("user", "token", "alice").stdout.strip()
    assert token.startswith("tth_")
    with session_scope(workspace.database_url) as session:
        user, scope = accounts.user_for_token(session, token)
        assert user.name == "alice" and scope == "full"
        assert accounts.authenticate(session, name="alice", password="a-long-passphrase", password_profile="cheapest") is not None
        user = accounts.get_user_by_name(session, "alice")
        assert user.password_hash.startswith("$argon2id$") and "a-long-passphrase" not in user.password_hash
    assert "alice" in cli("user", "list").stdout


def test_user_add_refusals_are_clear(cli, workspace, monkeypatch):
    monkeypatch.setenv("TETHER_PASSWORD_PROFILE", "cheapest")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    result = cli("user", "add", "bob", "--role", "annotator")
    assert result.code == 2 and "shorter than 8" in result.stderr and "Traceback" not in result.stderr
    monkeypatch.setattr("sys.stdin", io.StringIO("long-enough-pw\n"))
    result = cli("user", "add", "bob", "--role", "boss")
    assert result.code == 2 and "role must be one of" in result.stderr
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    result = cli("user", "add", "bob", "--role", "annotator")
    assert result.code == 2 and "no password on stdin" in result.stderr
    result = cli("user", "token", "nobody")
    assert result.code == 2 and "no user named 'nobody'" in result.stderr


def test_serve_help_has_an_example(cli):
    result = cli("serve", "--help")
    assert result.code == 0 and "--port" in result.stdout and "Example:" in result.stdout
