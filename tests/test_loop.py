"""`tether loop`: seeded reward ensemble members, the pairs a round picks from the policy's own outputs, and a round's
snapshot that unions the earlier rounds (each judgment once, lineage kept)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from tether.demo.simulate import SimAnnotator, run_annotators
from tether.lifecycle import loop
from tether.lifecycle.overoptimization import ensure_project

CREW = [SimAnnotator("sim-a", accuracy=0.95), SimAnnotator("sim-b", accuracy=0.9), SimAnnotator("sim-c", accuracy=0.85)]


def _judge(url, project):
    run_annotators(url, project, CREW, seed=1)


def _truth(prompt, a, b):
    return {"sim_truth": "a" if len(a) >= len(b) else "b"}  # the hidden preference of this test: the longer reply


def _rows(round_number, n):
    return [{"prompt": f"question {round_number}-{i}", "completions": [{"text": "a long helpful reply", "model": "policy"}, {"text": "short", "model": "reference"}],
             "external_id": f"round-{round_number}-{i}", "meta": {"round": round_number}} for i in range(n)]


def test_a_rounds_snapshot_unions_the_earlier_rounds_each_judgment_once(workspace):
    from tether.store.db import session_scope
    from tether.store.tables import Item, Judgment, Snapshot, SnapshotJudgment

    url = workspace.database_url
    ensure_project(url, "fb", guidelines="Pick the better reply.", overlap=2, actor="test")
    first = loop.queue_round(url, "fb", _rows(1, 5), _truth)
    _judge(url, "fb")
    snap1, _ = loop.round_snapshot(workspace, "fb", 1)
    second = loop.queue_round(url, "fb", _rows(2, 4), _truth)
    _judge(url, "fb")
    snap2, _ = loop.round_snapshot(workspace, "fb", 2)
    assert len(first) == 5 and len(second) == 4 and not set(first) & set(second)
    assert (snap1["name"], snap2["name"]) == ("fb-round-1", "fb-round-2") and snap1["digest"] != snap2["digest"]
    rows1 = [json.loads(x) for x in (workspace.root / snap1["path"]).read_text().splitlines()]
    rows2 = [json.loads(x) for x in (workspace.root / snap2["path"]).read_text().splitlines()]
    assert len(rows1) == 5 and len(rows2) == 9
    assert all(r in rows2 for r in rows1)  # the earlier round's rows are all in the later snapshot
    with session_scope(url) as session:
        def used(name):
            snapshot_id = session.scalar(select(Snapshot.id).where(Snapshot.name == name))
            return list(session.scalars(select(SnapshotJudgment.judgment_id).where(SnapshotJudgment.snapshot_id == snapshot_id)))

        ids1, ids2 = used("fb-round-1"), used("fb-round-2")
        round_of = dict(session.execute(select(Judgment.id, Item.meta).join(Item, Item.id == Judgment.item_id)).all())
        total = session.scalar(select(func.count(Judgment.id)))
    assert len(ids2) == len(set(ids2)) == total == 18  # every judgment of both rounds, once (9 items x overlap 2)
    assert set(ids1) < set(ids2) and {round_of[i]["round"] for i in ids1} == {1} and {round_of[i]["round"] for i in ids2} == {1, 2}
    assert loop.judgments_in(url, "fb") == 18
    again, _ = loop.round_snapshot(workspace, "fb", 2)  # a second loop on the same project: the next free name
    assert again["name"] == "fb-round-2-2" and again["digest"] == snap2["digest"]


class _Ensemble:
    """Members that disagree about replies holding "odd": member k scores such a reply k, the others 0."""

    def members(self, prompts, completions):
        return torch.tensor([[float(k) if "odd" in c else 0.0 for k in range(3)] for c in completions])


def test_a_round_picks_pairs_of_the_policys_own_replies_where_the_members_disagree():
    cfg = loop.LoopConfig(pairs_per_round=2, strategy="disagreement").validate()
    prompts = ["p0", "p1", "p2"]
    policy = [["odd reply", "plain reply"], ["plain one", "plain two"], ["odd one", "odd one"]]
    reference = [["ref 0"], ["ref 1"], ["ref 2"]]
    rows = loop.propose_pairs(cfg, 3, prompts, policy, reference, _Ensemble())
    assert [r["prompt"] for r in rows] == ["p0", "p2"]  # the two prompts whose pairs split the members; p1's do not
    for row in rows:
        assert "policy" in row["meta"]["models"] and row["meta"]["round"] == 3 and row["meta"]["p_spread"] > 0
    assert rows[1]["completions"][0]["text"] == "odd one"  # a repeated reply is one candidate, not a pair with itself
    with pytest.raises(Exception, match="needs --members 2"):
        loop.LoopConfig(members=1).validate()


def test_seeded_members_differ_and_their_spread_grows_off_distribution(tiny_lm_dir, tmp_path, cli):
    from tether.recipes.configs import RewardConfig
    from tether.recipes.reward_specs import load_reward

    rng = random.Random(0)
    words = "hello how can i help you today order has shipped".split()
    rows = [{"prompt": "hello\n", "chosen": " ".join(rng.choices(words, k=4)) + " thank you", "rejected": " ".join(rng.choices(words, k=4)) + " sorry"} for _ in range(64)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = RewardConfig(model=str(tiny_lm_dir), data=str(data), output_dir=tmp_path / "x", epochs=3, batch_size=8, learning_rate=3e-3,
                        progress=False, mlflow=False, seed=5)
    folders = loop.train_members(base, 3, tmp_path / "ens")
    assert [f.name for f in folders] == ["member-0", "member-1", "member-2"]
    assert json.loads((tmp_path / "ens" / "ensemble.json").read_text())["seeds"] == [5, 5 + 1009, 5 + 2018]
    ensemble = load_reward([f"ensemble:{tmp_path / 'ens'}"], device="cpu")
    like = [r["chosen"] for r in rows[:24]] + [r["rejected"] for r in rows[:24]]
    vocab = ensemble.reward_models[0].tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)[10:]
    noise_rng = random.Random(1)
    tokenizer = ensemble.reward_models[0].tokenizer
    off = [tokenizer.convert_tokens_to_string(noise_rng.choices(tokens, k=12)) for _ in range(48)]
    on_members = ensemble.members(["hello\n"] * len(like), like).numpy()
    off_members = ensemble.members(["hello\n"] * len(off), off).numpy()
    assert not np.allclose(on_members[:, 0], on_members[:, 1]) and not np.allclose(on_members[:, 1], on_members[:, 2])  # members differ
    # each member learned the task: chosen above rejected
    assert (on_members[:24].mean(0) > on_members[24:].mean(0)).all()
    on_spread, off_spread = on_members.std(1).mean(), off_members.std(1).mean()
    assert off_spread > 1.5 * on_spread, (on_spread, off_spread)

    # `tether score` on the ensemble folder: each row's mean and spread over the members
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"prompt": "hello\n", "completion": t}) + "\n" for t in like[:3] + off[:3]))
    result = cli("score", "--model", tmp_path / "ens", "--data", tmp_path / "rows.jsonl", "-o", tmp_path / "scored.jsonl")
    assert result.code == 0, result.stderr
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    expected = np.concatenate([on_members[:3], off_members[:3]])
    np.testing.assert_allclose([r["reward"] for r in scored], expected.mean(1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([r["reward_std"] for r in scored], expected.std(1), rtol=1e-4, atol=1e-4)


def test_tether_loop_refuses_a_bad_option_before_any_work(cli, workspace, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello"}\n')
    result = cli("loop", "1", "--project", "fb", "--policy", tmp_path / "sft", "--prompts", prompts, "--strategy", "loudest", "--out", tmp_path / "loop")
    assert result.code == 2 and "--strategy 'loudest' is not one of" in result.stderr
    result = cli("loop", "1", "--project", "fb", "--policy", tmp_path / "sft", "--prompts", prompts, "--combine", "median", "--out", tmp_path / "loop")
    assert result.code == 2 and "unknown ensemble combination 'median'" in result.stderr
    result = cli("loop", "1", "--project", "fb", "--policy", tmp_path / "sft", "--prompts", prompts, "--pairing", "nearest", "--out", tmp_path / "loop")
    assert result.code == 2 and "--pairing 'nearest' is not one of" in result.stderr
    result = cli("loop", "1", "--project", "fb", "--policy", tmp_path / "sft", "--prompts", prompts, "--rl-from", "scratch", "--out", tmp_path / "loop")
    assert result.code == 2 and "--rl-from 'scratch' is not one of current, reference" in result.stderr
    assert not (tmp_path / "loop").exists()


class _Scores:
    """Three members that score a reply by the number after its "#" (member k adds k / 10), so the members agree
    on the order and P(a over b) = sigmoid(score_a - score_b) for each."""

    def members(self, prompts, completions):
        return torch.tensor([[float(c.split("#")[1]) + k / 10 for k in range(3)] for c in completions])


def test_the_pairings_pair_the_policys_replies_with_the_first_policys_strongest_reply():
    mine, theirs = ["mine #2", "mine #0", "mine #2"], ["ref #1", "ref #3", "mine #0", " "]
    everything = loop.candidate_pairs("all", mine, theirs)
    # every pair holding a policy reply: the two distinct replies of the policy with each other and with the two
    # references (the reference "mine #0" is the policy's own reply, the blank one no reply)
    assert len(everything) == 1 + 2 * 2 and all("policy" in (a[0], b[0]) for a, b in everything)
    against = loop.candidate_pairs("reference", mine, theirs)
    assert [(a[1], b[1]) for a, b in against] == [("mine #2", "ref #1"), ("mine #2", "ref #3"), ("mine #0", "ref #1"), ("mine #0", "ref #3")]
    assert all(a[0] == "policy" and b[0] == "reference" for a, b in against)
    # best-of-R of the first policy by the ensemble's mean, leaving out what the policy also wrote
    assert loop.best_reference(_Scores(), ["p0", "p1", "p2"], [theirs, ["ref #5", "ref #4"], ["mine #9"]], [mine, [], ["mine #9"]]) == [["ref #3"], ["ref #5"], []]


def test_best_reference_pairs_picked_where_the_ensemble_cannot_call_them():
    """p0's policy replies score 2 and 0 against its best reference (3): P(policy wins) = sigmoid(-1) = 0.27 and
    sigmoid(-3) = 0.05; p1's policy reply ties its best reference (4): P = 0.5, the pair the ensemble cannot call;
    p2 has no reference reply, so no pair under a reference pairing."""
    cfg = loop.LoopConfig(pairs_per_round=2, strategy="uncertainty", pairing="best-reference", reference_replies=2).validate()
    prompts = ["p0", "p1", "p2"]
    policy = [["mine #2", "mine #0"], ["mine #4"], ["mine #1"]]
    reference = [["ref #1", "ref #3"], ["ref #4", "ref #-2"], []]
    rows = loop.propose_pairs(cfg, 1, prompts, policy, reference, _Scores())
    assert [r["prompt"] for r in rows] == ["p1", "p0"]
    assert [[c["text"] for c in r["completions"]] for r in rows] == [["mine #4", "ref #4"], ["mine #2", "ref #3"]]
    assert rows[0]["meta"]["p_pref"] == pytest.approx(0.5) and rows[1]["meta"]["p_pref"] == pytest.approx(1 / (1 + np.exp(1)), abs=1e-6)
    assert all(r["meta"]["models"] == ["policy", "reference"] and r["meta"]["pairing"] == "best-reference" for r in rows)
    # the same pool under the default pairing: p0's pair nearest 0.5 is its stronger reply against the weaker
    # reference (sigmoid(1) = 0.73; against the stronger one sigmoid(-1) = 0.27 comes later in the stable order)
    default = loop.propose_pairs(loop.LoopConfig(pairs_per_round=3, strategy="uncertainty", reference_replies=2).validate(), 1, prompts, policy, reference, _Scores())
    assert [[c["text"] for c in r["completions"]] for r in default] == [["mine #4", "ref #4"], ["mine #2", "ref #1"]]
    with pytest.raises(Exception, match="--pairing 'nearest' is not one of"):
        loop.LoopConfig(pairing="nearest").validate()
    with pytest.raises(Exception, match="needs reference replies"):
        loop.LoopConfig(pairing="reference", reference_replies=0).validate()


def test_a_rounds_snapshot_keeps_peoples_ties_when_asked(workspace):
    url = workspace.database_url
    ensure_project(url, "fb", guidelines="Pick the better reply.", overlap=2, actor="test")
    rows = _rows(1, 4)
    loop.queue_round(url, "fb", rows, lambda prompt, a, b: {"sim_truth": "tie" if prompt.endswith(("-0", "-1")) else "a"})
    run_annotators(url, "fb", [SimAnnotator("sim-x", accuracy=1.0), SimAnnotator("sim-y", accuracy=1.0)], seed=1)
    dropped, _ = loop.round_snapshot(workspace, "fb", 1)
    kept, _ = loop.round_snapshot(workspace, "fb", 1, keep_ties=True)
    read = lambda snap: [json.loads(x) for x in (workspace.root / snap["path"]).read_text().splitlines()]  # noqa: E731
    assert len(read(dropped)) == 2 and not any(r.get("tie") for r in read(dropped))
    assert len(read(kept)) == 4 and sum(bool(r.get("tie")) for r in read(kept)) == 2


@pytest.mark.parametrize("rl_from", ["current", "reference"])
def test_a_rounds_rl_starts_from_the_policy_so_far_or_from_the_first_policy_again(monkeypatch, tmp_path, rl_from):
    started = []

    def fake_train(cfg, workspace=None):
        started.append((cfg.model, cfg.reference_model))
        cfg.output_dir.mkdir(parents=True)

    monkeypatch.setattr("tether.recipes.ppo.train_ppo", fake_train)
    monkeypatch.setattr(loop, "load_ensemble", lambda folder, combine="mean", say=None: None)
    cfg = loop.LoopConfig(members=2, rl_steps=30, audit_every=0, rl_from=rl_from).validate()
    state = loop.LoopState(project="fb", reference=str(tmp_path / "sft"), policy=str(tmp_path / "round-1-policy"), ensemble=str(tmp_path / "rm"))
    result = loop.rl_with_watch(None, cfg, state, round_number=2, prompts_file=tmp_path / "p.jsonl", audit_prompts=[], out_dir=tmp_path / "round-2",
                                judge=None, item_meta=None, say=lambda _m: None)
    first = state.policy if rl_from == "current" else state.reference
    assert started == [(first, state.reference)]  # one segment without audits; the KL anchor is the first policy either way
    assert result["policy"] == tmp_path / "round-2" / "rl-0"
    with pytest.raises(Exception, match="--rl-from 'scratch' is not one of current, reference"):
        loop.LoopConfig(rl_from="scratch").validate()


def test_a_round_audits_its_starting_policy_and_hands_on_the_checkpoint_people_judged_better(monkeypatch, tmp_path):
    """The first RL run has no audit: the round audits it before RL (step 0). Its RL then does worse with people
    (0.60 against 0.75) without tripping the stop rule (one audit after the start, the proxy flat): the round
    hands on the starting policy, not its own last checkpoint, and says so."""
    from tether.lifecycle.overoptimization import AuditPoint

    trained, audited, said = [], [], []

    def fake_train(cfg, workspace=None):
        trained.append(cfg.model)
        cfg.output_dir.mkdir(parents=True)

    humans = iter([0.75, 0.60])

    def fake_audit(url, project, policy_dir, reference_dir, prompts, ensemble, *, step, **_):
        audited.append((str(policy_dir), step))
        return AuditPoint(step, 2.0 + step / 20, next(humans), 0.8, str(policy_dir))

    monkeypatch.setattr("tether.recipes.ppo.train_ppo", fake_train)
    monkeypatch.setattr(loop, "load_ensemble", lambda folder, combine="mean", say=None: None)
    monkeypatch.setattr(loop, "audit_policy", fake_audit)
    cfg = loop.LoopConfig(members=2, rl_steps=20, audit_every=20).validate()
    first_rl = str(tmp_path / "policy-ppo")
    state = loop.LoopState(project="fb", reference=str(tmp_path / "sft"), policy=first_rl, ensemble=str(tmp_path / "rm"))
    result = loop.rl_with_watch(SimpleNamespace(database_url="sqlite://"), cfg, state, round_number=1, prompts_file=tmp_path / "p.jsonl",
                                audit_prompts=["a prompt"], out_dir=tmp_path / "round-1", judge=None, item_meta=None, say=said.append)
    assert audited == [(first_rl, 0), (str(tmp_path / "round-1" / "rl-0"), 20)] and trained == [first_rl]
    assert result["policy"] == tmp_path / "policy-ppo" and not result["stopped"] and result["reason"].startswith("people judged an earlier")
    assert any("people judged an earlier checkpoint better (75% at d = 2.00 against 60% now)" in line for line in said)
    assert [a["step"] for a in state.audits] == [0, 20]
    # the next round starts from it, already audited: no second audit of it
    humans = iter([0.70])
    audited.clear()
    loop.rl_with_watch(SimpleNamespace(database_url="sqlite://"), cfg, state, round_number=2, prompts_file=tmp_path / "p.jsonl",
                       audit_prompts=["a prompt"], out_dir=tmp_path / "round-2", judge=None, item_meta=None, say=said.append)
    assert audited == [(str(tmp_path / "round-2" / "rl-0"), 20)]


def test_a_round_that_keeps_an_earlier_policy_registers_only_its_reward_model(monkeypatch, tmp_path):
    """Registering the kept earlier policy again as this round's would give it this round's snapshot and reward
    model as lineage, which it was never trained on: the round registers its reward model and names the earlier
    policy's version."""
    calls = []

    def fake_register(ws, folder, *, name, kind, **fields):
        calls.append((kind, str(folder)))
        return {"version": f"{name}/{len(calls)}"}

    monkeypatch.setattr("tether.lifecycle.registry.register_model", fake_register)
    monkeypatch.setattr("tether.recipes.reward_specs.member_folders", lambda folder: [Path(folder) / "member-0"])
    snapshot = {"name": "fb-round-1", "digest": "d" * 64, "row_count": 10}
    state = loop.LoopState(project="fb", reference="sft", policy=str(tmp_path / "round-1" / "rl-1"), ensemble=str(tmp_path / "round-1" / "reward"))
    assert loop.register_round(None, state, 1, snapshot, {}) == {"reward_model": "loop-reward/1", "policy": "loop-policy/2"}
    assert state.policy_versions == {state.policy: "loop-policy/2"}
    state.ensemble = str(tmp_path / "round-2" / "reward")  # round 2 kept round 1's policy
    calls.clear()
    assert loop.register_round(None, state, 2, {**snapshot, "name": "fb-round-2"}, {}, new_policy=False) == {"reward_model": "loop-reward/1", "policy": "loop-policy/2"}
    assert calls == [("reward", str(tmp_path / "round-2" / "reward" / "member-0"))]
    state.policy = "policy-ppo"  # the first RL run, never registered by a round
    assert loop.register_round(None, state, 2, snapshot, {}, new_policy=False)["policy"] is None
