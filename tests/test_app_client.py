"""`tether.client` against the app (SQLite and PostgreSQL): push, annotate, pull in pages, correct, refusals."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from apphelp import make_env, pairs

from tether.client import ApiError, Client


@pytest.fixture
def served(db_url):
    """The app under uvicorn in a thread on a free loopback port."""
    env = make_env(db_url)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(env.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    env.base = f"http://127.0.0.1:{port}"
    yield env
    server.should_exit = True
    thread.join(timeout=10)


def test_client_round_trip(served):
    env = served
    admin, ann = Client(env.base, token=env.tokens["admin"]), Client(env.base, token=env.tokens["ann1"])
    project = admin.create_project("client-p", guidelines="# g", label_schema={"kind": "pairwise", "strength": False}, overlap=1)
    assert project["label_schema"]["strength"] is False
    counts = admin.push_items(project["id"], pairs(5), batch_size=2)  # three batches
    assert counts["items"] == 5 and counts["completions"] == 10
    assert [p["name"] for p in ann.projects()] == ["client-p"]

    task = ann.next_item(project["id"])
    answered = 0
    while task is not None:
        reply = ann.submit(task["assignment_id"], {"choice": "a"}, time_spent_ms=10, next_item=True)
        answered += 1
        task = reply["next"]
    assert answered == 5 and ann.next_item(project["id"]) is None

    rows = list(admin.judgments(project["id"], page_size=2))
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows) and len(rows) == 5
    assert {r["user"] for r in rows} == {"ann1"} and all(r["value"]["choice"] == "a" for r in rows)
    assert admin.progress(project["id"])["fraction_done"] == 1.0

    new_id = ann.correct(rows[0]["id"], {"choice": "tie"})
    (correction,) = admin.judgments(project["id"], after_id=rows[-1]["id"])
    assert correction["id"] == new_id and correction["supersedes_id"] == rows[0]["id"] and correction["value"]["choice"] == "tie"
    gold = admin.set_gold(rows[1]["item_id"], {"choice": "b"})
    assert gold["is_gold"] and gold["gold_value"]["choice"] == "b"
    assert admin.set_guidelines(project["id"], "# g2") == 2

    with pytest.raises(ApiError) as refused:
        list(ann.judgments(project["id"]))
    assert refused.value.status == 403 and "reviewers and admins" in refused.value.message
    with pytest.raises(ApiError) as twice:
        ann.submit(1, {"choice": "a"})  # ann1's first assignment, answered already
    assert twice.value.status == 409
    with pytest.raises(ApiError) as bad_token:
        Client(env.base, token="tth_nope").me()
    assert bad_token.value.status == 401 and bad_token.value.fix
