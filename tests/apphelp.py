"""Helpers shared by the web app tests: an app on a given database with users and tokens, and sample items."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tether.app.main import create_app
from tether.app.settings import AppSettings
from tether.store import accounts
from tether.store.db import session_scope

PASSWORD = "correct-horse-battery"
USERS = (("admin", "admin"), ("rev", "reviewer"), ("ann1", "annotator"), ("ann2", "annotator"), ("ann3", "annotator"))


def pairs(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    """``n`` TRL-style preference rows with distinct prompts."""
    return [{"prompt": f"{prefix}{i}: what is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}"} for i in range(n)]


@dataclass
class AppEnv:
    url: str
    settings: AppSettings
    app: Any
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self) -> TestClient:
        return TestClient(self.app)

    def api(self, method: str, path: str, user: str | None, **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {})
        if user is not None:
            headers["Authorization"] = f"Bearer {self.tokens[user]}"
        return self._api_client.request(method, "/api/v1" + path, headers=headers, **kwargs)

    @property
    def _api_client(self) -> TestClient:
        if not hasattr(self, "_client"):
            self._client = TestClient(self.app)
        return self._client

    def login(self, name: str) -> TestClient:
        """A browser-like client signed in as ``name`` (cookies kept)."""
        client = TestClient(self.app)
        token = csrf_of(client.get("/login").text)
        response = client.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": token}, follow_redirects=False)
        assert response.status_code == 303, response.text
        return client

    def create_project(self, **body: Any) -> int:
        body.setdefault("name", "p")
        response = self.api("POST", "/projects", "admin", json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def push(self, project_id: int, items: list[dict[str, Any]]) -> dict[str, int]:
        response = self.api("POST", f"/projects/{project_id}/items", "admin", json={"items": items})
        assert response.status_code == 201, response.text
        return response.json()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def make_env(url: str, **settings: Any) -> AppEnv:
    app_settings = AppSettings(database_url=url, password_profile="cheapest", **settings)
    env = AppEnv(url=url, settings=app_settings, app=create_app(app_settings))
    with session_scope(url) as session:
        for name, role in USERS:
            user = accounts.create_user(session, name=name, role=role, password=PASSWORD, password_profile="cheapest")
            env.tokens[name] = accounts.issue_token(session, user=user)
    return env


def store_state(url: str) -> dict[str, Any]:
    """What the store holds, for "a refused request changed nothing": the row count of every data table, and
    the full rows of the tables that hold people's work (timestamps included).

    Left out: the audit log and login bookkeeping (a refused login may be recorded), and token use times."""
    from sqlalchemy import func, select

    from tether.store.tables import (
        ApiToken,
        Assignment,
        Completion,
        Guideline,
        Item,
        ItemCompletion,
        Judgment,
        LabelSchema,
        Project,
        Prompt,
        Snapshot,
        User,
    )

    counted = (ApiToken, User, Snapshot)
    kept = (Project, Guideline, LabelSchema, Prompt, Completion, Item, ItemCompletion, Assignment, Judgment)
    state: dict[str, Any] = {}
    with session_scope(url, readonly=True) as session:
        for table in counted + kept:
            state[f"{table.__tablename__} rows"] = session.scalar(select(func.count()).select_from(table))
        for table in kept:
            columns = table.__table__.c
            state[table.__tablename__] = [tuple(row) for row in session.execute(select(*columns).order_by(*table.__table__.primary_key.columns)).all()]
    return state


@contextmanager
def served(log_path: Path, env: dict[str, str], workers: int = 1) -> Iterator[str]:
    """`tether serve` on a free loopback port with ``env`` (the workspace, the database); yields its base URL once
    it answers, and stops it afterwards. A server that does not come up fails the test with its log."""
    import httpx
    import pytest

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "tether", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                             "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # bounded by the deadline
            try:
                if httpx.get(base + "/login", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("tether serve did not start:\n" + log_path.read_text())
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def open_task(client: TestClient, project_id: int) -> str:
    """The task page after taking the next item, as a browser does: the Start button POSTs (a GET assigns
    nothing) and the redirect shows the task."""
    token = csrf_of(client.get(f"/annotate/{project_id}").text)
    response = client.post(f"/annotate/{project_id}/next", data={"csrf_token": token})
    assert response.status_code == 200, response.text
    return response.text
