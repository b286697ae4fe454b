"""Active learning: the selection math with hand numbers, and `tether collect select` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tether import qc
from tether.errors import TetherError


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_preference_stats_by_hand():
    """Two members, two pairs. Pair 0: rewards a - b = 1 and 3 -> p = sigmoid(1) = 0.731059, sigmoid(3) = 0.952574;
    mean 0.841817, std (population) |0.952574 - 0.731059| / 2 = 0.110758. Pair 1: equal rewards -> 0.5, spread 0."""
    rewards_a = np.array([[1.0, 2.0], [3.0, -1.0]])  # (M=2, N=2)
    rewards_b = np.array([[0.0, 2.0], [0.0, -1.0]])
    p_mean, p_spread = qc.preference_stats(rewards_a, rewards_b)
    assert p_mean == pytest.approx([(_sigmoid(1) + _sigmoid(3)) / 2, 0.5])
    assert p_spread == pytest.approx([(_sigmoid(3) - _sigmoid(1)) / 2, 0.0])
    single_mean, single_spread = qc.preference_stats(np.array([2.0]), np.array([0.0]))  # one model: (N,)
    assert single_mean == pytest.approx([_sigmoid(2)]) and single_spread == pytest.approx([0.0])


def test_uncertainty_picks_nearest_half_with_a_per_prompt_cap():
    """|p - 0.5| = 0.4, 0.02, 0.05, 0.1, 0: order 4, 1, 2, 3, 0. Candidates 0-2 share prompt g1: with a cap of
    one per prompt, 2 is skipped after 1, so the picks are 4, 1, 3."""
    p_mean = [0.9, 0.52, 0.45, 0.6, 0.5]
    groups = ["g1", "g1", "g1", "g2", "g3"]
    assert qc.select_candidates("uncertainty", 3, p_mean=p_mean, groups=groups, max_per_group=1) == [4, 1, 3]
    assert qc.select_candidates("uncertainty", 3, p_mean=p_mean, groups=groups, max_per_group=None) == [4, 1, 2]
    assert qc.select_candidates("uncertainty", 3, p_mean=p_mean, groups=groups, max_per_group=2) == [4, 1, 2]
    # Fewer candidates pass the guard than asked for: all that pass, no more.
    assert qc.select_candidates("uncertainty", 10, p_mean=p_mean, groups=groups, max_per_group=1) == [4, 1, 3]


def test_certainty_picks_farthest_from_half_with_the_same_guard():
    """|p - 0.5| = 0.4, 0.02, 0.05, 0.1, 0: largest first is 0, 3, 2, 1, 4. Candidates 0-2 share prompt g1:
    with a cap of one per prompt, 2 and 1 are skipped after 0, so the picks are 0, 3, 4."""
    p_mean = [0.9, 0.52, 0.45, 0.6, 0.5]
    groups = ["g1", "g1", "g1", "g2", "g3"]
    assert qc.select_candidates("certainty", 3, p_mean=p_mean, groups=groups, max_per_group=1) == [0, 3, 4]
    assert qc.select_candidates("certainty", 3, p_mean=p_mean, groups=groups, max_per_group=None) == [0, 3, 2]
    # A pair predicted at 0.1 is as certain as one at 0.9: ties keep the candidates' order.
    assert qc.select_candidates("certainty", 2, p_mean=[0.1, 0.5, 0.9]) == [0, 2]
    with pytest.raises(ValueError, match="needs p_mean"):
        qc.select_candidates("certainty", 2, p_spread=[0.1, 0.2])


def test_auto_picks_by_measured_agreement():
    """Below AUTO_AGREEMENT = 0.70 (noisy annotators) certainty; at or above it, or not measured, disagreement,
    or random when the reward model has a single head."""
    assert qc.AUTO_AGREEMENT == 0.70
    assert qc.auto_strategy(0.63, ensemble=5) == "certainty"
    assert qc.auto_strategy(0.63, ensemble=1) == "certainty"
    assert qc.auto_strategy(0.70, ensemble=5) == "disagreement"
    assert qc.auto_strategy(0.91, ensemble=1) == "random"
    assert qc.auto_strategy(None, ensemble=4) == "disagreement"


@pytest.mark.parametrize(("accuracy", "expected"), [(1.0, 1.0), (0.5, None)])
def test_project_agreement_through_the_store(tmp_path, accuracy, expected):
    """Two simulated annotators judge 30 items each through the store. Always right: they always agree (1.0).
    Coin flips: they agree about half the time, below 0.70, so auto picks certainty."""
    from sqlalchemy import select

    from tether.demo import simulate
    from tether.store.db import session_scope, upgrade
    from tether.store.tables import Project

    url = f"sqlite:///{tmp_path / 'tether.db'}"
    upgrade(url)
    crew = [simulate.SimAnnotator(f"sim-{i}", accuracy=accuracy) for i in range(2)]
    simulate.simulate(url, name="sim", n_items=30, overlap=2, gold_rate=0.0, annotators=crew, seed=1)
    with session_scope(url) as session:
        project = session.scalars(select(Project).where(Project.name == "sim")).one()
        agreement = qc.project_agreement(session=session, project=project)
    if expected is not None:
        assert agreement == pytest.approx(expected)
    else:
        assert 0.25 < agreement < qc.AUTO_AGREEMENT and qc.auto_strategy(agreement, ensemble=2) == "certainty"


def test_disagreement_picks_the_largest_spread():
    assert qc.select_candidates("disagreement", 3, p_spread=[0.1, 0.3, 0.2, 0.0]) == [1, 2, 0]
    assert qc.select_candidates("disagreement", 2, p_spread=[0.1, 0.3, 0.2, 0.0], groups=["x", "y", "y", "z"]) == [1, 0]


def test_random_is_seeded_and_respects_the_cap():
    groups = [i // 3 for i in range(30)]  # 10 prompts, 3 candidates each
    first = qc.select_candidates("random", 10, groups=groups, max_per_group=1, seed=7)
    assert first == qc.select_candidates("random", 10, groups=groups, max_per_group=1, seed=7)
    assert sorted(groups[i] for i in first) == list(range(10))
    assert first != qc.select_candidates("random", 10, groups=groups, max_per_group=1, seed=8)


def test_embedding_dedupe_skips_near_duplicates():
    """Cosine distance of (1, 0) and (0.99, 0.1) is 1 - 0.99 / 0.995038 = 0.005063 < 0.05: the second is skipped."""
    embeddings = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    picks = qc.select_candidates("uncertainty", 3, p_mean=[0.5, 0.51, 0.6], embeddings=embeddings, min_distance=0.05)
    assert picks == [0, 2]
    assert qc.select_candidates("uncertainty", 3, p_mean=[0.5, 0.51, 0.6], embeddings=embeddings, min_distance=0.001) == [0, 1, 2]


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(TetherError, match="unknown selection strategy"):
        qc.select_candidates("entropy", 3, p_mean=[0.5])


# ---------------------------------------------------------------------------------------------------------------
# `tether collect select` with a tiny reward ensemble


WORDS = "hello how can i help you today thank order has shipped reset password account".split()


@pytest.fixture(scope="module")
def ensemble_dir(tiny_lm_dir, tmp_path_factory):
    """A tiny Llama reward model with 2 heads, trained for a few steps (enough to make the heads differ)."""
    from tether.recipes.configs import RewardConfig
    from tether.recipes.reward import train_reward

    root = tmp_path_factory.mktemp("al")
    rows = [{"prompt": f"{WORDS[i % 14]} {WORDS[(i * 3) % 14]}\n", "chosen": f"thank {WORDS[i % 14]}", "rejected": f"sorry {WORDS[i % 14]}"} for i in range(32)]
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "rm"
    train_reward(RewardConfig(model=str(tiny_lm_dir), data=str(data), output_dir=out, batch_size=8, max_steps=3, ensemble=2,
                              learning_rate=3e-3, progress=False, mlflow=False))
    return out


@pytest.fixture
def al_project(workspace):
    from tether.store import campaigns
    from tether.store.db import session_scope

    with session_scope(workspace.database_url) as session:
        project = campaigns.create_project(session, name="al", schema={"kind": "pairwise", "strength": False}, overlap=1)
        campaigns.add_items(session, project=project, rows=[{"prompt": "p0 hello\n", "completions": ["c0 thank you", "c1 sorry"]}])
    candidates = workspace.root / "candidates.jsonl"
    lines = [{"prompt": f"p{i} {WORDS[i]}\n", "completions": [f"c{j} {WORDS[(i + j) % 14]} {WORDS[j]}" for j in range(3)]} for i in range(4)]
    lines[0] = {"prompt": "p0 hello\n", "completions": ["c0 thank you", "c1 sorry", "c2 help"]}  # (c0, c1) is an item already
    candidates.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return workspace, candidates, lines


def test_collect_select_queues_the_most_disputed_pairs(al_project, ensemble_dir, cli):
    from itertools import combinations

    from sqlalchemy import select

    from tether.models.reward_model import RewardModel
    from tether.store.db import session_scope
    from tether.store.tables import Completion, Item, Prompt

    workspace, candidates, lines = al_project
    result = cli("collect", "select", "--project", "al", "--reward-model", ensemble_dir, "--strategy", "disagreement",
                 "--n", "3", "--candidates", candidates, "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["candidates"] == 4 * 3 - 1 and summary["queued"] == 3 and summary["ensemble"] == 2

    # Independently: each candidate pair's ensemble spread of sigmoid(r_a - r_b), from the members' scores.
    rm = RewardModel.load(ensemble_dir, device="cpu")
    spread, p_mean = {}, {}
    for line in lines:
        for a, b in combinations(line["completions"], 2):
            if (a, b) == ("c0 thank you", "c1 sorry"):
                continue
            ra, rb = rm.score_members([line["prompt"]] * 2, [a, b])
            p = 1 / (1 + np.exp(-(ra - rb)))
            spread[(line["prompt"], a, b)] = float(p.std())
            p_mean[(line["prompt"], a, b)] = float(p.mean())
    best_per_prompt = {}
    for (prompt, a, b), s in spread.items():
        if s > best_per_prompt.get(prompt, (None, -1))[1]:
            best_per_prompt[prompt] = ((a, b), s)
    expected = sorted(best_per_prompt.items(), key=lambda kv: -kv[1][1])[:3]
    with session_scope(workspace.database_url) as session:
        items = session.scalars(select(Item).order_by(Item.id)).all()[1:]  # the first is the uploaded item
        got = [(session.get(Prompt, it.prompt_id).text, tuple(session.get(Completion, c.completion_id).text for c in it.completions)) for it in items]
        metas = [it.meta for it in items]
    assert got == [(prompt, pair) for prompt, (pair, _) in expected]
    assert all(m["selected_by"] == "disagreement" and m["p_spread"] > 0 for m in metas)

    # By certainty (a dry run): of the pairs left, per prompt the one whose predicted preference is farthest from
    # 0.5, those prompts in that order.
    left = {key: p for key, p in p_mean.items() if (key[0], (key[1], key[2])) not in got}
    surest: dict[str, float] = {}
    for (prompt, _, _), p in left.items():
        surest[prompt] = max(surest.get(prompt, 0.0), abs(p - 0.5))
    sure = json.loads(cli("collect", "select", "--project", "al", "--reward-model", ensemble_dir, "--strategy", "certainty",
                          "--n", "100", "--candidates", candidates, "--dry-run", "--json").stdout)
    assert sure["queued"] == 0 and sure["selected"] == 4
    assert [abs(pick["p_pref"] - 0.5) for pick in sure["picks"]] == pytest.approx(sorted(surest.values(), reverse=True), abs=1e-5)

    # auto on a project with no overlapping judgments: agreement not measured, so disagreement (a dry run).
    auto = json.loads(cli("collect", "select", "--project", "al", "--reward-model", ensemble_dir, "--n", "2",
                          "--candidates", candidates, "--dry-run", "--json").stdout)
    assert (auto["requested"], auto["strategy"], auto["agreement"], auto["selected"]) == ("auto", "disagreement", None, 2)

    # Again, by uncertainty: the three queued pairs are no longer candidates; one pick per prompt at most.
    again = json.loads(cli("collect", "select", "--project", "al", "--reward-model", ensemble_dir, "--strategy", "uncertainty",
                           "--n", "100", "--candidates", candidates, "--json").stdout)
    assert again["candidates"] == 11 - 3 and again["queued"] == 4
    random_pick = json.loads(cli("collect", "select", "--project", "al", "--strategy", "random", "--n", "2", "--candidates", candidates,
                                 "--dry-run", "--json").stdout)
    assert random_pick["selected"] == 2 and random_pick["queued"] == 0 and random_pick["picks"][0]["p_pref"] is None


def test_collect_select_errors(al_project, cli):
    _, candidates, _ = al_project
    result = cli("collect", "select", "--project", "al", "--strategy", "uncertainty", "--n", "3", "--candidates", candidates)
    assert result.code == 2 and "needs --reward-model" in result.stderr
    result = cli("collect", "select", "--project", "nope", "--strategy", "random", "--n", "3")
    assert result.code == 2 and "no project named 'nope'" in result.stderr
    result = cli("collect", "select", "--project", "al", "--strategy", "random", "--n", "3")
    assert result.code == 2 and "--candidates" in result.stderr  # the project alone has no unqueued pair
