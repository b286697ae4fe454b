"""A small Python client for the web app's JSON API: what a labeling pipeline uses.

    from tether.client import Client

    with Client("http://127.0.0.1:8000", token="tth_...") as client:
        project = client.create_project("helpfulness-v2", guidelines="# ...", label_schema={"kind": "pairwise"}, overlap=3)
        client.push_items(project["id"], [{"prompt": "Hi", "completions": ["Hello!", "Hey."]}])
        for judgment in client.judgments(project["id"]):
            ...

Tokens come from ``tether user token NAME`` (or the admin's users page). Every refusal raises ``TetherError`` with
the server's message and fix, and ``status`` set to the HTTP status.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from tether.checks.inputs import FIX, find_unstorable
from tether.errors import TetherError


class ApiError(TetherError):
    """The server refused a call; ``status`` is the HTTP status (400, 401, 403, 404, 409, 413, 422)."""

    def __init__(self, message: str, fix: str | None, status: int):
        super().__init__(message, fix=fix)
        self.status = status


class Client:
    """The JSON API (``/api/v1``) as methods. Answers and gold values speak in item positions (tether.feedback.judgments)."""

    def __init__(self, base_url: str, token: str, timeout: float = 60.0, transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        # What the server would refuse (NUL, lone surrogates, NaN), refused here with the same one-line reason.
        problem = find_unstorable(kwargs.get("json"), "the request body") or find_unstorable(kwargs.get("params"), "the query")
        if problem is not None:
            raise TetherError(f"{method} {path}: {problem}", fix=FIX)
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise TetherError(f"cannot reach the Tether server at {self._http.base_url}: {exc}", fix="check the URL and that `tether serve` runs") from None
        if response.status_code >= 400:
            try:
                body = response.json()
                message, fix = body.get("error") or str(body), body.get("fix")
            except ValueError:
                message, fix = response.text.strip() or response.reason_phrase, None
            raise ApiError(f"{method} {path}: {message}", fix, response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # --- who am I, projects ---------------------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/me")

    def projects(self) -> list[dict[str, Any]]:
        return self._call("GET", "/projects")

    def project(self, project_id: int) -> dict[str, Any]:
        return self._call("GET", f"/projects/{project_id}")

    def create_project(
        self,
        name: str,
        *,
        guidelines: str = "",
        label_schema: dict[str, Any] | None = None,
        overlap: int = 1,
        gold_rate: float = 0.0,
        assignment_ttl_s: int = 3600,
        description: str = "",
    ) -> dict[str, Any]:
        """A new campaign (admin). ``label_schema`` e.g. ``{"kind": "rating", "aspects": ["helpfulness"], "scale": [1, 5]}``."""
        body = {
            "name": name, "guidelines": guidelines, "label_schema": label_schema or {"kind": "pairwise"}, "overlap": overlap,
            "gold_rate": gold_rate, "assignment_ttl_s": assignment_ttl_s, "description": description,
        }
        return self._call("POST", "/projects", json=body)

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        """Change ``overlap``, ``gold_rate``, ``assignment_ttl_s`` or ``description`` (admin)."""
        return self._call("PATCH", f"/projects/{project_id}", json=fields)

    def set_guidelines(self, project_id: int, text: str) -> int:
        """A new guidelines version (admin); returns its number."""
        return self._call("PUT", f"/projects/{project_id}/guidelines", json={"text": text})["version"]

    def set_schema(self, project_id: int, label_schema: dict[str, Any]) -> int:
        """A new label schema version (admin); the kind cannot change. Returns its number."""
        return self._call("PUT", f"/projects/{project_id}/schema", json=label_schema)["version"]

    # --- data in and out ------------------------------------------------------------------------------------------

    def push_items(self, project_id: int, items: list[dict[str, Any]], batch_size: int = 2000) -> dict[str, int]:
        """Add prompts and completions as items (admin), in batches; returns the summed counts.

        Each item: ``{"prompt", "completions": [...]}``, ``{"prompt", "completion"}``, or a TRL/HH preference row;
        optional ``external_id``, ``gold`` (answer in item positions) and ``meta``.
        """
        totals: dict[str, int] = {}
        for start in range(0, len(items), batch_size):
            counts = self._call("POST", f"/projects/{project_id}/items", json={"items": items[start : start + batch_size]})
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def judgments(self, project_id: int, *, after_id: int = 0, include_text: bool = False, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every judgment after ``after_id``, oldest first, fetched page by page (reviewer or admin)."""
        while True:
            page = self._call("GET", f"/projects/{project_id}/judgments",
                              params={"after_id": after_id, "limit": page_size, "include_text": str(include_text).lower()})
            yield from page["judgments"]
            if len(page["judgments"]) < page_size:
                return
            after_id = page["next_after_id"]

    def progress(self, project_id: int) -> dict[str, Any]:
        return self._call("GET", f"/projects/{project_id}/progress")

    def item_judgments(self, item_id: int) -> dict[str, Any]:
        return self._call("GET", f"/items/{item_id}/judgments")

    def set_gold(self, item_id: int, value: dict[str, Any] | None) -> dict[str, Any]:
        """Make an item gold with its answer, or ordinary again with ``None`` (reviewer or admin)."""
        return self._call("POST", f"/items/{item_id}/gold", json={"value": value})

    # --- annotating through the API -------------------------------------------------------------------------------

    def next_item(self, project_id: int) -> dict[str, Any] | None:
        """The caller's next task (completions in the order to show, each with its item ``position``), or None."""
        return self._call("POST", f"/projects/{project_id}/next")

    def submit(self, assignment_id: int, value: dict[str, Any], *, time_spent_ms: int | None = None, next_item: bool = False) -> dict[str, Any]:
        """Answer a task (value in item positions); with ``next_item=True`` the reply carries the next task too."""
        body = {"value": value, "time_spent_ms": time_spent_ms}
        return self._call("POST", f"/assignments/{assignment_id}/judgment", params={"next": str(next_item).lower()}, json=body)

    def skip(self, assignment_id: int, reason: str) -> None:
        self._call("POST", f"/assignments/{assignment_id}/skip", json={"reason": reason})

    def correct(self, judgment_id: int, value: dict[str, Any]) -> int:
        """A correction of one's own judgment: a new judgment superseding it. Returns the new id."""
        return self._call("POST", f"/judgments/{judgment_id}/correct", json={"value": value})["judgment_id"]
