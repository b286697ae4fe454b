"""The web pages through TestClient: sessions, CSRF, untrusted model output rendered inert, the annotation forms
(shown positions in, item positions stored), admin forms with uploads and audit events, size limits."""

from __future__ import annotations

import io
import json

import pytest
from apphelp import PASSWORD, csrf_of, make_env, open_task, pairs
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tether.app.main import create_app
from tether.app.settings import AppSettings
from tether.store import accounts
from tether.store.db import session_scope, upgrade
from tether.store.tables import Assignment, AuditEvent, Judgment, Project, Prompt, User

XSS_COMPLETION = 'Sure! <script>alert("xss")</script> and <img src=x onerror=alert(1)> and [click](javascript:alert(2))'


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'web.db'}"
    upgrade(url)
    return url


@pytest.fixture
def env(url):
    return make_env(url)


def _task_ids(html: str) -> int:
    import re

    return int(re.search(r'data-assignment="(\d+)"', html).group(1))


def test_login_sets_httponly_samesite_session_cookie(env):
    client = env.client()
    login_page = client.get("/login")
    assert "tether_csrf=" in login_page.headers["set-cookie"] and "HttpOnly" in login_page.headers["set-cookie"]
    response = client.post("/login", data={"name": "ann1", "password": PASSWORD, "csrf_token": csrf_of(login_page.text)}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/annotate"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("tether_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "content-security-policy" in login_page.headers and "script-src 'self'" in login_page.headers["content-security-policy"]


def test_wrong_password_and_no_default_account(env, url):
    client = env.client()
    token = csrf_of(client.get("/login").text)
    for name, password in (("ann1", "wrong-password"), ("admin", "admin"), ("root", "root"), ("nobody", PASSWORD)):
        response = client.post("/login", data={"name": name, "password": password, "csrf_token": token}, follow_redirects=False)
        assert response.status_code == 401 and "Wrong name or password" in response.text
    # A fresh store has no account at all.
    fresh = AppSettings(database_url=url.replace("web.db", "fresh.db"), password_profile="cheapest")
    upgrade(fresh.database_url)
    bare = TestClient(create_app(fresh))
    token = csrf_of(bare.get("/login").text)
    assert bare.post("/login", data={"name": "admin", "password": "", "csrf_token": token}).status_code in (400, 401)
    assert bare.post("/login", data={"name": "admin", "password": "admin", "csrf_token": token}).status_code == 401


def test_password_change_ends_old_sessions(env):
    client = env.login("ann1")
    assert client.get("/annotate", follow_redirects=False).status_code == 200
    with session_scope(env.url) as session:
        accounts.set_password(session, user=accounts.get_user_by_name(session, "ann1"), password="a-new-long-password", password_profile="cheapest")
    assert client.get("/annotate", follow_redirects=False).status_code == 303


def test_forms_without_a_valid_csrf_token_are_refused(env):
    pid = env.create_project()
    env.push(pid, pairs(1))
    client = env.login("ann1")
    page = open_task(client, pid)
    aid = _task_ids(page)
    target = f"/annotate/{pid}/assignments/{aid}/submit"
    for token in (None, "", "0" * 64, csrf_of(env.client().get("/login").text)):  # the last: another visitor's token
        data = {"pick": "A1"} if token is None else {"pick": "A1", "csrf_token": token}
        response = client.post(target, data=data, follow_redirects=False)
        assert response.status_code == 403 and "security token" in response.text
    assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
    anonymous = env.client()
    anonymous.get("/login")
    assert anonymous.post("/login", data={"name": "ann1", "password": PASSWORD}).status_code == 403
    admin = env.login("admin")
    assert admin.post("/admin/users", data={"name": "eve", "role": "admin", "password": "long-enough-pw"}).status_code == 403
    with session_scope(env.url) as session:
        assert session.scalar(select(Judgment.id)) is None
        assert session.scalar(select(User.id).where(User.name == "eve")) is None
    # With the token, it goes through.
    ok = client.post(target, data={"pick": "A1", "csrf_token": csrf_of(page)}, follow_redirects=False)
    assert ok.status_code == 303


def test_untrusted_completion_renders_inert(env):
    pid = env.create_project()
    env.push(pid, [{"prompt": "say hi <script>alert(3)</script>", "chosen": XSS_COMPLETION, "rejected": "**bold** `code`"}])
    client = env.login("ann1")
    for html in (open_task(client, pid), env.login("rev").get("/review/items/1").text):
        assert "<script>alert" not in html and "<img" not in html and "onerror=alert(1)>" not in html
        assert "&lt;script&gt;alert(&quot;xss&quot;)&lt;/script&gt;" in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
        assert 'href="javascript:' not in html
        assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html
    assert "<strong>bold</strong>" in open_task(client, pid)  # markdown still renders


def _submit(client, page_html: str, pid: int, data: dict, htmx: bool = False):
    aid = _task_ids(page_html)
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(f"/annotate/{pid}/assignments/{aid}/submit", data={**data, "csrf_token": csrf_of(page_html)},
                       headers=headers, follow_redirects=False)


def test_pairwise_form_stores_item_positions_and_htmx_returns_next_task(env):
    pid = env.create_project()
    env.push(pid, pairs(2))
    client = env.login("ann1")
    page = open_task(client, pid)
    response = _submit(client, page, pid, {"pick": "A2", "flag": ["pii", "harmful"], "critique": " too terse ", "time_spent_ms": "2500"}, htmx=True)
    assert response.status_code == 200 and 'id="workspace"' in response.text and "<html" not in response.text
    assert _task_ids(response.text) != _task_ids(page)  # the next task came in the same reply
    with session_scope(env.url) as session:
        judgment = session.scalar(select(Judgment))
        shown = session.get(Assignment, judgment.assignment_id).shown_order
    # The left side (shown "A") was item position shown[0].
    assert judgment.value == {"choice": "a" if shown[0] == 0 else "b", "strength": 2, "flags": ["pii", "harmful"], "critique": "too terse"}
    assert judgment.shown_order == shown and judgment.source == "web"
    assert 0 <= judgment.time_spent_ms <= 2500
    missing = _submit(client, response.text, pid, {}, htmx=True)
    assert missing.status_code == 400 and "choose which response is better" in missing.text
    assert missing.headers["HX-Retarget"] == "#flash"


def test_ranking_and_rating_forms_map_shown_to_item_positions(env):
    rank_pid = env.create_project(name="rank", label_schema={"kind": "ranking"})
    env.push(rank_pid, [{"prompt": "p", "completions": ["zero", "one", "two"]}])
    rate_pid = env.create_project(name="rate", label_schema={"kind": "rating", "aspects": ["helpfulness", "honesty"], "scale": [1, 7]})
    env.push(rate_pid, [{"prompt": "p", "completion": "c"}])
    client = env.login("ann1")
    page = open_task(client, rank_pid)
    assert _submit(client, page, rank_pid, {"rank_0": "2", "rank_1": "3", "rank_2": "1"}).status_code == 303
    page = open_task(client, rate_pid)
    bad = _submit(client, page, rate_pid, {"rating_0": "8", "rating_1": "3"})
    assert bad.status_code == 400 and "rate &#39;helpfulness&#39; from 1 to 7" in bad.text
    assert _submit(client, page, rate_pid, {"rating_0": "7", "rating_1": "3"}).status_code == 303
    with session_scope(env.url) as session:
        ranked, rated = session.scalars(select(Judgment).order_by(Judgment.id)).all()
    shown = ranked.shown_order
    # Ranks by shown index: shown 2 best, then shown 0, then shown 1.
    assert ranked.value["ranking"] == [shown[2], shown[0], shown[1]]
    assert rated.value["ratings"] == {"helpfulness": 7, "honesty": 3} and rated.value["scale"] == [1, 7]


def test_skip_form_needs_a_reason(env):
    pid = env.create_project()
    env.push(pid, pairs(2))
    client = env.login("ann1")
    page = open_task(client, pid)
    aid = _task_ids(page)
    response = client.post(f"/annotate/{pid}/assignments/{aid}/skip", data={"reason": "Other", "reason_other": "typo in prompt", "csrf_token": csrf_of(page)},
                           follow_redirects=False)
    assert response.status_code == 303
    with session_scope(env.url) as session:
        assert session.get(Assignment, aid).skip_reason == "typo in prompt"


def test_admin_creates_project_from_uploaded_file_with_audit(env):
    admin = env.login("admin")
    page = admin.get("/admin/projects/new").text
    rows = pairs(3) + [{"prompt": "gold q", "chosen": "right", "rejected": "wrong", "gold": {"choice": "a", "strength": 3}}]
    upload = io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())
    response = admin.post(
        "/admin/projects/new",
        data={"name": "from-file", "kind": "pairwise", "strength": "on", "flags": "pii, harmful", "critique": "on",
              "overlap": "2", "gold_percent": "10", "ttl_minutes": "30", "guidelines": "# Rules\n\nBe *fair*.", "csrf_token": csrf_of(page)},
        files={"file": ("pairs.jsonl", upload, "application/octet-stream")},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    project_page = admin.get(response.headers["location"]).text
    assert "4 items (1 gold)" in project_page and "<em>fair</em>" in project_page
    token = csrf_of(project_page)
    pid = int(response.headers["location"].rsplit("/", 1)[1])
    assert admin.post(f"/admin/projects/{pid}/guidelines", data={"text": "# Rules v2", "csrf_token": token}, follow_redirects=False).status_code == 303
    bad = admin.post(f"/admin/projects/{pid}/upload", data={"csrf_token": token},
                     files={"file": ("bad.jsonl", io.BytesIO(b'{"prompt": "p", "chosen": "x"}\n'), "text/plain")})
    assert bad.status_code == 400 and "bad.jsonl:1" in bad.text
    with session_scope(env.url) as session:
        project = session.get(Project, pid)
        assert (project.overlap, project.gold_rate, project.assignment_ttl_s) == (2, 0.1, 1800)
        events = session.scalars(select(AuditEvent).where(AuditEvent.actor == "user:admin")).all()
    actions = [e.action for e in events]
    assert "project.create" in actions and "items.add" in actions and "guideline.version" in actions
    assert next(e for e in events if e.action == "items.add").detail["items"] == 4


def test_admin_issues_token_shown_once(env):
    admin = env.login("admin")
    page = admin.get("/admin/users").text
    with session_scope(env.url) as session:
        ann3 = accounts.get_user_by_name(session, "ann3").id
    shown = admin.post(f"/admin/users/{ann3}/token", data={"csrf_token": csrf_of(page)}).text
    import re

    token = re.search(r'class="token">(tth_[^<]+)<', shown).group(1)
    assert env.api("GET", "/me", None, headers={"Authorization": f"Bearer {token}"}).json()["name"] == "ann3"
    assert token not in admin.get("/admin/users").text


def test_oversize_form_refused_with_a_clear_message(url):
    env = make_env(url, max_body_bytes=8 * 1024, max_answer_chars=100)
    pid = env.create_project()
    env.push(pid, pairs(1))
    client = env.login("ann1")
    page = open_task(client, pid)
    long = _submit(client, page, pid, {"pick": "T", "critique": "x" * 500})
    assert long.status_code == 400 and "the critique has 500 characters; the limit is 100" in long.text
    huge = _submit(client, page, pid, {"pick": "T", "critique": "x" * 20_000})
    assert huge.status_code == 413 and "the limit for this request is 8 KB" in huge.text


LINKS = "See [the docs](https://example.org/docs?a=1&b=2), <https://example.org/auto> or <mailto:help@example.org>."


def test_links_render_as_safe_anchors_on_every_page_and_answers_are_kept(env):
    """A markdown link in a prompt, a completion, the guidelines or a rewrite used to raise in the render rule: the
    annotate, admin and review pages answered 500 and an HTMX submit whose next item held a link lost its answer."""
    pid = env.create_project(guidelines=f"# Rules\n\n{LINKS}", label_schema={"kind": "pairwise", "rewrite": True})
    env.push(pid, [{"prompt": f"q0 {LINKS}", "chosen": "plain", "rejected": "text"},
                   {"prompt": "q1", "chosen": f"answer {LINKS}", "rejected": "[bad](javascript:alert(1)) [rel](/logout)"}])
    client = env.login("ann1")
    page = client.post(f"/annotate/{pid}/next", data={"csrf_token": csrf_of(client.get("/annotate").text)})
    assert page.status_code == 200, page.text
    anchor = '<a href="https://example.org/docs?a=1&amp;b=2" rel="nofollow noopener noreferrer" target="_blank">the docs</a>'
    assert page.text.count(anchor) == 2  # the prompt and the guidelines
    assert 'href="mailto:help@example.org"' in page.text and 'href="https://example.org/auto"' in page.text
    # The next item holds links too: the answer to this one is kept and the next task comes back.
    reply = _submit(client, page.text, pid, {"pick": "A1", "rewrite": f"better: {LINKS}"}, htmx=True)
    assert reply.status_code == 200 and anchor in reply.text
    assert 'href="javascript:' not in reply.text and 'href="/logout"' not in reply.text
    assert "[bad](javascript:alert(1))" in reply.text  # an unsafe target stays text
    with session_scope(env.url) as session:
        (judgment,) = session.scalars(select(Judgment)).all()
        item_id = judgment.item_id
    assert judgment.value["rewrite"].startswith("better: See [the docs]")
    admin = env.login("admin")
    for path in (f"/admin/projects/{pid}", f"/review/items/{item_id}", "/review"):
        response = admin.get(path)
        assert response.status_code == 200, (path, response.text)
    assert anchor in admin.get(f"/admin/projects/{pid}").text and anchor in admin.get(f"/review/items/{item_id}").text


def _bombs(tmp_path) -> list[tuple[str, bytes]]:
    """Small uploads that expand to far more than the limit: gzip of one huge line, gzip of a JSON list, and
    parquet whose dictionary names one 1 MB text from 100 rows (a few KB on disk)."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    line = json.dumps({"prompt": "p" * 20_000_000, "completions": ["a", "b"]}).encode()
    parquet = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"prompt": ["q" * 1_000_000] * 100, "completions": [["a", "b"]] * 100}), parquet, compression="zstd")
    return [
        ("line.jsonl.gz", gzip.compress(line)),
        ("list.json.gz", gzip.compress(b"[" + line + b"]")),
        ("bomb.parquet", parquet.read_bytes()),
        ("bomb.parquet.gz", gzip.compress(parquet.read_bytes())),
    ]


def test_uploads_count_decompressed_bytes_while_streaming(url, tmp_path):
    """A 300 KB .jsonl.gz of one 300 MB line took the server from 173 MB to 1.3 GB before it was refused: the
    limit counted compressed bytes. Now the decompressed bytes are counted as they are read."""
    import tracemalloc

    env = make_env(url, max_upload_bytes=1024 * 1024)
    pid = env.create_project()
    admin = env.login("admin")
    token = csrf_of(admin.get(f"/admin/projects/{pid}").text)
    with session_scope(env.url) as session:
        before = session.scalar(select(func.count()).select_from(Prompt))
    for name, data in _bombs(tmp_path):
        assert len(data) < 200_000, (name, len(data))
        tracemalloc.start()
        try:
            response = admin.post(f"/admin/projects/{pid}/upload", data={"csrf_token": token}, files={"file": (name, io.BytesIO(data), "application/octet-stream")})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 413, (name, response.status_code, response.text[:300])
        assert f"{name} holds more than 1.0 MB" in response.text and "the limit is 1.0 MB" in response.text, response.text
        assert peak < 8 * 1024 * 1024, (name, peak)  # the old code held the whole expansion (20 MB or 100 MB)
    with session_scope(env.url) as session:
        assert session.scalar(select(func.count()).select_from(Prompt)) == before
    # A file within the limit still goes in, gzipped or not.
    small = "".join(json.dumps(r) + "\n" for r in pairs(3)).encode()
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    chats = tmp_path / "chats.parquet"
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": f"hi {i}"}] for i in range(3)],
                             "completions": [["hello", f"hey {i}"] for i in range(3)]}), chats)
    for name, data in (("ok.jsonl.gz", gzip.compress(small)), ("ok2.jsonl", small.replace(b"q", b"r")), ("chats.parquet", chats.read_bytes())):
        response = admin.post(f"/admin/projects/{pid}/upload", data={"csrf_token": token}, files={"file": (name, io.BytesIO(data), "text/plain")},
                              follow_redirects=False)
        assert response.status_code == 303, response.text
    with session_scope(env.url) as session:
        assert session.scalar(select(func.count()).select_from(Prompt)) == before + 9


def test_opening_the_task_page_assigns_nothing(env):
    """GET /annotate/{id} used to take an item from the queue (a state change on GET: a link preview or a
    prefetch took items). It shows the pending task or a Start button; the POST behind the button assigns."""
    from apphelp import store_state

    pid = env.create_project()
    env.push(pid, pairs(2))
    client = env.login("ann1")
    before = store_state(env.url)
    for _ in range(3):
        page = client.get(f"/annotate/{pid}")
        assert page.status_code == 200 and "data-assignment" not in page.text and f'action="/annotate/{pid}/next"' in page.text
    assert store_state(env.url) == before
    task_page = open_task(client, pid)
    with session_scope(env.url) as session:
        (assignment,) = session.scalars(select(Assignment)).all()
    assert _task_ids(task_page) == assignment.id
    taken = store_state(env.url)
    assert _task_ids(client.get(f"/annotate/{pid}").text) == assignment.id  # shown again, not renewed
    assert store_state(env.url) == taken
    # Answer both without HTMX: each answer's redirect shows the next task; then the done state.
    page = task_page
    for _ in range(2):
        reply = _submit(client, page, pid, {"pick": "T"})
        assert reply.status_code == 303
        page = client.get(reply.headers["location"]).text
    assert "Nothing left for you here" in page and "data-assignment" not in page
