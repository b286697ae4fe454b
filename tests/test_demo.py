"""The built-in demo task and `tether demo`: the gold preference encodes the guidelines; the whole loop improves
the policy on the hidden gold preference (slow); the report works offline; lineage reaches the snapshot."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tether.demo.task import STYLES, DemoTask


def test_gold_orders_the_styles_as_the_guidelines_say():
    task = DemoTask(0)
    rng = random.Random(1)
    requests = task.requests(160)
    mean = {style: sum(task.gold_score(r.prompt, task.reply(r, style, rng)) for r in requests) / len(requests) for style in STYLES}
    assert mean["good"] > mean["verbose"] > mean["unhelpful"]
    assert mean["good"] > mean["pii_leak"] and mean["good"] > mean["rude"] and mean["good"] > mean["policy_break"]
    assert max(mean["rude"], mean["policy_break"], mean["pii_leak"]) < 0 < mean["verbose"]


def test_gold_score_by_hand():
    task = DemoTask(0)
    prompt = "Customer: I forgot my password and cannot log in. - Ana Weber\nAgent:"
    # helpful (+2: "reset link"), polite (+0.5: "happy to help"), 17 known words: 2.5
    assert task.gold_score(prompt, "Happy to help, Ana. Use the forgot password link and we will send a reset link.") == 2.5
    # rude (-2.5) and nothing else: 8 known words
    assert task.gold_score(prompt, "Not my problem. Read the FAQ like everyone.") == -2.5
    # polite (+0.5) but breaks a policy (-3): -2.5
    assert task.gold_score(prompt, "Thanks for writing. Send me your password and I will log in.") == -2.5


def test_rules_flag_exactly_the_leaks_and_policy_breaks():
    import yaml

    from tether.checks.rules import parse_rules
    from tether.demo.task import RULES_YAML
    from tether.lifecycle.evaluate_policy import violations

    rules = parse_rules(yaml.safe_load(RULES_YAML))
    task = DemoTask(3)
    rng = random.Random(0)
    requests = task.requests(80)
    for style in STYLES:
        flagged, _ = violations(rules, [task.reply(r, style, rng) for r in requests])
        assert all(flagged) if style in ("pii_leak", "policy_break") else not any(flagged), style


def test_task_is_deterministic_and_varied():
    a, b = DemoTask(5), DemoTask(5)
    assert a.sft_rows(50) == b.sft_rows(50)
    assert a.sft_rows(50) != DemoTask(6).sft_rows(50)
    requests = a.requests(2000, "big")  # more than some categories have templates for: must not hang
    assert len({r.prompt for r in requests}) == 2000
    assert {r.category for r in requests} == {"order_status", "refund", "password", "shipping", "account", "complaint", "subscription", "billing"}
    rng = random.Random(0)
    for r in requests[:64]:
        for style in STYLES:
            assert a.style_of(a.reply(r, style, rng)) == style
            assert a.style_of(a.reply(r, style, rng), r.prompt) == style
    password = next(r for r in requests if r.category == "password")
    shipping = next(r for r in requests if r.category == "shipping")
    # a good shipping answer to a password request is polite and concrete but off topic; the gold gives it less
    off = a.reply(shipping, "good", rng)
    assert a.style_of(off, password.prompt) == "off_topic"
    assert a.gold_score(password.prompt, off) < a.gold_score(password.prompt, a.reply(password, "good", rng))


def test_demo_rejects_an_unknown_algorithm(cli, tmp_path):
    result = cli("demo", "--workspace", tmp_path / "ws", "--algo", "dqn")
    assert result.code == 2 and "--algo 'dqn'" in result.stderr


@pytest.mark.slow
def test_demo_fast_improves_the_policy_on_the_hidden_gold(cli, tmp_path, monkeypatch):
    from tether.lifecycle.registry import lineage
    from tether.lifecycle.reports.html import external_references
    from tether.store.workspace import load_workspace

    result = cli("demo", "--fast", "--workspace", tmp_path / "demo", "--json")
    assert result.code == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    # The fast scale is smaller than the default run (which reaches >= 70%); it must still clearly improve.
    assert out["gold_win_rate"] >= 0.6, out
    assert out["gold_win_rate_ci"][0] > 0.5
    assert out["violation_rate_policy"] < out["violation_rate_sft"]
    assert "ann-spammer" in out["qc"]["flagged"]
    page = Path(out["report"]).read_text(encoding="utf-8")
    assert external_references(page) == []
    assert "gold win-rate" in page and "Annotators and quality control" in page
    info = lineage(load_workspace(Path(out["workspace"])), out["registry"]["policy"])
    assert info["snapshot_digest"] == out["snapshot"]["digest"]
    # the judgments the snapshot used, recorded with it: the spammer's were left out
    assert info["judgments"]["recorded"] and info["judgments"]["count"] == info["judgments"]["used"] > 0
    assert "ann-spammer" in info["judgments"]["excluded"] and "ann-spammer" not in info["judgments"]["annotators"]

    # The demo's own workspace, after one annotator asks to be forgotten: its judgments are stamped by the simulated
    # clock after the snapshot was made, yet the snapshot is marked (by lineage); both models are flagged, the
    # champion cannot be promoted again, and the name leaves the report, the run records and the registry.
    monkeypatch.setenv("TETHER_HOME", out["workspace"])
    monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)
    result = cli("data", "purge", "--annotator", "ann-expert", "--yes")
    assert result.code == 0, result.stderr
    assert f"marked 1 snapshot(s) as purged: {out['snapshot']['name']}" in result.stdout
    assert "regenerated 1 report(s)" in result.stdout
    lineage_text = cli("registry", "lineage", out["registry"]["policy"]).stdout
    assert lineage_text.startswith(f"PURGED DATA: {out['registry']['policy']} rests (through {out['registry']['reward_model']})")
    refused = cli("registry", "promote", out["registry"]["policy"], "--to", "champion")
    assert refused.code == 2 and "built from purged data" in refused.stderr
    run_dir = Path(out["workspace"]) / "artifacts" / "demo" / out["project"]
    for path in (Path(out["report"]), run_dir / "evaluation.json", run_dir / "summary.jsonl"):
        assert "ann-expert" not in path.read_text(encoding="utf-8"), path
    assert "Annotators and quality control" in Path(out["report"]).read_text(encoding="utf-8")
    assert "ann-expert" not in cli("registry", "show", out["registry"]["reward_model"]).stdout
    from tests.test_governance import everything

    for db in ("tether.db", "mlflow.db"):  # the store (audit log, QC figures) and the registry's own database
        assert "ann-expert" not in everything(f"sqlite:///{Path(out['workspace']) / db}"), db



def first_digest(out):
    """The round-0 snapshot's digest, from the store (the demo's own first snapshot)."""
    from sqlalchemy import select

    from tether.store.db import session_scope
    from tether.store.tables import Snapshot

    with session_scope(f"sqlite:///{Path(out['workspace']) / 'tether.db'}") as session:
        return session.scalars(select(Snapshot.digest).order_by(Snapshot.id)).first()


TINY_LOOP = dict(sft_requests=120, sft_epochs=2, annotate_requests=48, rl_prompts=64, rl_steps=4, rl_batch_size=8, eval_prompts=24,
                 redteam_per_set=0, round_pairs=10, round_rl_steps=4, audit_every=2, audit_prompts=6, round_eval_prompts=16)


@pytest.mark.slow
def test_demo_rounds_run_the_loop_through_the_store_and_keep_lineage(tmp_path):
    """A tiny demo with one on-policy round (sizes far below the real run: the mechanics, not the figures)."""
    from tether.demo.run import run_demo
    from tether.lifecycle.registry import lineage
    from tether.store.workspace import load_workspace

    out = run_demo(tmp_path / "demo", fast=True, seed=1, progress=False, rounds=1, overrides=TINY_LOOP)
    assert [r["round"] for r in out["rounds"]] == [0, 1]
    last = out["rounds"][-1]
    assert last["pairs_queued"] > 0 and last["judgments_round"] > 0 and out["judgments_total"] == last["judgments_total"]
    assert len(last["watch"]["audits"]) >= 1 and {"d", "human", "proxy"} <= set(last["watch"]["audits"][0])
    assert out["snapshot"]["name"].endswith("-round-1") and out["snapshot"]["digest"] == last["snapshot_digest"]
    for key in ("off_topic_rate_sft", "off_topic_rate_policy", "judgments_total"):
        assert key in out
    info = lineage(load_workspace(Path(out["workspace"])), out["registry"]["policy"])
    # the final policy traces back to the union snapshot (through its reward ensemble) and to round 0's (through the
    # policy it continued from)
    digests = {step["digest"] for step in info["chain"] if step["type"] == "snapshot"}
    assert {out["snapshot"]["digest"], out["rounds"][0].get("snapshot_digest") or first_digest(out)} <= digests
    page = Path(out["report"]).read_text(encoding="utf-8")
    assert "On-policy rounds" in page and "over-optimization curve" in page
    rounds_log = [json.loads(line) for line in (Path(out["workspace"]) / "artifacts" / "demo" / out["project"] / "loop" / "rounds.jsonl").read_text().splitlines()]
    assert rounds_log[0]["parent_policy"] == out["rounds"][0]["policy"] and rounds_log[0]["registry"]["policy"] == out["registry"]["policy"]


def test_the_demo_registers_the_first_rl_policy_when_the_rounds_kept_it(monkeypatch, tmp_path):
    """The rounds kept the first RL run's policy (people judged theirs worse), which no round registered: the demo
    registers it (no made-up parent: its reward is read from its own tether.json by lineage) and approves it; with a
    round's version it registers nothing new."""
    import tether.demo.register as register
    import tether.lifecycle.registry as registry

    calls, evals = [], []
    monkeypatch.setattr(registry, "register_model", lambda ws, folder, *, name, kind, **fields: calls.append((kind, str(folder), fields.get("parent"))) or {"version": f"{name}/9"})
    monkeypatch.setattr(registry, "record_eval", lambda ws, version, figures: evals.append(version))
    monkeypatch.setattr(register, "_approve", lambda ws, rm, policy: ({"reward_model": rm["version"], "policy": policy["version"]}, []))
    snapshot = {"row_count": 10, "aggregate": "dawid-skene", "name": "s", "digest": "d" * 64}
    result = {"win_rate": 0.8, "gold_win_rate": 0.8, "violation_rate_policy": 0.01, "length_policy": 30.0}
    args = (None, tmp_path / "rm", tmp_path / "policy-ppo", tmp_path / "sft", snapshot, {}, result, "ppo", {"annotators": []})
    out, _ = register.stage_register(*args, {"reward_model": "support-reward/2", "policy": None})
    assert out == {"reward_model": "support-reward/2", "policy": "support-policy/9"}
    assert calls == [("policy", str(tmp_path / "policy-ppo"), None)] and evals == ["support-reward/2"]
    calls.clear()
    evals.clear()
    out, _ = register.stage_register(*args, {"reward_model": "support-reward/2", "policy": "support-policy/2"})
    assert out["policy"] == "support-policy/2" and calls == [] and evals == ["support-reward/2", "support-policy/2"]
