"""Accounts against an attacker and a careless admin (issue 14, findings 3 to 5), on SQLite and PostgreSQL:

- sessions live in the store and end for good: logout (a copied cookie opens nothing), a new password, a role
  change, deactivation; reactivating an account revives neither sessions nor tokens;
- API tokens expire, can be revoked from the CLI, and can be limited to taking items and answering them; a token
  an admin mints for someone else is the admin's act in the audit log;
- sign-in is throttled per account and per client address with exponential backoff and ``Retry-After``, also
  against a burst of parallel guesses, says the same for names that do not exist, and failed sign-ins are audited;
- admins and reviewers need long passwords off the common list; names are NFKC-normalized, free of invisible
  characters and unique without regard to case, also for accounts made before (migration 0004).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from apphelp import PASSWORD, csrf_of, make_env, pairs, served
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update

from tether.app import security, throttle
from tether.app.main import create_app
from tether.app.settings import AppSettings
from tether.errors import TetherError
from tether.store import accounts
from tether.store.db import get_engine, session_scope, upgrade
from tether.store.tables import ApiToken, AuditEvent, LoginThrottle, User, WebSession

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)


def _sign_in(client: TestClient, name: str, password: str = PASSWORD) -> httpx.Response:
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token}, follow_redirects=False)


def _signed_in(client: TestClient) -> bool:
    response = client.get("/annotate", follow_redirects=False)
    assert response.status_code in (200, 303), response.text
    return response.status_code == 200


def _copy(client: TestClient, app) -> TestClient:
    """Another browser holding a copy of ``client``'s session cookie (a stolen cookie)."""
    other = TestClient(app)
    other.cookies.set(security.SESSION_COOKIE, client.cookies[security.SESSION_COOKIE])
    return other


def _me(env, token: str) -> int:
    return env.api("GET", "/me", None, headers={"Authorization": f"Bearer {token}"}).status_code


@pytest.fixture
def frozen(monkeypatch):
    """The throttle's clock, moved by the test (``frozen["now"] += ...``) instead of sleeping."""
    clock = {"now": T0}
    monkeypatch.setattr(throttle, "store_now", lambda session: clock["now"])
    return clock


# --- finding 3: sessions and tokens ---------------------------------------------------------------------------


def test_a_cookie_copied_before_logout_opens_nothing(db_url):
    env = make_env(db_url)
    client = env.login("ann1")
    stolen = _copy(client, env.app)
    assert _signed_in(stolen)
    logout = client.post("/logout", headers={"X-CSRF-Token": csrf_of(client.get("/annotate").text)}, follow_redirects=False)
    assert logout.status_code == 303
    assert not _signed_in(stolen)
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "user.logout")) == 1


def test_only_a_hash_of_the_session_cookie_is_stored(db_url):
    env = make_env(db_url)
    cookie = env.login("ann1").cookies[security.SESSION_COOKIE]
    with session_scope(db_url) as session:
        stored = session.scalars(select(WebSession.id_hash)).all()
    assert stored == [accounts.token_hash(cookie)] and cookie not in stored and len(cookie) >= 40


def test_deactivation_role_change_and_password_change_end_sessions_and_reactivation_revives_nothing(db_url):
    env = make_env(db_url)
    browsers = {name: env.login(name) for name in ("ann1", "ann2", "ann3", "rev")}
    assert all(_signed_in(b) for b in browsers.values())

    with session_scope(db_url) as session:  # deactivate ann1, then reactivate
        accounts.set_role(session, user=accounts.get_user_by_name(session, "ann1"), active=False)
    with session_scope(db_url) as session:
        accounts.set_role(session, user=accounts.get_user_by_name(session, "ann1"), active=True)
    assert not _signed_in(browsers["ann1"]) and _me(env, env.tokens["ann1"]) == 401

    with session_scope(db_url) as session:
        annotate_token = accounts.issue_token(session, user=accounts.get_user_by_name(session, "ann2"), scope="annotate")

    with session_scope(db_url) as session:  # promote ann2: its full token and session end, the annotate one stays
        accounts.set_role(session, user=accounts.get_user_by_name(session, "ann2"), role="reviewer")
    assert not _signed_in(browsers["ann2"]) and _me(env, env.tokens["ann2"]) == 401 and _me(env, annotate_token) == 200

    with session_scope(db_url) as session:  # a new password ends sessions; tokens stay
        accounts.set_password(session, user=accounts.get_user_by_name(session, "ann3"), password="a-new-long-password",
                             password_profile="cheapest")
    assert not _signed_in(browsers["ann3"]) and _me(env, env.tokens["ann3"]) == 200
    assert _signed_in(browsers["rev"])  # nobody else's session ended
    assert _signed_in(env.login("ann1"))  # the reactivated account signs in afresh


def test_the_web_admin_ends_a_users_sessions_by_deactivating_them(db_url):
    env = make_env(db_url)
    victim = env.login("ann1")
    admin = env.login("admin")
    with session_scope(db_url) as session:
        ann1 = accounts.get_user_by_name(session, "ann1").id
    token = csrf_of(admin.get("/admin/users").text)
    assert admin.post(f"/admin/users/{ann1}", data={"role": "annotator", "csrf_token": token}, follow_redirects=False).status_code == 303
    assert not _signed_in(victim) and _me(env, env.tokens["ann1"]) == 401
    with session_scope(db_url) as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "user.update")).one()
        assert event.actor == "user:admin" and event.detail == {"active": False, "sessions_ended": 1, "tokens_revoked": 1}


def test_user_passwd_revoke_tokens_and_tokens_through_the_cli(cli, workspace, monkeypatch):
    monkeypatch.setenv("TETHER_PASSWORD_PROFILE", "cheapest")
    monkeypatch.setattr("sys.stdin", io.StringIO("first-long-passphrase\n"))
    assert cli("user", "add", "alice", "--role", "admin").code == 0
    app = create_app(AppSettings(database_url=workspace.database_url, password_profile="cheapest"))
    browser = TestClient(app)
    assert _sign_in(browser, "alice", "first-long-passphrase").status_code == 303
    first, second = (cli("user", "token", "alice", "--label", label).stdout.strip() for label in ("one", "two"))
    api = TestClient(app)
    assert all(api.get("/api/v1/me", headers={"Authorization": f"Bearer {t}"}).status_code == 200 for t in (first, second))

    monkeypatch.setattr("sys.stdin", io.StringIO("second-long-passphrase\n"))
    result = cli("user", "passwd", "alice")
    assert result.code == 0 and "sessions ended" in result.stdout and "passphrase" not in result.stdout + result.stderr
    assert not _signed_in(browser)
    assert _sign_in(TestClient(app), "alice", "first-long-passphrase").status_code == 401
    assert _sign_in(TestClient(app), "alice", "second-long-passphrase").status_code == 303
    monkeypatch.setattr("sys.stdin", io.StringIO("password\n"))
    weak = cli("user", "passwd", "alice")
    assert weak.code == 2 and "shorter than 12" in weak.stderr

    listed = cli("user", "tokens", "alice").stdout
    first_id = int(re.search(r"^\s*(\d+)\s+live.* one$", listed, re.M).group(1))
    assert "revoked" not in listed and "by cli:" in listed
    assert cli("user", "revoke-tokens", "alice", "--id", str(first_id)).stdout.strip() == "1 token of alice revoked"
    assert api.get("/api/v1/me", headers={"Authorization": f"Bearer {first}"}).status_code == 401
    assert api.get("/api/v1/me", headers={"Authorization": f"Bearer {second}"}).status_code == 200
    assert cli("user", "revoke-tokens", "alice").stdout.strip() == "1 token of alice revoked"
    assert api.get("/api/v1/me", headers={"Authorization": f"Bearer {second}"}).status_code == 401
    assert cli("user", "tokens", "alice").stdout.count("revoked") == 2
    missing = cli("user", "revoke-tokens", "alice", "--id", "999")
    assert missing.code == 2 and "no token with id 999" in missing.stderr

    off = cli("user", "set", "alice", "--inactive")
    assert off.code == 0 and "inactive" in off.stdout
    assert cli("user", "set", "alice", "--active").code == 0
    with session_scope(workspace.database_url) as session:
        events = [e.action for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert events.count("token.revoke") == 2 and "user.password" in events


def test_tokens_expire_by_default_and_by_flag(cli, workspace, monkeypatch):
    monkeypatch.setenv("TETHER_PASSWORD_PROFILE", "cheapest")
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-passphrase\n"))
    cli("user", "add", "bot", "--role", "annotator")
    default = cli("user", "token", "bot")
    short = cli("user", "token", "bot", "--days", "2")
    assert "expires in 90 days" in default.stderr and "expires in 2 days" in short.stderr
    for bad, message in ((("--days", "0"), "1..3650 days"), (("--days", "5000"), "1..3650 days"), (("--scope", "root"), "scope must be one of")):
        result = cli("user", "token", "bot", *bad)
        assert result.code == 2 and message in result.stderr and "Traceback" not in result.stderr
    with session_scope(workspace.database_url) as session:
        rows = {r.token_hash: r for r in session.scalars(select(ApiToken))}
        lifetimes = sorted(round((r.expires_at - r.created_at).total_seconds() / 86400) for r in rows.values())
        assert lifetimes == [2, 90]
        now = datetime.now(timezone.utc)
        token = short.stdout.strip()
        assert accounts.user_for_token(session, token, now=now + timedelta(days=1)) is not None
        assert accounts.user_for_token(session, token, now=now + timedelta(days=2, minutes=1)) is None
        assert accounts.user_for_token(session, default.stdout.strip(), now=now + timedelta(days=89)) is not None
        assert accounts.user_for_token(session, default.stdout.strip(), now=now + timedelta(days=91)) is None
        session.execute(update(ApiToken).where(ApiToken.token_hash == accounts.token_hash(token)).values(expires_at=now - timedelta(seconds=1)))
    api = TestClient(create_app(AppSettings(database_url=workspace.database_url, password_profile="cheapest")))
    refused = api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401 and "expired" in refused.json()["error"]


def test_an_annotate_token_takes_items_and_answers_them_and_nothing_else(db_url):
    env = make_env(db_url)
    pid = env.create_project(overlap=1)
    env.push(pid, pairs(3))
    with session_scope(db_url) as session:
        env.tokens["admin-annotate"] = accounts.issue_token(session, user=accounts.get_user_by_name(session, "admin"), scope="annotate")
    task = env.api("POST", f"/projects/{pid}/next", "admin-annotate").json()
    done = env.api("POST", f"/assignments/{task['assignment_id']}/judgment?next=true", "admin-annotate", json={"value": {"choice": "a", "strength": 1}})
    assert done.status_code == 201 and done.json()["next"] is not None
    assert env.api("POST", f"/assignments/{done.json()['next']['assignment_id']}/skip", "admin-annotate", json={"reason": "typo"}).status_code == 204
    assert env.api("GET", "/me", "admin-annotate").json()["name"] == "admin"
    for method, path in (("POST", "/projects"), ("GET", f"/projects/{pid}/judgments"), ("GET", f"/projects/{pid}/progress"),
                         ("GET", "/users"), ("POST", "/users"), ("POST", f"/projects/{pid}/items")):
        refused = env.api(method, path, "admin-annotate", json={} if method == "POST" else None)
        assert refused.status_code == 403 and "scope annotate" in refused.json()["error"], (method, path)
    assert env.api("GET", f"/projects/{pid}/judgments", "admin").status_code == 200  # the admin's full token


def test_a_token_an_admin_mints_for_another_user_is_the_admins_act(db_url):
    env = make_env(db_url)
    admin = env.login("admin")
    with session_scope(db_url) as session:
        ann3 = accounts.get_user_by_name(session, "ann3").id
    page = admin.post(f"/admin/users/{ann3}/token", data={"csrf_token": csrf_of(admin.get("/admin/users").text), "scope": "annotate",
                                                          "days": "7", "label": "pipeline"})
    token = re.search(r'class="token">(tth_[^<]+)<', page.text).group(1)
    assert "annotate" in page.text and "7 days" in page.text
    assert _me(env, token) == 200
    with session_scope(db_url) as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "token.issue", AuditEvent.object_id == str(ann3))
                                .order_by(AuditEvent.id.desc())).first()
        row = session.scalars(select(ApiToken).where(ApiToken.token_hash == accounts.token_hash(token))).one()
    assert event.actor == "user:admin" and event.detail["name"] == "ann3" and event.detail["scope"] == "annotate"
    assert row.issued_by == "user:admin" and row.scope == "annotate" and round((row.expires_at - row.created_at).total_seconds() / 86400) == 7
    bad = admin.post(f"/admin/users/{ann3}/token", data={"csrf_token": csrf_of(admin.get("/admin/users").text), "days": "0"})
    assert bad.status_code == 400


def test_a_purged_annotator_leaves_no_name_in_sessions_tokens_the_throttle_or_the_audit_log(cli, workspace, monkeypatch):
    monkeypatch.setenv("TETHER_PASSWORD_PROFILE", "cheapest")
    monkeypatch.setattr("sys.stdin", io.StringIO("tulip-moon-42\n"))
    assert cli("user", "add", "alice", "--role", "annotator").code == 0
    app = create_app(AppSettings(database_url=workspace.database_url, password_profile="cheapest"))
    assert _sign_in(TestClient(app), "alice", "wrong-password").status_code == 401
    assert _sign_in(TestClient(app), "alice", "tulip-moon-42").status_code == 303
    assert cli("user", "token", "alice", "--scope", "annotate").code == 0
    assert cli("user", "revoke-tokens", "alice").code == 0
    assert _sign_in(TestClient(app), "alice", "wrong-again").status_code == 401
    result = cli("data", "purge", "--annotator", "alice", "--yes")
    assert result.code == 0, result.stderr
    with session_scope(workspace.database_url) as session:
        assert session.scalar(select(func.count()).select_from(WebSession)) == 0
        assert session.scalar(select(func.count()).select_from(ApiToken)) == 0
        assert not [k for k in session.scalars(select(LoginThrottle.key)) if "alice" in k]
        named = [(e.action, e.actor, e.detail) for e in session.scalars(select(AuditEvent)) if "alice" in f"{e.actor} {e.object_id} {e.detail}"]
    assert named == []


def _change_password(client: TestClient, current: str, new: str, again: str | None = None) -> httpx.Response:
    form = {"current_password": current, "new_password": new, "new_password_again": new if again is None else again,
            "csrf_token": csrf_of(client.get("/account").text)}
    return client.post("/account/password", data=form, follow_redirects=False)


def test_changing_ones_own_password_ends_the_other_sessions_and_keeps_this_one(db_url):
    env = make_env(db_url)
    here, elsewhere = env.login("ann1"), env.login("ann1")
    changed = _change_password(here, PASSWORD, "tulip-moon-river-7")
    assert changed.status_code == 303 and changed.headers["location"] == "/account?changed=1"
    assert _signed_in(here) and not _signed_in(elsewhere)
    assert "Your other sessions have ended" in here.get(changed.headers["location"]).text
    assert _sign_in(env.client(), "ann1").status_code == 401
    assert _sign_in(env.client(), "ann1", "tulip-moon-river-7").status_code == 303
    with session_scope(db_url) as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "user.password")).one()
        assert event.actor == "user:ann1" and event.detail == {"sessions_ended": 2}


def test_a_password_change_checks_the_current_password_like_a_sign_in(db_url, frozen):
    env = make_env(db_url)
    client = env.login("ann1")
    for again, new, why in (("other-tulip-moon", "tulip-moon-river-7", "differ"), (None, "ann1-ann1-ann1", "contains the user name"),
                            (None, "password", "most common")):
        refused = _change_password(client, PASSWORD, new, again)
        assert refused.status_code == 400 and why in refused.text
    statuses = [_change_password(client, f"wrong-{i}", "tulip-moon-river-7").status_code for i in range(6)]
    assert statuses == [401] * 5 + [429]
    assert _signed_in(client)  # nothing changed: still signed in, the old password still the password
    frozen["now"] += timedelta(seconds=5)
    assert _sign_in(env.client(), "ann1").status_code == 303
    with session_scope(db_url) as session:
        actions = [e.action for e in session.scalars(select(AuditEvent).where(AuditEvent.action.like("user.password%")))]
    assert actions == ["user.password_failed"] * 5


def test_an_admin_whose_password_no_longer_meets_the_rules_is_sent_to_change_it(db_url):
    env = make_env(db_url)
    with session_scope(db_url) as session:  # set before the rules (or before a promotion)
        accounts.get_user_by_name(session, "admin").password_hash = accounts.hash_password("hunter22", "cheapest")
    client = env.client()
    response = _sign_in(client, "admin", "hunter22")
    assert response.status_code == 303 and response.headers["location"] == "/account?weak=1"
    assert "no longer meets the rules for admins" in client.get("/account?weak=1").text
    assert _sign_in(env.client(), "ann1").headers["location"] == "/annotate"  # a good password goes home


# --- finding 4: brute force -----------------------------------------------------------------------------------


def test_wrong_passwords_lock_the_account_with_growing_backoff_and_retry_after(db_url, frozen):
    env = make_env(db_url)
    client = env.client()
    statuses = [_sign_in(client, "ann1", f"wrong-{i}").status_code for i in range(25)]
    assert statuses == [401] * 5 + [429] * 20
    locked = _sign_in(client, "ann1")  # the right password, while locked
    assert locked.status_code == 429 and locked.headers["retry-after"] == "1" and "Try again in 1 s" in locked.text
    assert security.SESSION_COOKIE not in client.cookies
    wait, waits = 1, []
    for _ in range(4):  # each failure past the free ones doubles the lock
        frozen["now"] += timedelta(seconds=wait)
        assert _sign_in(client, "ann1", "wrong").status_code == 401
        wait = int(_sign_in(client, "ann1", "wrong").headers["retry-after"])
        waits.append(wait)
    assert waits == [2, 4, 8, 16]
    frozen["now"] += timedelta(seconds=17)
    assert _sign_in(client, "ann1").status_code == 303 and _signed_in(client)
    with session_scope(db_url) as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "user.login_failed")).all()
        assert len(failed) == 5 + 4  # every checked wrong password; refusals while locked cost nothing
        assert {e.detail["name"] for e in failed} == {"ann1"} and all(e.actor == "address:testclient" for e in failed)
        # The right password starts the account afresh; the address keeps its 9 failures.
        assert [(r.key.split(":")[0], r.failures) for r in session.scalars(select(LoginThrottle))] == [("address", 9)]


def test_a_lock_ends_on_its_own_and_old_failures_are_forgotten(db_url, frozen):
    env = make_env(db_url)
    client = env.client()
    for _ in range(5):
        _sign_in(client, "ann1", "wrong")
    assert _sign_in(client, "ann1").status_code == 429
    frozen["now"] += timedelta(seconds=2)
    assert _sign_in(client, "ann1", "wrong").status_code == 401  # free again, and the 6th failure locks for 2 s
    frozen["now"] += timedelta(hours=2)  # an hour after the last failure the count starts over
    assert [_sign_in(client, "ann1", "wrong").status_code for _ in range(5)] == [401] * 5


def test_one_address_guessing_many_names_is_throttled_and_unknown_names_look_like_known_ones(db_url, frozen):
    env = make_env(db_url)
    client = env.client()
    known = [_sign_in(client, "ann2", "wrong") for _ in range(6)]
    unknown = [_sign_in(client, "no-such-user", "wrong") for _ in range(6)]
    for a, b in zip(known, unknown):  # the same answers for a name that exists and one that does not
        assert (a.status_code, a.headers.get("retry-after")) == (b.status_code, b.headers.get("retry-after"))
        assert a.text.replace("ann2", "NAME") == b.text.replace("no-such-user", "NAME")
    assert [r.status_code for r in known] == [401] * 5 + [429]
    # 10 failures so far from this address; 10 more on other names lock the address for every name, the right
    # password of an untouched account included.
    assert [_sign_in(client, f"guess{i}", "wrong").status_code for i in range(10)] == [401] * 10
    refused = _sign_in(client, "ann3")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert _signed_in(_sign_in_elsewhere(env, "ann3"))  # another address is not affected
    with session_scope(db_url) as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "user.login_failed")).all()
        assert len(failed) == 20
        keys = session.scalars(select(LoginThrottle.key)).all()
        assert len(keys) == 1 + 12 and not any("ann2" in k or "no-such-user" in k or "guess" in k for k in keys)  # no typed name kept
        assert sum(1 for e in failed if e.detail["name"] is None and e.object_id is None) == 15  # unknown names are not kept


def _sign_in_elsewhere(env, name: str) -> TestClient:
    client = TestClient(env.app, client=("192.0.2.7", 50000))
    assert _sign_in(client, name).status_code == 303
    return client


def test_a_burst_of_parallel_guesses_cannot_outrun_the_count(db_url, frozen):
    env = make_env(db_url)

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=env.app, client=("198.51.100.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            token = csrf_of((await client.get("/login")).text)
            attempts = [client.post("/login", data={"name": "ann1", "password": f"guess-{i}", "csrf_token": token}) for i in range(30)]
            return [r.status_code for r in await asyncio.gather(*attempts)]

    statuses = asyncio.run(burst())
    assert sorted(statuses) == [401] * 5 + [429] * 25


def test_many_people_signing_in_at_once_from_one_address_are_not_locked_out(db_url, frozen):
    """An office behind one NAT at nine o'clock: 40 right passwords at once from one address all get in (only
    real failures count against an address, never attempts still being checked)."""
    env = make_env(db_url)
    with session_scope(db_url) as session:
        for i in range(40):
            accounts.create_user(session, name=f"office{i}", role="annotator", password=PASSWORD, password_profile="cheapest")

    async def nine_oclock() -> list[int]:
        transport = httpx.ASGITransport(app=env.app, client=("198.51.100.20", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            token = csrf_of((await client.get("/login")).text)
            attempts = [client.post("/login", data={"name": f"office{i}", "password": PASSWORD, "csrf_token": token}) for i in range(40)]
            return [r.status_code for r in await asyncio.gather(*attempts)]

    assert asyncio.run(nine_oclock()) == [303] * 40


def test_every_failed_sign_in_costs_one_password_hash_whoever_the_name_is(db_url, monkeypatch):
    """Wrong password, unknown name, inactive account: each costs exactly one argon2 computation (so the time does
    not tell them apart), and the answer is the same."""
    env = make_env(db_url)
    with session_scope(db_url) as session:
        accounts.set_role(session, user=accounts.get_user_by_name(session, "ann3"), active=False)
    calls = []
    real = accounts.verify_password
    monkeypatch.setattr(accounts, "verify_password", lambda *a, **k: calls.append(a[0] is not None) or real(*a, **k))
    answers = {}
    for name, password in (("ann1", "wrong"), ("nobody", "wrong"), ("ann3", PASSWORD)):
        calls.clear()
        response = _sign_in(TestClient(env.app, client=(f"203.0.113.{len(answers)}", 1)), name, password)
        answers[name] = (response.status_code, "Wrong name or password." in response.text, len(calls))
    assert set(answers.values()) == {(401, True, 1)}


# --- finding 5: weak accounts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "password", "why"), [
    ("admin", "password", "shorter than 12"),
    ("admin", "12345678", "shorter than 12"),
    ("admin", " " * 12, "only spaces"),
    ("admin", "\t \n" * 5, "only spaces"),
    ("admin", "ada-lovelace", "contains the user name"),
    ("reviewer", "ADA-LOVELACE-1815", "contains the user name"),
    ("admin", "password1234", "common password"),
    ("admin", "Password2024!", "common password"),
    ("reviewer", "qwertyuiop123", "common password"),
    ("admin", "iloveyou!!!!", "common password"),
    ("admin", "correcthorsebatterystaple", "most common passwords"),
    ("admin", "1234567890123", "run of neighbouring"),
    ("admin", "abcdefghijklmnop", "run of neighbouring"),
    ("admin", "aaaaaaaaaaaaaa", "repeats a short pattern"),
    ("admin", "abcabcabcabcabc", "repeats a short pattern"),
    ("annotator", "passw0rd", "most common passwords"),
    ("annotator", "letmein1", "common password"),
    ("annotator", "short", "shorter than 8"),
])
def test_weak_passwords_are_refused(role, password, why):
    with pytest.raises(TetherError, match=why):
        accounts.check_password_rules(password, role=role, name="ada")


@pytest.mark.parametrize(("role", "password"), [("admin", "plum orbit lantern 42"), ("reviewer", "correct-horse-battery"),
                                                ("annotator", "tulip-moon"), ("admin", "Zwölf Boxkämpfer jagen")])
def test_good_passwords_pass(role, password):
    accounts.check_password_rules(password, role=role, name="ada")


def test_weak_admin_passwords_are_refused_through_the_cli(cli, workspace, monkeypatch):
    monkeypatch.setenv("TETHER_PASSWORD_PROFILE", "cheapest")
    for password in ("password", "12345678", "        ", "ada", "ada-ada-ada-ada"):
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        result = cli("user", "add", "ada", "--role", "admin")
        assert result.code == 2 and "error: the password" in result.stderr and "Traceback" not in result.stderr
    assert "no users yet" in cli("user", "list").stdout


def test_weak_passwords_are_refused_through_web_and_api_and_nothing_is_stored(db_url):
    env = make_env(db_url)
    refused = env.api("POST", "/users", "admin", json={"name": "boss", "role": "admin", "password": "password1234"})
    assert refused.status_code == 400 and "common password" in refused.json()["error"]
    admin = env.login("admin")
    page = admin.post("/admin/users", data={"name": "boss2", "role": "reviewer", "password": "boss2-boss2-boss2",
                                            "csrf_token": csrf_of(admin.get("/admin/users").text)})
    assert page.status_code == 400 and "contains the user name" in page.text
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.name.like("boss%"))) == 0


@pytest.mark.parametrize(("name", "what"), [
    ("ali\x00ce", "control character"), ("ali\u200bce", "invisible format"), ("\u202eadmin", "invisible format"),
    ("ad\u00admin", "invisible format"), ("\x1b[31mred", "control character"), ("a\u3000b", "space"), ("x" * 201, "1..200"),
    ("ali\ud800ce", "surrogate"), ("", "1..200"),
])
def test_user_names_with_invisible_or_control_characters_are_refused(db_url, name, what):
    with session_scope(db_url) as session, pytest.raises(TetherError, match=what):
        accounts.create_user(session, name=name, role="annotator", password="tulip-moon-42", password_profile="cheapest")


def test_user_names_are_nfkc_normalized_and_unique_without_case(db_url):
    env = make_env(db_url)
    with session_scope(db_url) as session:
        fullwidth = accounts.create_user(session, name="ＡＤＭＩＮ１", role="annotator", password="tulip-moon-42", password_profile="cheapest")
        assert fullwidth.name == "ADMIN1"
    for clash in ("admin1", "Admin1", "ＡＤＭＩＮ１", "ANN1", "ann1"):
        response = env.api("POST", "/users", "admin", json={"name": clash, "role": "annotator", "password": "tulip-moon-42"})
        assert response.status_code == 409 and "exists already" in response.json()["error"], clash
    # Signing in is case-insensitive too: the name is the account, however it is typed.
    assert _sign_in(env.client(), "ANN1").status_code == 303
    assert _sign_in(env.client(), "ａｎｎ１").status_code == 303
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.name_key == "admin1")) == 1


def test_migration_0004_gives_existing_accounts_a_case_folded_key_and_tokens_an_expiry(empty_url):
    upgrade(empty_url, "0003")
    with get_engine(empty_url).begin() as conn:
        rows = [(1, "ADMIN1", "admin"), (2, "admin1", "annotator"), (3, "Bob", "external"), (4, "bob", "external"), (5, "ｃａｒｏｌ", "reviewer")]
        for user_id, name, role in rows:
            conn.execute(text('INSERT INTO "user" (id, name, role, password_hash, active, meta, created_at) VALUES (:id, :name, :role, :h, :a, \'{}\', :at)'),
                         {"id": user_id, "name": name, "role": role, "h": accounts.hash_password(PASSWORD, "cheapest") if role != "external" else None,
                          "a": True, "at": T0})
        conn.execute(text("INSERT INTO api_token (id, user_id, token_hash, label, revoked, created_at) VALUES (1, 1, :h, 'old', :r, :at)"),
                     {"h": accounts.token_hash("tth_legacy"), "r": False, "at": T0})
        if conn.dialect.name == "postgresql":
            for table in ("user", "api_token"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), (SELECT max(id) FROM \"{table}\"))"))
    upgrade(empty_url)
    with session_scope(empty_url) as session:
        keys = dict(session.execute(select(User.name, User.name_key)).all())
        assert keys == {"ADMIN1": "admin1", "admin1": None, "Bob": None, "bob": None, "ｃａｒｏｌ": "carol"}
        # Both old case twins still sign in with their exact names; a third spelling is refused.
        assert accounts.authenticate(session, name="admin1", password=PASSWORD, password_profile="cheapest").id == 2
        assert accounts.authenticate(session, name="ADMIN1", password=PASSWORD, password_profile="cheapest").id == 1
        assert accounts.authenticate(session, name="carol", password=PASSWORD, password_profile="cheapest").id == 5
        with pytest.raises(TetherError, match="exists already"):
            accounts.create_user(session, name="Admin1", role="annotator", password="tulip-moon-42", password_profile="cheapest")
        token = session.get(ApiToken, 1)
        assert token.scope == "full" and 89 <= (token.expires_at.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)).days <= 90
        user, scope = accounts.user_for_token(session, "tth_legacy")
        assert user.name == "ADMIN1" and scope == "full"
    from alembic import command

    from tether.store.db import _alembic_config, current_revision

    command.downgrade(_alembic_config(empty_url), "0003")
    assert current_revision(empty_url) == "0003"
    upgrade(empty_url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tether.db'}"
    return request.getfixturevalue("pg_url")


# --- several servers on one store ------------------------------------------------------------------------------


def _web_sign_in(base: str, name: str, password: str = PASSWORD) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=base, timeout=30)
    token = csrf_of(client.get("/login").text)
    return client, client.post("/login", data={"name": name, "password": password, "csrf_token": token})


@pytest.mark.slow
def test_two_servers_on_one_store_share_sessions_revocation_and_the_throttle(any_workspace, tmp_path):
    """`tether serve --workers 2` and a second `tether serve` on the same database (a file, or one PostgreSQL
    schema): a session opened on one is good on the other; logout, deactivation and the sign-in lock made through
    one hold on the other at once."""
    import time

    url = any_workspace.database_url
    with session_scope(url) as session:
        for name, role in (("admin", "admin"), ("alice", "annotator"), ("bob", "annotator")):
            user = accounts.create_user(session, name=name, role=role, password=PASSWORD, password_profile="cheapest")
        bob_token = accounts.issue_token(session, user=user)
    env = {**os.environ, "TETHER_PASSWORD_PROFILE": "cheapest"}
    with served(tmp_path / "a.log", env, workers=2) as a, served(tmp_path / "b.log", env) as b:
        alice_a, response = _web_sign_in(a, "alice")
        assert response.status_code == 303
        alice_b = httpx.Client(base_url=b, cookies={security.SESSION_COOKIE: alice_a.cookies[security.SESSION_COOKIE]}, timeout=30)
        assert alice_b.get("/annotate").status_code == 200
        logout = alice_a.post("/logout", headers={"X-CSRF-Token": csrf_of(alice_a.get("/annotate").text)})
        assert logout.status_code == 303
        assert alice_b.get("/annotate").status_code == 303  # to /login: the session ended for every server

        bob_a, _ = _web_sign_in(a, "bob")
        bob_b = httpx.Client(base_url=b, cookies={security.SESSION_COOKIE: bob_a.cookies[security.SESSION_COOKIE]}, timeout=30)
        assert bob_b.get("/annotate").status_code == 200
        assert httpx.get(b + "/api/v1/me", headers={"Authorization": f"Bearer {bob_token}"}).status_code == 200
        admin_a, _ = _web_sign_in(a, "admin")
        with session_scope(url) as session:
            bob_id = accounts.get_user_by_name(session, "bob").id
        form = {"role": "annotator", "csrf_token": csrf_of(admin_a.get("/admin/users").text)}  # no "active": deactivate
        assert admin_a.post(f"/admin/users/{bob_id}", data=form).status_code == 303
        assert bob_b.get("/annotate").status_code == 303
        assert httpx.get(b + "/api/v1/me", headers={"Authorization": f"Bearer {bob_token}"}).status_code == 401

        # Wrong passwords through A until the account's lock is at least 4 s (1 s, then 2 s, then 4 s), then the
        # right password through B is refused with the same lock.
        retry = 0
        for _ in range(40):  # bounded: 5 free failures, then a few locks
            _, response = _web_sign_in(a, "alice", "wrong-password")
            if response.status_code == 429:
                retry = int(response.headers["retry-after"])
                if retry >= 4:
                    break
                time.sleep(retry)
        assert retry >= 4
        _, refused = _web_sign_in(b, "alice")
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= retry
