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


# ---------------------------------------------------------------------------------------------------------------
# The suite: sections, bootstrap intervals, length diagnostics, a DPO policy's implicit reward
# ---------------------------------------------------------------------------------------------------------------


def test_bootstrap_interval_by_hand():
    from tether.models.reward_eval import bootstrap_interval

    assert bootstrap_interval(np.ones(3)) == (1.0, 1.0)  # every resample is all right
    # [1, 0]: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5% quantiles of
    # 1000 resamples are 0 and 1.
    assert bootstrap_interval(np.array([1.0, 0.0])) == (0.0, 1.0)
    # [1, 0, 1, 1]: the mean of a resample is Binomial(4, 3/4) / 4; P(0) = 1/256 < 2.5% < P(<= 1/4) = 13/256, and
    # P(1) = 81/256 > 2.5%: the interval is [1/4, 1].
    assert bootstrap_interval(np.array([1.0, 0.0, 1.0, 1.0])) == (0.25, 1.0)
    assert bootstrap_interval(np.array([1.0, 0.0] * 50), seed=3) == bootstrap_interval(np.array([1.0, 0.0] * 50), seed=3)
    low, high = bootstrap_interval(np.array([1.0, 0.0] * 50))
    assert 0.38 < low < 0.45 and 0.55 < high < 0.62  # 0.5 +- 1.96 * 0.05
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([])))


def test_sections_and_intervals_by_hand(tiny_lm_dir):
    from tether.lifecycle.evaluate_reward import evaluate_sections
    from tether.models.hf import load_tokenizer

    rm = FakeRewardModel(load_tokenizer(tiny_lm_dir, chat_template=False), {"A": 2.0, "B": 0.0, "C": 0.0, "D": 1.0, "E": 3.0, "F": 0.0, "G": 1.0, "H": 0.5})
    sections = {
        "x": [{"prompt": "p", "chosen": "A", "rejected": "B"}, {"prompt": "p", "chosen": "C", "rejected": "D"}],  # right, wrong
        "y": [{"prompt": "p", "chosen": "E", "rejected": "F"}, {"prompt": "p", "chosen": "G", "rejected": "H"}, {"prompt": "p", "chosen": "A", "rejected": "H"},
              {"prompt": "p", "chosen": "A", "rejected": "B", "tie": True}],  # right x 3, a tie left out
    }
    report = evaluate_sections(rm, sections)
    x, y = report["sections"]["x"], report["sections"]["y"]
    assert (x["n"], x["accuracy"], x["accuracy_low"], x["accuracy_high"]) == (2, 0.5, 0.0, 1.0)
    assert (y["n"], y["n_ties"], y["accuracy"], y["accuracy_low"], y["accuracy_high"]) == (3, 1, 1.0, 1.0, 1.0)
    assert (report["n"], report["n_ties"], report["accuracy"]) == (5, 1, 0.8)  # pooled over both sections
    # 4 of 5 right: a resample's mean is Binomial(5, 4/5) / 5; P(<= 2/5) = 0.058 > 2.5% > P(<= 1/5) = 0.0067
    assert (report["accuracy_low"], report["accuracy_high"]) == (0.4, 1.0)
    assert y["mean_margin_raw"] == pytest.approx((3 + 0.5 + 1.5) / 3)
    one = evaluate_sections(rm, {"x": sections["x"]})
    assert one["accuracy"] == 0.5 and set(one["sections"]) == {"x"}


def test_length_diagnostics_by_hand(tiny_lm_dir):
    from tether.models.hf import load_tokenizer

    # chosen / rejected lengths in characters 4/1, 1/4, 2/2, 3/2; rewards 2/0 (right), 0/1 (wrong), 1/0 (right), 3/0 (right)
    rm = FakeRewardModel(load_tokenizer(tiny_lm_dir, chat_template=False),
                         {"aaaa": 2.0, "b": 0.0, "c": 0.0, "dddd": 1.0, "ee": 1.0, "ff": 0.0, "ggg": 3.0, "hh": 0.0})
    rows = [{"prompt": "p", "chosen": c, "rejected": r} for c, r in (("aaaa", "b"), ("c", "dddd"), ("ee", "ff"), ("ggg", "hh"))]
    length = evaluate_reward_model(rm, rows)["length"]
    assert length["chosen_longer"] == {"accuracy": 1.0, "n": 2}  # pairs 1 and 4
    assert length["chosen_shorter"] == {"accuracy": 0.0, "n": 1}  # pair 2
    assert length["same_length"] == {"accuracy": 1.0, "n": 1} and length["share_chosen_longer"] == 0.5
    # ratios 4, 0.25, 1, 1.5
    assert length["by_length_ratio"] == {"0-0.5": {"accuracy": 0.0, "n": 1}, "0.8-1.25": {"accuracy": 1.0, "n": 1},
                                         "1.25-2": {"accuracy": 1.0, "n": 1}, ">=2": {"accuracy": 1.0, "n": 1}}
    # Pearson over the 8 completions: rewards (2, 0, 1, 3, 0, 1, 0, 0) against lengths (4, 1, 2, 3, 1, 4, 2, 2):
    # sum of products of deviations 6.375, sums of squares 8.875 and 9.875 -> 6.375 / sqrt(8.875 * 9.875)
    assert length["reward_length_correlation"] == pytest.approx(6.375 / math.sqrt(8.875 * 9.875))


@pytest.fixture(scope="module")
def dpo_pair(tiny_lm_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A 'policy' (the tiny LM with its weights moved) and its reference (the tiny LM), saved with its tokenizer."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("dpo")
    policy_dir = root / "policy"
    shutil.copytree(tiny_lm_dir, policy_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(str(policy_dir))
    return policy_dir, Path(tiny_lm_dir)


def test_implicit_reward_is_beta_times_the_log_ratio(dpo_pair, tmp_path, cli):
    import torch
    from transformers import AutoModelForCausalLM

    from tether.lifecycle.evaluate_reward import load_implicit_reward
    from tether.models.hf import load_tokenizer
    from tether.models.tokens import encode_texts

    policy_dir, reference_dir = dpo_pair
    prompts, completions = ["hello how can i help", "order page"], [" thank you", " the quick brown fox"]
    scorer = load_implicit_reward(policy_dir, reference_dir, beta=0.5)
    got = scorer.raw_scores(prompts, completions, batch_size=1)[:, 0, 0]

    def logp(model_dir: Path, prompt: str, completion: str) -> float:  # the plain way: full logits, log-softmax
        tok = load_tokenizer(model_dir)
        (p,), (c,) = encode_texts(tok, [prompt], [completion])
        model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0].log_softmax(-1)
        return float(sum(logits[len(p) + j - 1, t] for j, t in enumerate(c)))

    expected = [0.5 * (logp(policy_dir, p, c) - logp(reference_dir, p, c)) for p, c in zip(prompts, completions)]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert abs(expected[0]) > 1e-3  # the two models differ
    # The CLI's report is made of those rewards: accuracy is the share of pairs with r(chosen) > r(rejected).
    rows = [{"prompt": prompts[0], "chosen": completions[0], "rejected": completions[1]}, {"prompt": prompts[1], "chosen": completions[1], "rejected": completions[0]}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("eval", "reward", "--dpo-policy", policy_dir, "--reference", reference_dir, "--beta", "0.5", "--data", data, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    by_hand = scorer.raw_scores([prompts[0], prompts[0], prompts[1], prompts[1]], [completions[0], completions[1], completions[1], completions[0]])[:, 0, 0]
    assert report["accuracy"] == pytest.approx(((by_hand[0] > by_hand[1]) + (by_hand[2] > by_hand[3])) / 2)
    assert report["mean_margin_raw"] == pytest.approx(((by_hand[0] - by_hand[1]) + (by_hand[2] - by_hand[3])) / 2, abs=1e-4)


def test_cli_suite_sections(cli, small_rm, tmp_path):
    model, data = small_rm
    suite = tmp_path / "suite"
    suite.mkdir()
    rows = [json.loads(line) for line in Path(data).read_text().splitlines()]
    (suite / "alpha.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:10]))
    (suite / "beta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[10:]))
    (suite / "notes.txt").write_text("not a section")
    result = cli("eval", "reward", "--model", model, "--suite", suite, "--data", f"gamma={data}", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["sections"]) == {"alpha", "beta", "gamma"} and report["n"] == 32
    assert [report["sections"][k]["n"] for k in ("alpha", "beta", "gamma")] == [10, 6, 16]
    assert {"accuracy_low", "accuracy_high", "length", "ece"} <= set(report["sections"]["alpha"])
    table = cli("eval", "reward", "--model", model, "--suite", suite)
    assert table.code == 0 and "alpha" in table.stdout and "(all)" in table.stdout
    helped = cli("eval", "reward", "--help")
    assert "one preference file per section" in helped.stdout and "chat.jsonl" in helped.stdout
    for args, needle in [((), "--model"), (("--model", model), "nothing to evaluate"), (("--model", model, "--dpo-policy", model, "--data", data), "one of them"),
                         (("--dpo-policy", model, "--data", data), "--reference"), (("--model", model, "--suite", tmp_path / "none"), "not found"),
                         (("--model", model, "--data", f"alpha={data}", "--suite", suite), "both")]:
        result = cli("eval", "reward", *args)
        assert result.code != 0 and needle in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_spread_calibration_by_hand():
    from tether.models.reward_eval import spread_calibration

    # Sorted by spread (stable): pairs 0, 5 | 1, 3 | 4, 2; the two wrong pairs (2, 4) have the two largest spreads.
    correct = np.array([1, 1, 0, 1, 0, 1])
    spread = np.array([0.1, 0.2, 0.9, 0.3, 0.5, 0.1])
    got = spread_calibration(correct, spread)
    assert {k: (v["accuracy"], v["n"]) for k, v in got["by_spread"].items()} == {"low": (1.0, 2), "mid": (1.0, 2), "high": (0.0, 2)}
    assert got["by_spread"]["high"]["mean_spread"] == pytest.approx(0.7)
    assert got["error_auroc"] == pytest.approx(1.0) and got["mean_spread"] == pytest.approx(2.1 / 6)
    # One wrong pair at 0.2 against right pairs at 0.2 (a tie: half) and 0.1 (below it): (0.5 + 1) / 2
    assert spread_calibration(np.array([0, 1, 1]), np.array([0.2, 0.2, 0.1]))["error_auroc"] == pytest.approx(0.75)
    assert spread_calibration(np.array([1, 1]), np.array([0.2, 0.1]))["error_auroc"] is None  # no error to find


class FakeMembers(FakeRewardModel):
    """Two members: the first scores by the table, the second adds a per-completion offset (its disagreement)."""

    def __init__(self, tokenizer, rewards, offsets):
        super().__init__(tokenizer, rewards)
        self.offsets, self.std = offsets, np.ones((2, 1))

    def raw_scores(self, prompts, completions, batch_size=32):
        first = np.array([self.rewards[c] for c in completions], dtype=float)
        return np.stack([first, first + np.array([self.offsets[c] for c in completions])], axis=1).reshape(-1, 2, 1)


def test_ensemble_report_has_spread_and_single_model_does_not(tiny_lm_dir):
    from tether.lifecycle.evaluate_reward import MemberEnsemble
    from tether.models.hf import load_tokenizer

    tok = load_tokenizer(tiny_lm_dir, chat_template=False)
    rows = [{"prompt": "p", "chosen": "A", "rejected": "B"}, {"prompt": "p", "chosen": "C", "rejected": "D"}, {"prompt": "p", "chosen": "E", "rejected": "F"}]
    rewards = {"A": 2.0, "B": 0.0, "C": 0.0, "D": 0.5, "E": 1.0, "F": 0.0}
    offsets = {"A": 0.0, "B": 0.0, "C": 2.0, "D": 0.0, "E": 0.0, "F": 0.0}
    report = evaluate_reward_model(FakeMembers(tok, rewards, offsets), rows)
    # normalized differences per member: (2, 2), (-0.5, 1.5), (1, 1): means 2, 0.5, 1 (all right), spreads 0, 1, 0
    assert report["mean_margin"] == pytest.approx((2 + 0.5 + 1) / 3)
    assert report["spread"]["mean_spread"] == pytest.approx(1 / 3) and report["spread"]["error_auroc"] is None
    assert "spread" not in evaluate_reward_model(FakeRewardModel(tok, rewards), rows)
    # Separately trained members read as one ensemble: heads side by side, each with its own normalization std.
    one, two = FakeRewardModel(tok, rewards), FakeRewardModel(tok, {k: v + offsets[k] for k, v in rewards.items()})
    one.aspects = two.aspects = ["reward"]
    two.std = np.full((1, 1), 1.0)
    joined = evaluate_reward_model(MemberEnsemble([one, two]), rows)
    # member 1 normalized by std 2: (1, -0.25, 0.5); member 2 by 1: (2, 1.5, 1); spreads (std over 2): 0.5, 0.875, 0.25
    assert joined["mean_margin"] == pytest.approx(((1 + 2) / 2 + (-0.25 + 1.5) / 2 + (0.5 + 1) / 2) / 3)
    assert joined["spread"]["mean_spread"] == pytest.approx((0.5 + 0.875 + 0.25) / 3)


def test_cli_eval_reward_on_a_members_folder(cli, small_rm, tmp_path):
    import shutil

    model, data = small_rm
    folder = tmp_path / "ensemble"
    for name in ("member-0", "member-1"):
        shutil.copytree(model, folder / name)
    result = cli("eval", "reward", "--model", folder, "--data", data, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    single = json.loads(cli("eval", "reward", "--model", model, "--data", data, "--json").stdout)
    # Two copies of one 2-head model: members (h1, h2, h1, h2), the same mean and spread as the model's own heads
    assert report["accuracy"] == single["accuracy"] and report["mean_margin"] == pytest.approx(single["mean_margin"])
    assert report["spread"]["mean_spread"] == pytest.approx(single["spread"]["mean_spread"], rel=1e-6)
    assert single["spread"]["mean_spread"] > 0
    table = cli("eval", "reward", "--model", folder, "--data", data)
    assert table.code == 0 and "ensemble spread" in table.stdout
