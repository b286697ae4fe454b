"""The JSON API with TestClient, on SQLite and PostgreSQL: push items, take and answer them, pull judgments;
queue rules (overlap, never twice, expiry, gold rate, skip), immutability and versions, refusals."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from apphelp import make_env, pairs
from sqlalchemy import select, update

from tether.store import campaigns
from tether.store.db import session_scope
from tether.store.tables import Assignment, AuditEvent, Item, Judgment, Project, User, utcnow


def _take(env, project_id: int, user: str):
    response = env.api("POST", f"/projects/{project_id}/next", user)
    assert response.status_code in (200, 204), response.text
    return None if response.status_code == 204 else response.json()


def _answer(env, task: dict, user: str, value: dict | None = None, **extra):
    body = {"value": value or {"choice": "a", "strength": 1}, **extra}
    return env.api("POST", f"/assignments/{task['assignment_id']}/judgment", user, json=body)


def test_push_take_answer_pull(db_url):
    env = make_env(db_url)
    pid = env.create_project(name="helpful", guidelines="# Be kind", overlap=1)
    rows = pairs(3) + [pairs(1)[0]]  # the fourth repeats the first
    rows.append({"prompt": [{"role": "user", "content": "hi"}], "completions": [
        [{"role": "assistant", "content": "hello!"}], {"text": "hey", "model": "tiny-v2"}]})
    counts = env.push(pid, rows)
    assert counts == {"items": 4, "duplicates": 1, "gold": 0, "prompts": 4, "completions": 8}

    task = _take(env, pid, "ann1")
    assert [c["position"] for c in task["completions"]] == task["shown_order"]
    assert sorted(task["shown_order"]) == [0, 1]
    assert task["guideline_version"] == 1 and task["schema_version"] == 1
    # Taking again before answering gives the same assignment back.
    assert _take(env, pid, "ann1")["assignment_id"] == task["assignment_id"]

    response = _answer(env, task, "ann1", {"choice": "b", "strength": 3, "flags": ["pii"], "critique": "B is right"}, time_spent_ms=1234)
    assert response.status_code == 201, response.text
    pulled = env.api("GET", f"/projects/{pid}/judgments?include_text=true", "admin").json()
    (row,) = pulled["judgments"]
    assert row["user"] == "ann1" and row["source"] == "api" and row["item_id"] == task["item_id"]
    assert row["value"] == {"choice": "b", "strength": 3, "flags": ["pii"], "critique": "B is right"}
    assert row["shown_order"] == task["shown_order"]
    assert row["guideline_version"] == 1 and row["schema_version"] == 1
    assert 0 <= row["time_spent_ms"] <= 1234
    assert row["prompt"].startswith("q0") and len(row["completions"]) == 2
    assert pulled["next_after_id"] == row["id"]
    assert env.api("GET", f"/projects/{pid}/judgments?after_id={row['id']}", "admin").json()["judgments"] == []

    progress = env.api("GET", f"/projects/{pid}/progress", "rev").json()
    assert progress["items"] == 4 and progress["slots_filled"] == 1 and progress["fraction_done"] == 0.25
    assert progress["annotators"]["ann1"]["done"] == 1


def test_each_item_goes_to_overlap_different_annotators_never_twice(db_url):
    env = make_env(db_url)
    pid = env.create_project(overlap=2)
    env.push(pid, pairs(3))
    taken = []
    for _round in range(5):
        for user in ("ann1", "ann2", "ann3"):
            task = _take(env, pid, user)
            if task is not None:
                assert _answer(env, task, user).status_code == 201
                taken.append((task["item_id"], user))
    assert len(taken) == 6 == len(set(taken))  # 3 items x overlap 2, no (item, user) twice
    per_item = Counter(item for item, _ in taken)
    assert sorted(per_item.values()) == [2, 2, 2]
    for user in ("ann1", "ann2", "ann3"):
        assert _take(env, pid, user) is None


def test_expired_assignment_is_reassigned_and_late_answer_refused(db_url):
    env = make_env(db_url)
    pid = env.create_project(overlap=1, assignment_ttl_s=600)
    env.push(pid, pairs(1))
    first = _take(env, pid, "ann1")
    assert _take(env, pid, "ann2") is None  # the only slot is held

    with session_scope(db_url) as session:
        session.execute(update(Assignment).where(Assignment.id == first["assignment_id"]).values(expires_at=utcnow() - timedelta(seconds=1)))
    second = _take(env, pid, "ann2")
    assert second is not None and second["item_id"] == first["item_id"]
    late = _answer(env, first, "ann1")
    assert late.status_code == 409 and "expired" in late.json()["error"]
    assert _answer(env, second, "ann2").status_code == 201
    with session_scope(db_url) as session:
        assert session.scalar(select(Assignment.state).where(Assignment.id == first["assignment_id"])) in ("pending", "expired")
        assert [j.user_id for j in session.scalars(select(Judgment)).all()] == [session.scalar(select(User.id).where(User.name == "ann2"))]


def test_expired_but_untaken_assignment_resumes(db_url):
    env = make_env(db_url)
    pid = env.create_project(overlap=1)
    env.push(pid, pairs(2))
    first = _take(env, pid, "ann1")
    with session_scope(db_url) as session:
        session.execute(update(Assignment).where(Assignment.id == first["assignment_id"]).values(expires_at=utcnow() - timedelta(seconds=1)))
    again = _take(env, pid, "ann1")
    assert again["assignment_id"] == first["assignment_id"]
    assert _answer(env, again, "ann1").status_code == 201


def test_gold_items_mixed_in_at_the_set_rate(db_url):
    env = make_env(db_url)
    pid = env.create_project(overlap=1, gold_rate=0.25)
    gold = [{**row, "gold": {"choice": "a", "strength": 2}} for row in pairs(2, prefix="gold")]
    assert env.push(pid, pairs(8) + gold)["gold"] == 2
    sequence = []
    while (task := _take(env, pid, "ann1")) is not None:
        with session_scope(db_url) as session:
            sequence.append(session.get(Item, task["item_id"]).is_gold)
        _answer(env, task, "ann1", {"choice": "a", "strength": 2})
    # The n-th item is gold when gold_seen < floor(n * 0.25): n = 4 and n = 8.
    assert [i + 1 for i, g in enumerate(sequence) if g] == [4, 8]
    assert len(sequence) == 10
    progress = env.api("GET", f"/projects/{pid}/progress", "admin").json()
    assert progress["gold_items"] == 2 and progress["annotators"]["ann1"]["gold_agree"] == 2


def test_skip_with_reason_frees_the_item_for_others(db_url):
    env = make_env(db_url)
    pid = env.create_project(overlap=1)
    env.push(pid, pairs(2))
    task = _take(env, pid, "ann1")
    assert env.api("POST", f"/assignments/{task['assignment_id']}/skip", "ann1", json={"reason": ""}).status_code == 400
    assert env.api("POST", f"/assignments/{task['assignment_id']}/skip", "ann1", json={"reason": "not my field"}).status_code == 204
    other = _take(env, pid, "ann1")
    assert other["item_id"] != task["item_id"]
    assert _take(env, pid, "ann2")["item_id"] == task["item_id"]
    with session_scope(db_url) as session:
        skipped = session.get(Assignment, task["assignment_id"])
        assert skipped.state == "skipped" and skipped.skip_reason == "not my field"


def test_judgments_are_immutable_and_corrections_supersede(db_url):
    env = make_env(db_url)
    pid = env.create_project()
    env.push(pid, pairs(1))
    task = _take(env, pid, "ann1")
    first_id = _answer(env, task, "ann1", {"choice": "a", "strength": 2}).json()["judgment_id"]
    again = _answer(env, task, "ann1", {"choice": "b", "strength": 2})
    assert again.status_code == 409 and "answered already" in again.json()["error"]
    fixed = env.api("POST", f"/judgments/{first_id}/correct", "ann1", json={"value": {"choice": "tie"}})
    assert fixed.status_code == 201
    assert env.api("POST", f"/judgments/{first_id}/correct", "ann1", json={"value": {"choice": "tie"}}).status_code == 409
    assert env.api("POST", f"/judgments/{first_id}/correct", "ann2", json={"value": {"choice": "tie"}}).status_code == 403
    with session_scope(db_url) as session:
        old, new = session.scalars(select(Judgment).order_by(Judgment.id)).all()
        assert old.value == {"choice": "a", "strength": 2, "flags": []}  # unchanged
        assert new.supersedes_id == old.id and new.value["choice"] == "tie" and new.value["strength"] == 0


def test_guideline_and_schema_versions_recorded(db_url):
    env = make_env(db_url)
    pid = env.create_project(guidelines="v1 text")
    env.push(pid, pairs(2))
    assert env.api("PUT", f"/projects/{pid}/guidelines", "admin", json={"text": "v2 text"}).json() == {"version": 2}
    assert env.api("PUT", f"/projects/{pid}/schema", "admin", json={"kind": "pairwise", "strength": False}).json() == {"version": 2}
    changed_kind = env.api("PUT", f"/projects/{pid}/schema", "admin", json={"kind": "rating"})
    assert changed_kind.status_code == 400 and "cannot change" in changed_kind.json()["error"]
    task = _take(env, pid, "ann1")
    assert task["guideline_version"] == 2 and task["schema_version"] == 2
    assert _answer(env, task, "ann1", {"choice": "a"}).status_code == 201
    row = env.api("GET", f"/projects/{pid}/judgments", "admin").json()["judgments"][0]
    assert (row["guideline_version"], row["schema_version"], row["value"]["strength"]) == (2, 2, None)
    with session_scope(db_url) as session:
        actions = {e.action for e in session.scalars(select(AuditEvent)).all()}
    assert {"project.create", "items.add", "guideline.version", "schema.version", "judgment.create", "token.issue", "user.create"} <= actions


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"choice": "c"}, "choice must be one of"),
        ({"choice": "a"}, "how much better"),
        ({"choice": "a", "strength": 2, "flags": ["nonsense"]}, "unknown flag"),
        ({"choice": "a", "strength": 2, "rewrite": "x"}, "does not ask for a rewrite"),
        ({"choice": "a", "strength": 2, "extra": 1}, "unknown answer field"),
    ],
)
def test_invalid_answers_refused_with_a_clear_message(tmp_path, value, message):
    from tether.store.db import upgrade

    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    env = make_env(url)
    pid = env.create_project()
    env.push(pid, pairs(1))
    task = _take(env, pid, "ann1")
    response = _answer(env, task, "ann1", value)
    assert response.status_code == 400 and message in response.json()["error"]
    assert response.json()["fix"]


def test_oversize_input_refused_with_a_clear_message(db_url):
    env = make_env(db_url, max_body_bytes=4096, max_upload_bytes=64 * 1024, max_text_chars=1000, max_answer_chars=50)
    pid = env.create_project()
    too_long = env.api("POST", f"/projects/{pid}/items", "admin", json={"items": [{"prompt": "p", "chosen": "x" * 2000, "rejected": "y"}]})
    assert too_long.status_code == 400
    assert "2,000 characters; the limit is 1,000" in too_long.json()["error"] and "item 1" in too_long.json()["error"]
    huge = env.api("POST", f"/projects/{pid}/items", "admin", json={"items": pairs(1) * 1 + [{"prompt": "z" * 70_000, "completion": "c"}]})
    assert huge.status_code == 413 and "limit for uploads" in huge.json()["error"]
    env.push(pid, pairs(1))
    task = _take(env, pid, "ann1")
    big_body = _answer(env, task, "ann1", {"choice": "a", "strength": 1, "critique": "w" * 5000})
    assert big_body.status_code == 413 and "too large: the limit for this request is 4 KB" in big_body.json()["error"]
    long_critique = _answer(env, task, "ann1", {"choice": "a", "strength": 1, "critique": "w" * 60})
    assert long_critique.status_code == 400 and "limit is 50" in long_critique.json()["error"]
    with session_scope(db_url) as session:
        assert session.scalar(select(Judgment.id)) is None


def test_concurrent_annotators_never_exceed_overlap_nor_duplicate(db_url):
    """Eight annotators in threads race for twelve items at overlap 3 through the store functions."""
    env = make_env(db_url)
    pid = env.create_project(overlap=3)
    env.push(pid, pairs(12))
    with session_scope(db_url) as session:
        for i in range(5):
            from tether.store.accounts import create_user

            create_user(session, name=f"extra{i}", role="annotator", password="long-enough-pw", password_profile="cheapest")
    names = ["ann1", "ann2", "ann3"] + [f"extra{i}" for i in range(5)]
    errors = []

    def work(name: str) -> None:
        try:
            for _ in range(40):  # bounded
                with session_scope(db_url) as session:
                    user = session.scalar(select(User).where(User.name == name))
                    project = session.get(Project, pid)
                    assignment = campaigns.next_assignment(session, project=project, user=user)
                    if assignment is None:
                        return
                    campaigns.submit_judgment(session, assignment_id=assignment.id, user=user, value={"choice": "a", "strength": 1}, source="sim")
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with session_scope(db_url) as session:
        rows = session.execute(select(Judgment.item_id, Judgment.user_id)).all()
    assert len(rows) == 36 == len(set(rows))
    assert sorted(Counter(item for item, _ in rows).values()) == [3] * 12


def test_api_reference_page_renders_under_the_csp_and_the_schema_is_public(db_url):
    """/api/docs was FastAPI's Swagger page: its script comes from a CDN and runs inline, so under the CSP (and
    offline) it rendered blank. Now it is the schema rendered on the server, no script of its own. The schema
    needs no token: it describes the calls, never the data, and tools (schemathesis, client generators) read it."""
    import re

    env = make_env(db_url)
    client = env.client()
    schema = client.get("/api/openapi.json")
    assert schema.status_code == 200
    paths = [p for p in schema.json()["paths"] if p.startswith("/api/v1/")]
    assert len(paths) >= 15 and schema.json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "script-src 'self'" in docs.headers["content-security-policy"]
    scripts = re.findall(r"<script[^>]*>", docs.text)
    assert scripts and all(re.fullmatch(r'<script src="/static/[a-z.]+\.js" defer>', tag) for tag in scripts), scripts
    assert "http://" not in docs.text and "https://" not in docs.text  # nothing fetched from elsewhere
    for path in paths:
        assert f"<code>{path}</code>" in docs.text, path
    assert "integer 1..2147483647" in docs.text and "<code>JudgmentIn</code>" in docs.text
