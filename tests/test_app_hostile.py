"""Hostile and careless input to the web app and the JSON API, on SQLite and PostgreSQL: each is refused with a
clear 4xx, and the store holds exactly what it held before (``store_state``), so nothing stored is lost.

Text the store cannot keep (NUL, lone surrogates) and non-finite numbers, ids past the columns' range, malformed
form numbers and judgment values.
"""

from __future__ import annotations

import io
import json

import pytest
from apphelp import csrf_of, make_env, pairs, store_state

from tether.client import Client
from tether.errors import TetherError

NUL, SURROGATE = "\u0000", "\ud800"


def _raw_json(env, method: str, path: str, user: str, body: str):
    """A JSON body sent as written (json.dumps would escape a lone surrogate as the attacker does: "\\ud800")."""
    return env.api(method, path, user, content=body.encode("utf-8"), headers={"content-type": "application/json"})


def _dumps(value) -> str:
    return json.dumps(value)  # ensure_ascii: a lone surrogate becomes the escape "\ud800", NaN the token NaN


@pytest.fixture
def campaign(db_url):
    """An app with one pairwise campaign of two items; ann1 holds the first, answered once."""
    env = make_env(db_url)
    pid = env.create_project(name="c", guidelines="# g", label_schema={"kind": "pairwise", "rewrite": True})
    env.push(pid, pairs(3))
    task = env.api("POST", f"/projects/{pid}/next", "ann1").json()
    answered = env.api("POST", f"/assignments/{task['assignment_id']}/judgment", "ann1", json={"value": {"choice": "a", "strength": 1}})
    assert answered.status_code == 201
    pending = env.api("POST", f"/projects/{pid}/next", "ann1").json()
    env.pid, env.pending, env.judgment_id, env.item_id = pid, pending, answered.json()["judgment_id"], task["item_id"]
    return env


@pytest.mark.parametrize("bad", [NUL, SURROGATE])
def test_api_refuses_unstorable_text_anywhere_in_a_body(campaign, bad):
    env = campaign
    pid, aid = env.pid, env.pending["assignment_id"]
    before = store_state(env.url)
    text = f"x{bad}y"
    cases = [
        ("POST", "/projects", "admin", {"name": text}),
        ("POST", "/projects", "admin", {"name": "n", "guidelines": text}),
        ("POST", "/projects", "admin", {"name": "n", "label_schema": {"kind": "pairwise", "flags": [text]}}),
        ("PATCH", f"/projects/{pid}", "admin", {"description": text}),
        ("PUT", f"/projects/{pid}/guidelines", "admin", {"text": text}),
        ("PUT", f"/projects/{pid}/schema", "admin", {"kind": "pairwise", "flags": ["pii", text]}),
        ("POST", f"/projects/{pid}/items", "admin", {"items": [{"prompt": text, "completions": ["a", "b"]}]}),
        ("POST", f"/projects/{pid}/items", "admin", {"items": [{"prompt": "p", "completions": ["a", "b"], "meta": {text: 1}}]}),
        ("POST", f"/assignments/{aid}/judgment", "ann1", {"value": {"choice": "a", "strength": 1, "rewrite": text}}),
        ("POST", f"/assignments/{aid}/skip", "ann1", {"reason": text}),
        ("POST", f"/judgments/{env.judgment_id}/correct", "ann1", {"value": {"choice": "b", "strength": 1, "rewrite": text}}),
        ("POST", f"/items/{env.item_id}/gold", "rev", {"value": {"choice": "a", "strength": 1, "rewrite": text}}),
        ("POST", "/users", "admin", {"name": text, "role": "annotator", "password": "a-long-enough-password"}),
    ]
    for method, path, user, body in cases:
        response = _raw_json(env, method, path, user, _dumps(body))
        assert response.status_code == 422, (method, path, response.text)
        message = response.json()["error"]
        assert ("NUL character" if bad == NUL else "lone surrogate") in message, message
        assert "\n" not in message
    assert store_state(env.url) == before
    # Every reader still answers: nothing poisoned was stored.
    assert env.api("GET", "/projects", "ann1").status_code == 200
    assert env.api("GET", f"/projects/{pid}/judgments?include_text=true", "admin").status_code == 200
    assert env.login("ann1").get(f"/annotate/{pid}").status_code == 200


def test_api_refuses_non_finite_numbers(campaign):
    env = campaign
    before = store_state(env.url)
    for token in ("NaN", "Infinity", "-Infinity", "1e999"):
        for method, path, user, body in [
            ("PATCH", f"/projects/{env.pid}", "admin", f'{{"gold_rate": {token}}}'),
            ("POST", f"/projects/{env.pid}/items", "admin", f'{{"items": [{{"prompt": "p", "completions": ["a", "b"], "meta": {{"score": {token}}}}}]}}'),
            ("POST", f"/items/{env.item_id}/gold", "rev", f'{{"value": {{"choice": "a", "strength": 1, "margin": {token}}}}}'),
        ]:
            response = _raw_json(env, method, path, user, body)
            assert response.status_code == 422 and "numbers must be finite" in response.json()["error"], (path, token, response.text)
    assert store_state(env.url) == before


def test_forms_refuse_nul(campaign):
    """Form fields and query strings: NUL is refused (400) before any route reads it, the login form included.
    (Browsers send invalid UTF-8 in a form as U+FFFD, so a form cannot carry a lone surrogate.)"""
    env = campaign
    pid = env.pid
    admin = env.login("admin")
    token = csrf_of(admin.get(f"/admin/projects/{pid}").text)
    before = store_state(env.url)
    cases = [
        ("/admin/projects/new", {"name": f"p{NUL}", "kind": "pairwise"}),
        ("/admin/projects/new", {"name": "p2", "kind": "pairwise", "guidelines": f"g{NUL}"}),
        (f"/admin/projects/{pid}/guidelines", {"text": f"rules{NUL}"}),
        (f"/admin/projects/{pid}/schema", {"flags": f"pii, x{NUL}"}),
        ("/admin/users", {"name": f"eve{NUL}", "role": "annotator", "password": "a-long-enough-password"}),
    ]
    for path, data in cases:
        response = admin.post(path, data={**data, "csrf_token": token}, follow_redirects=False)
        assert response.status_code == 400 and "NUL character" in response.text, (path, response.status_code)
    upload = admin.post(f"/admin/projects/{pid}/upload", data={"csrf_token": token},
                        files={"file": ("rows.jsonl", io.BytesIO(b'{"prompt": "ok", "completions": ["a", "b"]}\n{"prompt": "p\\u0000", "completions": ["a", "b"]}\n'), "text/plain")})
    assert upload.status_code == 400 and "rows.jsonl:2: prompt holds a NUL character" in upload.text
    assert admin.get(f"/admin/projects/{pid}?notice=a%00b").status_code == 400
    ann = env.login("ann1")
    page = ann.get(f"/annotate/{pid}").text
    aid = env.pending["assignment_id"]
    for action, data in (("submit", {"pick": "A1", "rewrite": f"r{NUL}"}), ("skip", {"reason": "Other", "reason_other": f"r{NUL}"})):
        response = ann.post(f"/annotate/{pid}/assignments/{aid}/{action}", data={**data, "csrf_token": csrf_of(page)}, follow_redirects=False)
        assert response.status_code == 400 and "NUL character" in response.text, action
    anonymous = env.client()
    login_token = csrf_of(anonymous.get("/login").text)
    response = anonymous.post("/login", data={"name": f"ann1{NUL}", "password": "x", "csrf_token": login_token}, follow_redirects=False)
    assert response.status_code == 400
    assert store_state(env.url) == before


def test_client_refuses_unstorable_text_before_sending():
    """tether.client names the field instead of a UnicodeEncodeError or ValueError from deep inside httpx."""
    import httpx

    def never(request):
        raise AssertionError(f"sent {request.url}")

    client = Client("http://tether.invalid", token="tth_x", transport=httpx.MockTransport(never))
    for call, expected in [
        (lambda: client.create_project(f"x{SURROGATE}"), "the request body.name holds a lone surrogate (U+D800)"),
        (lambda: client.push_items(1, [{"prompt": f"p{NUL}", "completions": ["a", "b"]}]), "the request body.items[0].prompt holds a NUL"),
        (lambda: client.update_project(1, gold_rate=float("nan")), "the request body.gold_rate is NaN"),
    ]:
        with pytest.raises(TetherError) as refused:
            call()
        assert expected in refused.value.message, refused.value.message
