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
    from tether.store.workspace import init_workspace

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


def _folder(path, kind):
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "tether.json").write_text(json.dumps({"kind": kind, "base_model": "sft", "config": {"learning_rate": 1e-4}}))
    return path


@pytest.fixture
def model_dir(tmp_path):
    """A policy folder whose tether.json records no data or parents (lineage as the flags state it)."""
    _folder(tmp_path / "reward", "reward")
    return _folder(tmp_path / "model", "policy")


def _register_pair(ws, model_dir, prefix, figures):
    from tether.lifecycle.registry import register_model

    rm = register_model(ws, model_dir.parent / "reward", name=f"{prefix}-reward", kind="reward", snapshot_name="prefs-v1", snapshot_digest="d" * 64, metrics={"accuracy": 0.9})
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
    # the training config is kept under the tag names registries already hold (the card's config comes from it)
    assert json.loads(policy["tags"]["tether.config"]) == {"learning_rate": 1e-4} and "learning_rate" in policy["card"]
    # the version's files were copied into the workspace's artifact store
    from tether.lifecycle.registry import local_path

    path = local_path(ws, "reg-policy/1")
    assert (path / "config.json").exists() and str(ws.root) in str(path)


def test_promotion_refused_without_approval(ws, model_dir):
    from tether.lifecycle.registry import promote

    _, policy = _register_pair(ws, model_dir, "noappr", PASSING)
    with pytest.raises(TetherError, match="no approval by an admin"):
        promote(ws, policy["version"])


def test_promotion_refused_when_a_gate_fails(ws, model_dir):
    from tether.lifecycle.registry import approve, promote

    _, policy = _register_pair(ws, model_dir, "gatefail", {"win_rate": 0.5, "violation_rate": 0.01, "kl": 2.0})
    approve(ws, policy["version"], admin="alice")
    with pytest.raises(TetherError) as info:
        promote(ws, policy["version"])
    assert "min_win_rate: win_rate = 0.5, needs >= 0.55" in info.value.message
    assert "approval" not in info.value.message


def test_missing_figure_fails_its_gate(ws, model_dir):
    from tether.lifecycle.registry import approve, promote

    _, policy = _register_pair(ws, model_dir, "nofig", {"win_rate": 0.9, "violation_rate": 0.0})
    approve(ws, policy["version"], admin="alice")
    with pytest.raises(TetherError, match="no evaluation figure 'kl'"):
        promote(ws, policy["version"])


def test_only_an_admin_approves(ws, model_dir):
    from tether.lifecycle.registry import approve

    _, policy = _register_pair(ws, model_dir, "nonadmin", PASSING)
    with pytest.raises(TetherError, match="not an active admin"):
        approve(ws, policy["version"], admin="bob")
    with pytest.raises(TetherError, match="no user named"):
        approve(ws, policy["version"], admin="mallory")


def test_promotion_with_gates_and_approval_is_recorded(ws, model_dir):
    from sqlalchemy import select

    from tether.lifecycle.registry import approve, promote, show
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
    from tether.lifecycle.registry import lineage

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
    from tether.lifecycle.registry import check_gates

    gates = {"min_win_rate": 0.55, "max_violation_rate": 0.05, "max_kl": 10}
    results = {g.key: g.passed for g in check_gates(gates, {"win_rate": 0.55, "violation_rate": 0.06, "kl": 10.0})}
    assert results == {"min_win_rate": True, "max_violation_rate": False, "max_kl": True}
    with pytest.raises(TetherError, match="not a gate name"):
        check_gates({"win_rate": 0.5}, {})


def test_parse_ref():
    from tether.lifecycle.registry import parse_ref

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

    from tether.lifecycle.registry import approve
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


def _trained(path, kind, *, snapshot=None, inputs=()):
    """A folder with the tether.json a trainer writes: its kind, its data and the models it came from."""
    from tether.recipes.lineage import fingerprint

    path.mkdir()
    (path / "config.json").write_text("{}")
    lineage = {"snapshot": {"name": snapshot, "digest": "d" * 64} if snapshot else None,
               "inputs": [{"role": role, "path": str(p), "fingerprint": fingerprint(p), "kind": json.loads((p / "tether.json").read_text())["kind"],
                           "snapshot": None, "inputs": []} for role, p in inputs]}
    config = {"data": f"snapshot:{snapshot}"} if snapshot else {}
    (path / "tether.json").write_text(json.dumps({"kind": kind, "data_digest": "d" * 64 if snapshot else None, "lineage": lineage,
                                                  "config": config, "base_model": "tiny"}))
    return path


def test_lineage_comes_from_the_models_metadata(ws, tmp_path, cli, monkeypatch):
    """`--snapshot` or `--kind` or `--parent` that contradict the folder's tether.json are refused; one name holds
    one kind; without flags the snapshot and the parent come from the metadata."""
    from tether.store.db import session_scope
    from tether.store.tables import Project, Snapshot

    monkeypatch.setenv("TETHER_HOME", str(ws.root))
    monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)
    with session_scope(ws.database_url) as s:
        project = s.query(Project).filter_by(name="support").one()
        s.add(Snapshot(name="other-v1", project_id=project.id, aggregate="majority", path="x.jsonl", digest="e" * 64, row_count=1))
    rm = _trained(tmp_path / "rm", "reward", snapshot="prefs-v1")
    other_rm = _trained(tmp_path / "other-rm", "reward", snapshot="other-v1")
    policy = _trained(tmp_path / "policy", "policy", inputs=[("reward", rm)])

    def refused(*args, needles):
        result = cli("registry", "register", *map(str, args))
        assert result.code == 2, (result.stdout, result.stderr)
        for needle in needles:
            assert needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr

    refused(rm, "--name", "meta-reward", "--snapshot", "other-v1", needles=["trained on snapshot 'prefs-v1'", "contradicts"])
    refused(rm, "--name", "meta-reward", "--kind", "policy", needles=["is a reward model", "--kind policy contradicts it"])
    result = cli("registry", "register", rm, "--name", "meta-reward", "--json")
    assert result.code == 0, result.stderr
    tags = json.loads(result.stdout)["tags"]
    assert (tags["tether.kind"], tags["tether.snapshot"], tags["tether.snapshot_digest"]) == ("reward", "prefs-v1", "d" * 64)
    assert cli("registry", "register", other_rm, "--name", "meta-other-reward").code == 0
    refused(policy, "--name", "meta-reward", needles=["meta-reward holds reward models", "one registered name holds one kind"])
    refused(policy, "--name", "meta-policy", "--parent", "meta-other-reward/1", needles=["not trained from or against meta-other-reward/1", str(rm)])
    result = cli("registry", "register", policy, "--name", "meta-policy")
    assert result.code == 0 and "parent meta-reward/1" in result.stdout, result.stdout
    steps = json.loads(cli("registry", "lineage", "meta-policy", "--json").stdout)["chain"]
    assert [(s["type"], s.get("version") or s.get("name")) for s in steps][:3] == [
        ("model_version", "meta-policy/1"), ("model_version", "meta-reward/1"), ("snapshot", "prefs-v1")]
    # a folder without tether.json states its lineage with the flags
    bare = tmp_path / "bare"
    bare.mkdir()
    refused(bare, "--name", "meta-bare", needles=["no tether.json", "--kind"])
    assert cli("registry", "register", bare, "--name", "meta-bare", "--kind", "reward", "--snapshot", "other-v1").code == 0


PANDALM = "pandalm/testset-v1.json"


def _train(cli, *args):
    result = cli("train", *map(str, args), "--max-steps", "1", "--max-length", "48", "--set", "progress=false", "--set", "mlflow=false")
    assert result.code == 0, result.stderr[-3000:]


def _set_up_source(source, url, cli, shared_data):
    """A feedback set with 3 votes per item: PandaLM as imported, or a campaign with a reviewer's decision and a
    gold item. Returns (set name, the annotator to purge, how many of their judgments, expected counts)."""
    if source == "pandalm":
        assert cli("data", "import", shared_data / PANDALM, "--name", "pandalm").code == 0
        return "pandalm", "pandalm/annotator2", 999, {"ties_kept": 105, "judgments": 2997, "labels_from_gold": 0, "labels_from_adjudication": 0}
    from sqlalchemy import select

    from tether.demo.simulate import SimAnnotator, simulate
    from tether.store import campaigns
    from tether.store.db import session_scope
    from tether.store.tables import Item, User

    simulate(url, name="camp", n_items=12, overlap=3, gold_rate=0.0, seed=5, annotators=[SimAnnotator(f"ann-{n}", accuracy=0.8) for n in (1, 2, 3)])
    with session_scope(url) as session:
        reviewer = User(name="rev", role="reviewer")
        session.add(reviewer)
        session.flush()
        first, second = session.scalars(select(Item.id).order_by(Item.id).limit(2)).all()
        campaigns.adjudicate(session, item_id=first, reviewer=reviewer, value={"choice": "tie", "strength": 0})
        campaigns.mark_gold(session, item_id=second, value={"choice": "b", "strength": 3})
    return "camp", "ann-2", 12, {"ties_kept": 1, "judgments": 37, "labels_from_gold": 1, "labels_from_adjudication": 1}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["pandalm", "campaign"])
def test_from_a_purged_annotator_to_a_refused_promotion(cli, workspace, shared_data, tiny_lm_dir, tmp_path, source):
    """The walk of issue 15 (findings 1, 3, 7, 8): a snapshot that keeps ties (and, in a campaign, takes a reviewer's
    decision and a gold answer as labels); a reward model on it, a GRPO policy against the reward model and a DPO
    policy straight on the snapshot, each recording its lineage in its tether.json; registered without lineage
    flags. The snapshot, the metadata and `registry lineage` agree; after the purge of one annotator every model
    that rests on the snapshot is flagged and can be neither approved nor promoted."""
    from tether.lifecycle.registry import record_eval
    from tether.store.db import session_scope
    from tether.store.tables import User

    set_name, purged, theirs, expected = _set_up_source(source, workspace.database_url, cli, shared_data)
    snap = json.loads(cli("data", "snapshot", set_name, "--keep-ties", "--json").stdout)
    assert {k: snap["counts"][k] for k in expected} == expected
    assert snap["counts"]["ties_dropped"] == 0
    name, digest = snap["name"], snap["digest"]
    assert cli("data", "snapshot", set_name, "--snapshot-name", "no-ties").code == 0

    rm, dpo, policy = tmp_path / "rm", tmp_path / "dpo", tmp_path / "policy"
    _train(cli, "reward", "--model", tiny_lm_dir, "--data", f"snapshot:{name}", "--output-dir", rm, "--batch-size", "4")
    _train(cli, "dpo", "--model", tiny_lm_dir, "--data", f"snapshot:{name}", "--output-dir", dpo, "--batch-size", "2")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(4)))
    _train(cli, "grpo", "--model", tiny_lm_dir, "--prompts", prompts, "--reward", rm, "--output-dir", policy,
           "--group-size", "2", "--batch-size", "4", "--max-new-tokens", "4")
    # the models' own metadata: the snapshot (name and digest) and, for the policy, its reward model
    rm_meta, dpo_meta, policy_meta = (json.loads((d / "tether.json").read_text()) for d in (rm, dpo, policy))
    assert rm_meta["lineage"]["snapshot"] == dpo_meta["lineage"]["snapshot"] == {"name": name, "digest": digest}
    assert dpo_meta["ties_skipped"] == snap["counts"]["ties_kept"]  # the ties the snapshot kept, never read as preferences
    assert dpo_meta["data_digest"] == digest
    [reward_input] = [i for i in policy_meta["lineage"]["inputs"] if i["role"] == "reward"]
    assert reward_input["path"] == str(rm.resolve()) and reward_input["snapshot"] == {"name": name, "digest": digest}

    # registered without lineage flags; contradicting flags are refused
    assert cli("registry", "register", rm, "--name", "walk-reward", "--kind", "policy").code == 2
    assert cli("registry", "register", rm, "--name", "walk-reward", "--snapshot", "no-ties").code == 2
    assert cli("registry", "register", rm, "--name", "walk-reward").code == 0
    assert cli("registry", "register", policy, "--name", "walk-reward").code == 2  # one name, one kind
    assert cli("registry", "register", policy, "--name", "walk-policy").code == 0
    assert cli("registry", "register", dpo, "--name", "walk-dpo").code == 0
    info = json.loads(cli("registry", "lineage", "walk-policy", "--json").stdout)
    assert [(s["type"], s.get("version") or s.get("name")) for s in info["chain"]] == [
        ("model_version", "walk-policy/1"), ("model_version", "walk-reward/1"), ("snapshot", name), ("judgments", None)]
    assert info["snapshot_digest"] == digest and info["chain"][2]["rows"] == snap["row_count"]
    assert info["judgments"]["used"] == info["judgments"]["count"] == expected["judgments"] and not info["purged"]

    with session_scope(workspace.database_url) as session:
        session.add(User(name="boss", role="admin"))
    record_eval(workspace, "walk-dpo/1", {"win_rate": 0.9, "violation_rate": 0.0, "kl": 1.0})
    assert cli("registry", "approve", "walk-dpo/1", "--admin", "boss").code == 0  # before the purge

    result = cli("data", "purge", "--annotator", purged, "--reason", "erasure request 7", "--yes")
    assert result.code == 0, result.stderr
    assert f"marked 2 snapshot(s) as purged: {name}, no-ties" in result.stdout
    assert "flagged 3 registered model(s) trained on them, directly or through a parent" in result.stdout
    assert "walk-dpo/1, walk-policy/1, walk-reward/1" in result.stdout

    text_out = cli("registry", "lineage", "walk-policy").stdout
    assert f"PURGED DATA: walk-policy/1 rests (through walk-reward/1) on snapshot {name}" in text_out
    assert "erasure request 7" in text_out and text_out.count("[trained on purged data]") == 2
    remaining = expected["judgments"] - theirs
    assert f"{expected['judgments']} judgments used, in project {set_name}; {theirs} purged since" in text_out
    assert f"{remaining} remain, by" in text_out and purged not in text_out
    info = json.loads(cli("registry", "lineage", "walk-policy", "--json").stdout)
    assert info["purged"] and info["purges"][0]["snapshot"] == name and info["purges"][0]["via"] == ["walk-reward/1"]
    assert info["judgments"]["purged"] == theirs and info["judgments"]["count"] == remaining

    versions = json.loads(cli("registry", "list", "--json").stdout)["versions"]
    assert {v["version"]: v["purged_data"] for v in versions} == {"walk-dpo/1": True, "walk-policy/1": True, "walk-reward/1": True}
    rows = [line for line in cli("registry", "list").stdout.splitlines() if line.startswith(" walk-")]
    assert len(rows) == 3 and all("PURGED" in line for line in rows)
    refused = cli("registry", "approve", "walk-policy/1", "--admin", "boss")
    assert refused.code == 2 and "cannot approve walk-policy/1" in refused.stderr and "purged data" in refused.stderr
    assert "erasure request 7" in refused.stderr and "retrain on a new snapshot" in refused.stderr
    refused = cli("registry", "promote", "walk-dpo/1", "--to", "champion")
    assert refused.code == 2 and f"walk-dpo/1 was trained on snapshot {name}, built from purged data" in refused.stderr
    assert "Traceback" not in refused.stderr
    listing = cli("data", "list").stdout
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert f"{theirs:,} judgments" in [line for line in listing.splitlines() if f" {set_name} " in line][0]
    assert today in [line for line in listing.splitlines() if f" {name} " in line][0].split("│")[-2]
    shown = cli("data", "show", name)
    assert shown.code == 0 and "PURGED" in shown.stdout and "erasure request 7" in shown.stdout
    snapshots = {s["name"]: s for s in json.loads(cli("data", "list", "--json").stdout)["snapshots"]}
    assert snapshots[name]["purged_at"] is not None
