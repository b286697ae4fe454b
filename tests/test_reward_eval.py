"""Reward-model evaluation (accuracy, margin, ECE, buckets, subsets) and the `eval reward` / `score` commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tether.models.reward_eval import evaluate_reward_model, expected_calibration_error


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_ece_by_hand():
    # confidences 0.9, 0.8, 0.7, 0.55 fall in four different bins; correct = p > 0.5 -> 1, 1, 0, 1.
    # ECE = (|1 - 0.9| + |1 - 0.8| + |0 - 0.7| + |1 - 0.55|) / 4 = 1.45 / 4
    assert expected_calibration_error(np.array([0.9, 0.8, 0.3, 0.55])) == pytest.approx(0.3625)
    # Same bin (confidence 0.9 both), one right one wrong: |0.5 - 0.9| = 0.4
    assert expected_calibration_error(np.array([0.9, 0.1])) == pytest.approx(0.4)
    assert expected_calibration_error(np.array([1.0, 1.0])) == pytest.approx(0.0)


class FakeRewardModel:
    """Raw rewards looked up by completion text; normalization std 2 (K = A = 1)."""

    def __init__(self, tokenizer, rewards: dict[str, float]):
        self.tokenizer, self.rewards, self.std = tokenizer, rewards, np.full((1, 1), 2.0)

    def raw_scores(self, prompts, completions, batch_size=32):
        return np.array([self.rewards[c] for c in completions], dtype=float).reshape(-1, 1, 1)

    def aspect_vector(self):
        return np.ones(1)


def test_evaluate_by_hand(tiny_lm_dir):
    from tether.models.hf import load_tokenizer

    tok = load_tokenizer(tiny_lm_dir, chat_template=False)
    long_prompt = "hello " * 30
    n_long = len(tok(long_prompt + "E", add_special_tokens=False)["input_ids"]) + 1
    assert 128 < n_long <= 256
    rows = [
        {"prompt": "p", "chosen": "A", "rejected": "B", "subset": "x"},  # d = 2, right
        {"prompt": "p", "chosen": "C", "rejected": "D", "subset": "x"},  # d = -1, wrong
        {"prompt": long_prompt, "chosen": "E", "rejected": "F", "subset": "y"},  # d = 3, right
        {"prompt": "p", "chosen": "A", "rejected": "D", "tie": True},  # left out
    ]
    rm = FakeRewardModel(tok, {"A": 2.0, "B": 0.0, "C": 0.0, "D": 1.0, "E": 3.0, "F": 0.0})
    report = evaluate_reward_model(rm, rows)
    assert report["n"] == 3 and report["n_ties"] == 1
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["mean_margin_raw"] == pytest.approx(4 / 3)
    assert report["mean_margin"] == pytest.approx(4 / 3 / 2)  # in units of the normalization std (2)
    # confidences sigma(2), 1 - sigma(-1) = sigma(1), sigma(3) in bins 7, 4, 9; correct 1, 0, 1
    expected = ((1 - sigmoid(2)) + sigmoid(1) + (1 - sigmoid(3))) / 3  # 0.299229
    assert report["ece"] == pytest.approx(expected)
    assert report["by_subset"] == {"x": {"accuracy": 0.5, "n": 2}, "y": {"accuracy": 1.0, "n": 1}}
    assert report["by_length"] == {"1-128": {"accuracy": 0.5, "n": 2}, "129-256": {"accuracy": 1.0, "n": 1}}


def test_evaluate_needs_pairs(tiny_lm_dir):
    from tether.errors import TetherError
    from tether.models.hf import load_tokenizer

    with pytest.raises(TetherError, match="no preference pairs"):
        evaluate_reward_model(FakeRewardModel(load_tokenizer(tiny_lm_dir), {}), [{"prompt": "p", "chosen": "a", "rejected": "b", "tie": True}])


@pytest.fixture(scope="module")
def small_rm(tiny_lm_dir, tmp_path_factory) -> tuple[Path, Path]:
    from tether.recipes.configs import RewardConfig
    from tether.recipes.reward import train_reward

    root = tmp_path_factory.mktemp("rm-eval")
    rows = [{"prompt": f"q{i}\n", "chosen": "thank you", "rejected": "sorry no", "subset": "a" if i % 2 else "b"} for i in range(16)]
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RewardConfig(model=str(tiny_lm_dir), data=str(data), output_dir=root / "rm", max_steps=8, batch_size=8,
                       learning_rate=3e-3, ensemble=2, progress=False, mlflow=False)
    train_reward(cfg)
    return root / "rm", data


def test_cli_eval_reward_json(cli, small_rm):
    model, data = small_rm
    result = cli("eval", "reward", "--model", model, "--data", data, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"accuracy", "n", "ece", "mean_margin", "by_length", "by_subset"} <= set(report)
    assert report["n"] == 16 and set(report["by_subset"]) == {"a", "b"}
    table = cli("eval", "reward", "--model", model, "--data", data)
    assert table.code == 0 and "accuracy" in table.stdout and "ECE" in table.stdout


def test_cli_score_adds_rewards(cli, small_rm, tmp_path):
    from tether.models.reward_model import RewardModel

    model, pairs = small_rm
    rows = [{"prompt": "q1\n", "completion": "thank you", "id": 7}, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "sorry no"}]}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("score", "--model", model, "--data", data, "-o", tmp_path / "out.jsonl")
    assert result.code == 0, result.stderr
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert scored[0]["id"] == 7 and "reward_std" in scored[0] and "reward" in scored[1]
    expected = RewardModel.load(model, device="cpu").score(["q1\n"], ["thank you"])[0]
    assert scored[0]["reward"] == pytest.approx(expected, abs=1e-4)  # batched with padding vs alone
    result = cli("score", "--model", model, "--data", pairs, "-o", tmp_path / "pairs.jsonl")
    first = json.loads((tmp_path / "pairs.jsonl").read_text().splitlines()[0])
    assert result.code == 0 and {"reward_chosen", "reward_rejected", "reward_std_chosen"} <= set(first)


def test_cli_eval_and_score_errors(cli, small_rm, tiny_lm_dir, tmp_path):
    model, data = small_rm
    for result, needle in [
        (cli("eval", "reward", "--model", tmp_path / "none", "--data", data), "not found"),
        (cli("eval", "reward", "--model", tiny_lm_dir, "--data", data), "not a Tether reward model"),
        (cli("eval", "reward", "--model", model, "--data", tmp_path / "none.jsonl"), "not found"),
        (cli("score", "--model", model, "--data", tmp_path / "none.jsonl", "-o", tmp_path / "o.jsonl"), "not found"),
    ]:
        assert result.code != 0 and needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no fields"}) + "\n")
    result = cli("score", "--model", model, "--data", bad, "-o", tmp_path / "o.jsonl")
    assert result.code != 0 and "record 1" in result.stderr
