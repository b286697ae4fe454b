"""Hostile and careless input to the web app and the JSON API, on SQLite and PostgreSQL: each is refused with a
clear 4xx, and the store holds exactly what it held before (``store_state``), so nothing stored is lost.

Text the store cannot keep (NUL, lone surrogates) and non-finite numbers, ids past the columns' range, malformed
form numbers and judgment values.
"""

from __future__ import annotations

import io
import json

import pytest
from apphelp import csrf_of, make_env, open_task, pairs, store_state

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
    """Form fields (400) and query strings (404 for a page): NUL is refused before any route reads it, the login form included.
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
    assert admin.get(f"/admin/projects/{pid}?notice=a%00b").status_code == 404  # a malformed address names no page
    ann = env.login("ann1")
    page = open_task(ann, pid)
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


PAST_RANGE = (2**31, 2**63, 10**30)  # past PostgreSQL's int4 ids, past SQLite's int64, past both


def test_ids_past_the_columns_range_are_refused_in_every_path_and_query_parameter(campaign):
    """An id past 64 bits was an OverflowError on SQLite, past int4 a DataError on PostgreSQL: both were 500."""
    from fastapi.routing import APIRoute

    from tether.app.routes import admin as admin_routes
    from tether.app.routes import annotate, api, auth, review

    env = campaign
    admin = env.login("admin")
    token = csrf_of(admin.get("/admin").text)
    before = store_state(env.url)
    tried = set()
    for route in [r for module in (admin_routes, annotate, api, auth, review) for r in module.router.routes]:
        names = [p.name for p in route.dependant.path_params] if isinstance(route, APIRoute) else []
        for method in (route.methods or ()) if names else ():
            for value in PAST_RANGE:
                path = route.path_format.format(**{name: value for name in names})
                if path.startswith("/api/v1/"):
                    response = env.api(method, path.removeprefix("/api/v1"), "admin", json={})
                    expected = 422
                else:
                    response = admin.request(method, path, headers={"x-csrf-token": token}, follow_redirects=False)
                    expected = 404
                assert response.status_code == expected, (method, path, response.status_code, response.text[:200])
            tried.add((method, route.path_format))
    assert len(tried) >= 20, tried
    queries = [
        ("api", f"/projects/{env.pid}/judgments?after_id={{}}"),
        ("web", "/admin/audit?before={}"),
        ("web", "/review?project_id={}"),
        ("web", "/review?offset={}"),
    ]
    for kind, template in queries:
        for value in PAST_RANGE:
            if kind == "api":
                assert env.api("GET", template.format(value), "admin").status_code == 422
            else:
                assert admin.get(template.format(value), follow_redirects=False).status_code == 404
    # The largest id that fits is simply not found.
    assert env.api("GET", f"/projects/{2**31 - 1}", "admin").status_code == 404
    assert admin.get(f"/review/items/{2**31 - 1}").status_code == 404
    assert store_state(env.url) == before


@pytest.mark.parametrize("raw", ["--5", "²", "٣", "1_0", "+1", " ", "1.0", "0x1", "9" * 40])
def test_malformed_form_numbers_are_a_400(campaign, raw):
    """`isdigit()` then `int()` gave 500 for '--5' (lstrip('-') made it look like digits) and '²' (a digit to
    isdigit, not to int)."""
    env = campaign
    rank_pid = env.create_project(name="rank", label_schema={"kind": "ranking"})
    env.push(rank_pid, [{"prompt": "p", "completions": ["a", "b", "c"]}])
    ann = env.login("ann1")
    before = store_state(env.url)
    page = open_task(ann, env.pid)
    aid = env.pending["assignment_id"]
    for field in ("schema_version", "guideline_version"):
        response = ann.post(f"/annotate/{env.pid}/assignments/{aid}/submit", data={"pick": "A1", field: raw, "csrf_token": csrf_of(page)},
                            follow_redirects=False)
        assert response.status_code == 400, (field, response.status_code)
    # A time the page could not measure is left to the server (clamped to the time since the assignment).
    rank_page = open_task(ann, rank_pid)
    rank_aid = int(rank_page.split('data-assignment="')[1].split('"')[0])
    response = ann.post(f"/annotate/{rank_pid}/assignments/{rank_aid}/submit",
                        data={"rank_0": raw, "rank_1": "1", "rank_2": "2", "csrf_token": csrf_of(rank_page)}, follow_redirects=False)
    assert response.status_code == 400 and "rank every response" in response.text
    reviewer = env.login("rev")
    review_page = reviewer.get(f"/review/items/{env.item_id}").text
    response = reviewer.post(f"/review/items/{env.item_id}/gold", data={"judgment_id": raw, "csrf_token": csrf_of(review_page)}, follow_redirects=False)
    assert response.status_code == 404
    response = reviewer.post(f"/review/items/{env.item_id}/adjudicate", data={"judgment_id": raw, "csrf_token": csrf_of(review_page)}, follow_redirects=False)
    assert response.status_code == 404 and "has no judgment" in response.text
    after = store_state(env.url)
    after.pop("assignment"), before.pop("assignment")  # opening the ranking task made its assignment
    after.pop("assignment rows"), before.pop("assignment rows")
    after.pop("item"), before.pop("item")
    assert after == before


MALFORMED_VALUES = [
    ("pairwise", {"choice": "a", "strength": [1]}),
    ("pairwise", {"choice": ["a"]}),
    ("pairwise", {"choice": "a", "strength": True}),
    ("pairwise", {"choice": "a", "strength": 1.5}),
    ("ranking", {"ranking": 5}),
    ("ranking", {"ranking": [0, "a", 1]}),
    ("ranking", {"ranking": None}),
    ("ranking", {"ranking": [0, True, 2]}),
    ("ranking", {"comparisons": [1]}),
    ("ranking", {"comparisons": {"a": 0}}),
    ("ranking", {"comparisons": [{"a": 0, "b": 1, "choice": ["a"]}]}),
    ("rating", {"ratings": {"helpfulness": "NaN"}}),
    ("rating", {"ratings": {"helpfulness": 3}, "scale": "ab"}),
    ("rating", {"ratings": {"helpfulness": 3}, "scale": [1]}),
    ("rating", {"ratings": {"helpfulness": 3}, "scale": [5, 1]}),
    ("rating", {"ratings": {"helpfulness": 3}, "scale": None, "flags": "pii"}),
    ("rating", {"ratings": [3]}),
]


def test_malformed_judgment_values_are_a_4xx(campaign):
    env = campaign
    projects = {"pairwise": env.pid}
    projects["ranking"] = env.create_project(name="r", label_schema={"kind": "ranking"})
    env.push(projects["ranking"], [{"prompt": "p", "completions": ["a", "b", "c"]}])
    projects["rating"] = env.create_project(name="t", label_schema={"kind": "rating", "aspects": ["helpfulness"]})
    env.push(projects["rating"], [{"prompt": "p", "completion": "c"}])
    tasks = {kind: env.api("POST", f"/projects/{pid}/next", "ann2").json() for kind, pid in projects.items()}
    before = store_state(env.url)
    for kind, value in MALFORMED_VALUES:
        task = tasks[kind]
        for method, path, user, body in [
            ("POST", f"/assignments/{task['assignment_id']}/judgment", "ann2", {"value": value}),
            ("POST", f"/items/{task['item_id']}/gold", "rev", {"value": value}),
            ("POST", f"/projects/{projects[kind]}/items", "admin", {"items": [{"prompt": "new", "completions": ["a", "b", "c"][: 1 if kind == "rating" else 2 if kind == "pairwise" else 3], "gold": value}]}),
        ]:
            response = env.api(method, path, user, json=body)
            assert response.status_code in (400, 422), (kind, value, path, response.status_code, response.text)
            assert "invalid" in response.json()["error"] or "must" in response.json()["error"], response.text
    for token in ("NaN", "Infinity"):  # as JSON tokens, not strings
        response = _raw_json(env, "POST", f"/assignments/{tasks['rating']['assignment_id']}/judgment", "ann2",
                             f'{{"value": {{"ratings": {{"helpfulness": {token}}}}}}}')
        assert response.status_code == 422
    assert store_state(env.url) == before
