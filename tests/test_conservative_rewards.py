"""Conservative rewards over an ensemble's members (Coste et al. 2023): mean, uncertainty-weighted, worst case; the
SPEC that names them; best-of-n sampling as a baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tether.errors import TetherError
from tether.recipes.reward_specs import Reward, combine_members, parse_spec

# Three completions, two members: rows (1, 3), (0, 0), (-1, 2).
MEMBERS = torch.tensor([[1.0, 3.0], [0.0, 0.0], [-1.0, 2.0]])


def test_mean_uncertainty_weighted_and_worst_case_by_hand():
    """Here's the maths: means 2, 0, 0.5; population stds 1, 0, 1.5; so with lambda 0.5 the uncertainty-weighted
    rewards are 2 - 0.5, 0 - 0, 0.5 - 0.75; the minima are 1, 0, -1."""
    assert combine_members(MEMBERS, "mean").tolist() == [2.0, 0.0, 0.5]
    assert combine_members(MEMBERS, "uwo", 0.5).tolist() == [1.5, 0.0, -0.25]
    assert combine_members(MEMBERS, "min").tolist() == [1.0, 0.0, -1.0]
    assert combine_members(MEMBERS, "uwo", 0.0).tolist() == combine_members(MEMBERS, "mean").tolist()
    with pytest.raises(ValueError, match="valid: mean, uwo, min"):
        combine_members(MEMBERS, "median")


def test_the_ensemble_spec_parses_folders_combination_and_weight():
    spec = parse_spec("ensemble:rm-a,rm-b:uwo=0.5@2")
    assert (spec.kind, spec.members, spec.combine, spec.coef, spec.weight, spec.label) == ("ensemble", [Path("rm-a"), Path("rm-b")], "uwo", 0.5, 2.0, "ensemble")
    spec = parse_spec("ensemble:runs/members:min")
    assert (spec.members, spec.combine, spec.label) == ([Path("runs/members")], "min", "members")
    assert parse_spec("ensemble:runs/members").combine == "mean"
    with pytest.raises(TetherError, match="uwo needs its LAMBDA"):
        parse_spec("ensemble:a,b:uwo=x")
    with pytest.raises(TetherError, match="no reward model folder"):
        parse_spec("ensemble:")
    with pytest.raises(TetherError, match=r"aspect weights \(rm:helpful=1, harm=-1\) cannot be given inside ensemble"):
        parse_spec("ensemble:rm:helpful=1,harm=-1")  # was: "no such reward model folder", a fix that did not apply


class _Members:
    """A stand-in reward model: fixed member rewards (N, K) whatever the text."""

    def __init__(self, columns):
        self.columns = np.asarray(columns, dtype=np.float64)
        self.ensemble = self.columns.shape[1]

    def score_members(self, prompts, completions, batch_size=32):
        return self.columns[: len(completions)]


def test_an_ensemble_spec_scores_its_members_side_by_side_and_logs_mean_and_spread():
    # member 1 is one model, member 2 another: concatenated they are MEMBERS
    models = [_Members(MEMBERS[:, :1]), _Members(MEMBERS[:, 1:])]
    for text, expected in (("ensemble:a,b", [2.0, 0.0, 0.5]), ("ensemble:a,b:uwo=0.5@2", [3.0, 0.0, -0.5]), ("ensemble:a,b:min", [1.0, 0.0, -1.0])):
        reward = Reward([parse_spec(text)], [models])
        scores, metrics = reward.score(["p"] * 3, ["p"] * 3, ["x", "y", "z"])
        assert scores.tolist() == pytest.approx(expected), text
        assert metrics["reward/ensemble/mean"] == pytest.approx(2.5 / 3)
        assert metrics["reward/ensemble/spread"] == pytest.approx(2.5 / 3)
    assert reward.reward_models == models  # the PPO critic may start from the first member
    assert reward.members(["p"] * 3, ["x", "y", "z"]).tolist() == MEMBERS.tolist()


def test_an_ensemble_folder_lists_its_member_models(tmp_path):
    from tether.recipes.reward_specs import load_reward, member_folders

    for name in ("member-1", "member-0"):
        (tmp_path / "ens" / name).mkdir(parents=True)
        (tmp_path / "ens" / name / "tether.json").write_text("{}")
    (tmp_path / "ens" / "notes").mkdir()
    assert member_folders(tmp_path / "ens") == [tmp_path / "ens" / "member-0", tmp_path / "ens" / "member-1"]
    assert member_folders(tmp_path / "ens" / "member-0") == [tmp_path / "ens" / "member-0"]
    assert member_folders(tmp_path / "ens" / "notes") == [tmp_path / "ens" / "notes"]  # no members: the folder itself (a Hugging Face model)
    with pytest.raises(TetherError, match="is not a Tether reward model"):
        load_reward([f"ensemble:{tmp_path / 'ens' / 'notes'}"])


def test_best_of_n_keeps_the_reply_the_reward_scores_highest(cli, tiny_lm_dir, tmp_path):
    import json
    import math

    from tether.lifecycle.evaluate_policy import load_policy
    from tether.lifecycle.overoptimization import best_of_n
    from tether.recipes.reward_specs import load_reward

    (tmp_path / "length.py").write_text("def reward(prompts, completions):\n    return [float(len(c)) for c in completions]\n")
    reward = load_reward([f"py:{tmp_path / 'length.py'}:reward"])
    model, tokenizer = load_policy(tiny_lm_dir)
    prompts = ["hello", "order", "thank you"]
    result = best_of_n(model, tokenizer, prompts, reward, 4, max_new_tokens=8, seed=3)
    assert len(result["all_scores"]) == 3 and all(len(row) == 4 for row in result["all_scores"])
    assert result["scores"] == [max(row) for row in result["all_scores"]]
    assert [float(len(t)) for t in result["completions"]] == result["scores"]
    assert result["kl"] == pytest.approx(math.log(4) - 3 / 4)
    one = best_of_n(model, tokenizer, prompts, reward, 1, max_new_tokens=8, seed=3)
    assert one["kl"] == 0.0 and sum(one["scores"]) <= sum(result["scores"])

    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = cli("sample", "--policy", tiny_lm_dir, "--prompts", tmp_path / "prompts.jsonl", "--reward", f"py:{tmp_path / 'length.py'}:reward",
              "--best-of", "4", "--max-new-tokens", "8", "-o", tmp_path / "bon.jsonl", "--json")
    assert out.code == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "bon.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts and all(r["best_of"] == 4 and r["reward"] == len(r["completion"]) for r in rows)
    assert json.loads(out.stdout)["kl"] == pytest.approx(math.log(4) - 3 / 4)


def test_reference_model_keeps_the_kl_to_another_policy_and_refuses_lora():
    from tether.recipes.configs import GRPOConfig

    cfg = GRPOConfig(model="policy", reference_model="sft", prompts="p.jsonl", reward=["rm"], output_dir="o")
    assert cfg.reference_model == "sft"
    with pytest.raises(ValueError, match="reference_model with LoRA"):
        GRPOConfig(model="policy", reference_model="sft", lora_r=8, prompts="p.jsonl", reward=["rm"], output_dir="o")
