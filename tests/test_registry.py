"""The model registry: gates and approvals guard promotion; lineage walks back to the snapshot and its judgments."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tether.errors import TetherError


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """One workspace (its MLflow store takes seconds to create) with an admin, an annotator and a snapshot made
    from 5 judgments by 2 annotators."""
    from tether.store.db import session_scope
    from tether.store.tables import (
        Completion,
        Item,
        ItemCompletion,
        Judgment,
        Project,
        Prompt,
        Snapshot,
        User,
    )
    from tether.workspace import init_workspace

    ws = init_workspace(tmp_path_factory.mktemp("reg") / "ws")
    with session_scope(ws.database_url) as s:
        s.add_all([User(name="alice", role="admin"), User(name="bob", role="annotator"), User(name="carol", role="annotator")])
        project = Project(name="support")
        s.add(project)
        s.flush()
        users = {u.name: u for u in s.query(User).all()}
        for i in range(3):
            prompt = Prompt(project_id=project.id, text=f"q{i}", content_hash=f"h{i}")
            s.add(prompt)
            s.flush()
            a = Completion(prompt_id=prompt.id, text="a", content_hash=f"a{i}")
            b = Completion(prompt_id=prompt.id, text="b", content_hash=f"b{i}")
            s.add_all([a, b])
            s.flush()
            item = Item(project_id=project.id, prompt_id=prompt.id, kind="pairwise")
            s.add(item)
            s.flush()
            s.add_all([ItemCompletion(item_id=item.id, position=0, completion_id=a.id), ItemCompletion(item_id=item.id, position=1, completion_id=b.id)])
            s.add(Judgment(item_id=item.id, user_id=users["bob"].id, kind="pairwise", value={"choice": "a"}, source="sim"))
            if i < 2:
                s.add(Judgment(item_id=item.id, user_id=users["carol"].id, kind="pairwise", value={"choice": "b"}, source="sim"))
        s.flush()
        s.add(
            Snapshot(
                name="prefs-v1",
                project_id=project.id,
                aggregate="majority",
                path="artifacts/snapshots/prefs-v1.jsonl",
                digest="d" * 64,
                row_count=3,
                filters={"exclude_annotators": ["carol"]},
                qc={"flagged": {"carol": ["unreliable"]}, "excluded_annotators": ["carol"]},
                created_at=datetime.now(timezone.utc) + timedelta(seconds=5),
            )
        )
    return ws


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tether.json").write_text(json.dumps({"kind": "policy", "base_model": "sft", "config": {"learning_rate": 1e-4}}))
    return folder


def _register_pair(ws, model_dir, prefix, figures):
    from tether.registry import register_model

    rm = register_model(ws, model_dir, name=f"{prefix}-reward", kind="reward", snapshot_name="prefs-v1", snapshot_digest="d" * 64, metrics={"accuracy": 0.9})
    policy = register_model(ws, model_dir, name=f"{prefix}-policy", kind="policy", parent=rm["version"], base_model="sft", metrics=figures)
    return rm, policy


PASSING = {"win_rate": 0.8, "violation_rate": 0.01, "kl": 2.0}


def test_register_sets_candidate_tags_and_card(ws, model_dir):
    rm, policy = _register_pair(ws, model_dir, "reg", PASSING)
    assert rm["version"] == "reg-reward/1" and policy["version"] == "reg-policy/1"
    assert policy["aliases"] == ["candidate"]
    assert policy["tags"]["tether.parent"] == "reg-reward/1"
    assert rm["tags"]["tether.snapshot_digest"] == "d" * 64
    assert policy["figures"] == PASSING
    assert "## Limits" in policy["card"] and "| win_rate | 0.8 |" in policy["card"]
    # the version's files were copied into the workspace's artifact store
    from tether.registry import local_path

    path = local_path(ws, "reg-policy/1")
    assert (path / "config.json").exists() and str(ws.root) in str(path)


def test_promotion_refused_without_approval(ws, model_dir):
    from tether.registry import promote

    _, policy = _register_pair(ws, model_dir, "noappr", PASSING)
    with pytest.raises(TetherError, match="no approval by an admin"):
        promote(ws, policy["version"])


def test_promotion_refused_when_a_gate_fails(ws, model_dir):
    from tether.registry import approve, promote

    _, policy = _register_pair(ws, model_dir, "gatefail", {"win_rate": 0.5, "violation_rate": 0.01, "kl": 2.0})
    approve(ws, policy["version"], admin="alice")
    with pytest.raises(TetherError) as info:
        promote(ws, policy["version"])
    assert "min_win_rate: win_rate = 0.5, needs >= 0.55" in info.value.message
    assert "approval" not in info.value.message


def test_missing_figure_fails_its_gate(ws, model_dir):
    from tether.registry import approve, promote

    _, policy = _register_pair(ws, model_dir, "nofig", {"win_rate": 0.9, "violation_rate": 0.0})
    approve(ws, policy["version"], admin="alice")
    with pytest.raises(TetherError, match="no evaluation figure 'kl'"):
        promote(ws, policy["version"])


def test_only_an_admin_approves(ws, model_dir):
    from tether.registry import approve

    _, policy = _register_pair(ws, model_dir, "nonadmin", PASSING)
    with pytest.raises(TetherError, match="not an active admin"):
        approve(ws, policy["version"], admin="bob")
    with pytest.raises(TetherError, match="no user named"):
        approve(ws, policy["version"], admin="mallory")


def test_promotion_with_gates_and_approval_is_recorded(ws, model_dir):
    from sqlalchemy import select

    from tether.registry import approve, promote, show
    from tether.store.db import session_scope
    from tether.store.tables import AuditEvent

    _, policy = _register_pair(ws, model_dir, "ok", PASSING)
    approve(ws, policy["version"], admin="alice", note="report reviewed")
    info = promote(ws, policy["version"])
    assert "champion" in info["aliases"]
    assert info["tags"]["tether.approved_by"] == "alice" and "tether.promoted_by" in info["tags"]
    assert show(ws, "ok-policy@champion")["version"] == "ok-policy/1"
    with session_scope(ws.database_url) as s:
        actions = [e.action for e in s.scalars(select(AuditEvent).where(AuditEvent.object_id == "ok-policy/1")).all()]
    assert actions == ["registry.register", "registry.approve", "registry.promote"]


def test_lineage_resolves_to_snapshot_digest_and_judgments(ws, model_dir):
    from tether.registry import lineage

    _register_pair(ws, model_dir, "lin", PASSING)
    info = lineage(ws, "lin-policy")
    assert [s["type"] for s in info["chain"]] == ["model_version", "model_version", "snapshot", "judgments"]
    assert [s.get("version") for s in info["chain"][:2]] == ["lin-policy/1", "lin-reward/1"]
    assert info["snapshot_digest"] == "d" * 64
    assert info["chain"][2]["name"] == "prefs-v1" and info["chain"][2]["rows"] == 3
    assert info["judgments"]["count"] == 5
    assert info["judgments"]["annotators"] == {"bob": 3, "carol": 2}
    assert info["judgments"]["flagged"] == ["carol"] and info["judgments"]["excluded"] == ["carol"]


def test_gate_checks_by_hand():
    from tether.registry import check_gates

    gates = {"min_win_rate": 0.55, "max_violation_rate": 0.05, "max_kl": 10}
    results = {g.key: g.passed for g in check_gates(gates, {"win_rate": 0.55, "violation_rate": 0.06, "kl": 10.0})}
    assert results == {"min_win_rate": True, "max_violation_rate": False, "max_kl": True}
    with pytest.raises(TetherError, match="not a gate name"):
        check_gates({"win_rate": 0.5}, {})


def test_parse_ref():
    from tether.registry import parse_ref

    assert parse_ref("support-policy/2") == ("support-policy", "2", None)
    assert parse_ref("models:/support-policy/2") == ("support-policy", "2", None)
    assert parse_ref("support-policy@champion") == ("support-policy", None, "champion")
    assert parse_ref("support-policy") == ("support-policy", None, None)
    with pytest.raises(TetherError):
        parse_ref("no spaces/allowed")


def test_cli_refusal_is_a_clear_message(ws, model_dir, cli, monkeypatch):
    monkeypatch.setenv("TETHER_HOME", str(ws.root))
    monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)
    _register_pair(ws, model_dir, "cli", {"win_rate": 0.2})
    result = cli("registry", "promote", "cli-policy/1")
    assert result.code == 2
    assert "cannot promote cli-policy/1 to champion" in result.stderr and "Traceback" not in result.stderr
    result = cli("registry", "lineage", "cli-policy/1", "--json")
    assert result.code == 0 and json.loads(result.stdout)["snapshot_digest"] == "d" * 64
    result = cli("registry", "list")
    assert result.code == 0 and "cli-policy/1" in result.stdout


def test_admin_with_password_must_give_it(ws, model_dir):
    from argon2 import PasswordHasher, profiles

    from tether.registry import approve
    from tether.store.db import session_scope
    from tether.store.tables import User

    with session_scope(ws.database_url) as s:
        s.add(User(name="dana", role="admin", password_hash=PasswordHasher.from_parameters(profiles.CHEAPEST).hash("s3cret-pass")))
    _, policy = _register_pair(ws, model_dir, "pw", PASSING)
    with pytest.raises(TetherError, match="needs their password"):
        approve(ws, policy["version"], admin="dana")
    with pytest.raises(TetherError, match="wrong password"):
        approve(ws, policy["version"], admin="dana", password="nope")
    assert approve(ws, policy["version"], admin="dana", password="s3cret-pass")["approved_by"] == "dana"
