"""Roles: an annotator cannot read another's judgments nor any admin page or API (403, and nothing of it in the
reply); reviewers read judgments but not admin pages; no token or a dead token is a 401."""

from __future__ import annotations

import pytest
from apphelp import make_env, open_task, pairs

from tether.store import accounts
from tether.store.db import session_scope, upgrade


def _build(folder):
    url = f"sqlite:///{folder / 'roles.db'}"
    upgrade(url)
    env = make_env(url)
    pid = env.create_project(name="secret-campaign", overlap=2)
    env.push(pid, pairs(2))
    task = env.api("POST", f"/projects/{pid}/next", "ann1").json()
    body = {"value": {"choice": "b", "strength": 3, "critique": "ann1-private-critique"}}
    judgment = env.api("POST", f"/assignments/{task['assignment_id']}/judgment", "ann1", json=body).json()
    env.pid, env.item_id, env.judgment_id, env.ann1_assignment = pid, task["item_id"], judgment["judgment_id"], task["assignment_id"]
    return env


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One app for the read-only checks of this module (the checks that change accounts build their own)."""
    return _build(tmp_path_factory.mktemp("roles"))


ADMIN_AND_REVIEW_API = [
    ("GET", "/projects/{pid}/judgments"),
    ("GET", "/projects/{pid}/progress"),
    ("GET", "/items/{item}/judgments"),
    ("POST", "/items/{item}/gold"),
]
ADMIN_API = [
    ("POST", "/projects"),
    ("PATCH", "/projects/{pid}"),
    ("PUT", "/projects/{pid}/guidelines"),
    ("PUT", "/projects/{pid}/schema"),
    ("POST", "/projects/{pid}/items"),
    ("GET", "/users"),
    ("POST", "/users"),
]
ADMIN_PAGES = ["/admin", "/admin/projects/new", "/admin/projects/{pid}", "/admin/users", "/admin/audit"]
REVIEW_PAGES = ["/review", "/review/items/{item}"]


def _fill(path: str, env) -> str:
    return path.format(pid=env.pid, item=env.item_id)


def _body(method: str) -> dict | None:
    return {} if method in ("POST", "PUT", "PATCH") else None


@pytest.mark.parametrize(("method", "path"), ADMIN_AND_REVIEW_API + ADMIN_API)
def test_annotator_gets_403_from_admin_and_review_api(env, method, path):
    response = env.api(method, _fill(path, env), "ann2", json=_body(method))
    assert response.status_code == 403
    assert "ann1" not in response.text and "private" not in response.text
    # The same for an object that does not exist: the role is checked before anything is looked up.
    missing = env.api(method, path.format(pid=999, item=999), "ann2", json=_body(method))
    assert missing.status_code == 403


@pytest.mark.parametrize(("method", "path"), ADMIN_API)
def test_reviewer_gets_403_from_admin_api(env, method, path):
    assert env.api(method, _fill(path, env), "rev", json=_body(method)).status_code == 403


def test_reviewer_reads_judgments(env):
    rows = env.api("GET", f"/items/{env.item_id}/judgments", "rev").json()["judgments"]
    assert [r["user"] for r in rows] == ["ann1"]
    page = env.login("rev").get(f"/review/items/{env.item_id}")
    assert page.status_code == 200 and "ann1-private-critique" in page.text


@pytest.mark.parametrize("path", ADMIN_PAGES + REVIEW_PAGES)
def test_annotator_gets_403_from_admin_and_review_pages(env, path):
    client = env.login("ann2")
    response = client.get(_fill(path, env), follow_redirects=False)
    assert response.status_code == 403
    assert "ann1" not in response.text and "private" not in response.text and "secret-campaign" not in response.text


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_reviewer_gets_403_from_admin_pages(env, path):
    assert env.login("rev").get(_fill(path, env), follow_redirects=False).status_code == 403


def test_annotator_cannot_touch_another_annotators_assignment_or_judgment(env):
    value = {"value": {"choice": "a", "strength": 1}}
    assert env.api("POST", f"/assignments/{env.ann1_assignment}/judgment", "ann2", json=value).status_code == 403
    assert env.api("POST", f"/assignments/{env.ann1_assignment}/skip", "ann2", json={"reason": "x"}).status_code == 403
    assert env.api("POST", f"/judgments/{env.judgment_id}/correct", "ann2", json=value).status_code == 403
    # A missing assignment is the same 403 as someone else's.
    assert env.api("POST", "/assignments/99999/judgment", "ann2", json=value).status_code == 403
    client = env.login("ann2")
    response = client.post(f"/annotate/{env.pid}/assignments/{env.ann1_assignment}/submit", data={"pick": "A1"},
                           headers={"X-CSRF-Token": _csrf(client)})
    assert response.status_code == 403


def test_annotator_is_blind_to_others_answers(env):
    client = env.login("ann2")
    page = open_task(client, env.pid)
    assert 'id="workspace"' in page and "data-assignment" in page
    assert "ann1" not in page and "private" not in page
    task = env.api("POST", f"/projects/{env.pid}/next", "ann2").json()
    assert "judgments" not in task and "ann1" not in str(task)


def _csrf(client) -> str:
    from apphelp import csrf_of

    return csrf_of(client.get("/login").text)


def test_tokens_missing_wrong_revoked_or_inactive_are_401(tmp_path):
    env = _build(tmp_path)
    assert env.api("GET", "/me", None).status_code == 401
    assert env.api("GET", "/me", None, headers={"Authorization": "Bearer tth_not-a-token"}).status_code == 401
    assert env.api("GET", "/me", None, headers={"Authorization": f"Basic {env.tokens['admin']}"}).status_code == 401
    assert env.api("GET", "/me", "ann1").json()["name"] == "ann1"
    with session_scope(env.url) as session:
        accounts.revoke_tokens(session, user=accounts.get_user_by_name(session, "ann1"))
        accounts.set_role(session, user=accounts.get_user_by_name(session, "ann2"), active=False)
    assert env.api("GET", "/me", "ann1").status_code == 401
    assert env.api("GET", "/me", "ann2").status_code == 401
    assert env.api("GET", "/me", "ann3").status_code == 200


def test_signed_out_visitors_are_sent_to_login(env):
    client = env.client()
    for path in ("/annotate", f"/annotate/{env.pid}", "/admin", "/review"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next=")
