"""schemathesis against the app's own OpenAPI schema, on SQLite and PostgreSQL, as an admin, a reviewer and an
annotator: no 5xx, JSON answers that match the schema, and a refused request (4xx) leaves the store exactly as it
was (``store_state``).

Each operation gets ``FUZZ_EXAMPLES`` generated requests (valid ones and deliberately invalid ones: wrong types,
missing fields, out-of-range numbers, odd strings), per role and per database. The JSON API is checked against its
response schemas; the HTML pages (their forms and query strings, with a signed-in session and the CSRF header)
against "no server error" and the store invariant. ``TETHER_FUZZ_EXAMPLES`` raises the count for a longer run
(docs/benchmarks.md, Fuzzing).
"""

from __future__ import annotations

import os

import pytest
from apphelp import csrf_of, make_env, pairs, store_state

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("TETHER_FUZZ_EXAMPLES", "6"))
pytestmark = pytest.mark.slow  # about a minute for the 12 runs (2 databases x 3 roles x API and pages)
ROLES = {"admin": "admin", "reviewer": "rev", "annotator": "ann1"}
# Left out of the web fuzzing: signing out ends the session the rest of the run uses; signing in is the accounts
# tests' business (and throttled by design).
NOT_FUZZED = ("/logout", "/login")


def _seeded(url: str):
    """An app with a campaign of a few items, an answered and a pending assignment, and a gold item: the low ids
    the fuzzer tries then name real objects."""
    env = make_env(url)
    pid = env.create_project(name="fuzz", guidelines="# g [link](https://example.org)", label_schema={"kind": "pairwise", "rewrite": True}, overlap=2)
    env.push(pid, pairs(4) + [{"prompt": "gold", "chosen": "a", "rejected": "b", "gold": {"choice": "a", "strength": 1}}])
    for user in ("ann1", "ann2"):
        task = env.api("POST", f"/projects/{pid}/next", user).json()
        assert env.api("POST", f"/assignments/{task['assignment_id']}/judgment", user, json={"value": {"choice": "a", "strength": 2}}).status_code == 201
        env.api("POST", f"/projects/{pid}/next", user)  # and one pending
    return env


def _operations(schema, web: bool):
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith("/api/v1/") != web and operation.path not in NOT_FUZZED:
            yield operation


def _fuzz(env, operation, call, checks) -> int:
    """Run FUZZ_EXAMPLES generated requests of one operation; returns how many ran."""
    strategy = st.one_of(operation.as_strategy(generation_mode=GenerationMode.POSITIVE), operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    ran = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        before = store_state(env.url)
        response = call(case)
        case.validate_response(response, checks=checks)
        if 400 <= response.status_code < 500:
            assert store_state(env.url) == before, f"{case.method} {case.formatted_path} answered {response.status_code} and changed the store"
        ran.append(response.status_code)

    run()
    return len(ran)


@pytest.mark.parametrize("role", list(ROLES))
def test_json_api_under_fuzzing(db_url, role):
    env = _seeded(db_url)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", env.app)
    headers = {"Authorization": f"Bearer {env.tokens[ROLES[role]]}"}
    total = 0
    operations = list(_operations(schema, web=False))
    assert len(operations) >= 18
    for operation in operations:
        total += _fuzz(env, operation, lambda case: case.call(headers=headers),
                       [not_a_server_error, response_schema_conformance, content_type_conformance])
    assert total >= len(operations)


@pytest.mark.parametrize("role", list(ROLES))
def test_web_pages_under_fuzzing(db_url, role):
    env = _seeded(db_url)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", env.app)
    browser = env.login(ROLES[role])
    cookies = dict(browser.cookies)
    headers = {"x-csrf-token": csrf_of(browser.get("/annotate").text)}
    operations = list(_operations(schema, web=True))
    assert len(operations) >= 18
    for operation in operations:
        _fuzz(env, operation, lambda case: case.call(headers=headers, cookies=cookies, allow_redirects=False), [not_a_server_error])
