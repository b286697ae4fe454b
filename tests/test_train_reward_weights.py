"""Row weights in reward-model training (issue 19, item 4): a row's ``weight`` scales its pair's loss, the loss being
the weighted mean sum(w * l) / sum(w) (the math by hand: tests/test_losses_reward.py). Tiny Llama models, as in
tests/test_train_reward.py, whose helpers these use."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_reward import _fails, config, make_pairs, write_jsonl


def _flipped(rows: list[dict]) -> list[dict]:
    return [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]


def test_row_weights_decide_what_the_reward_model_learns(tiny_lm_dir, tmp_path):
    """The same pairs twice, once each way round: weight 1 on one copy and 0 on the other, the model learns the
    preference of the weighted copy, and swapping the weights swaps what it learns (unweighted, both runs would be
    the same run on the same rows)."""
    from tether.recipes.reward import train_reward

    rows, test = make_pairs(96, seed=5), make_pairs(64, seed=6)  # "thank" is chosen over "sorry"
    test_file = write_jsonl(tmp_path / "test.jsonl", test)
    accuracy = {}
    for name, w_right, w_flipped in (("right", 1.0, 0.0), ("flipped", 0.0, 1.0)):
        data = [{**r, "weight": w_right} for r in rows] + [{**r, "weight": w_flipped} for r in _flipped(rows)]
        data_file = write_jsonl(tmp_path / f"{name}.jsonl", data)
        metrics = train_reward(config(tiny_lm_dir, data_file, tmp_path / name, epochs=3, eval_data=str(test_file))).metrics
        accuracy[name] = metrics["eval/accuracy"]
        record = json.loads((tmp_path / name / "tether.json").read_text())["reward"]["row_weights"]
        assert record == {"mean": 0.5, "min": 0.0, "max": 1.0}
    assert accuracy["right"] >= 0.9 and accuracy["flipped"] <= 0.1, accuracy


def test_weight_one_everywhere_trains_the_unweighted_model(tiny_lm_dir, tmp_path):
    """Rows of weight 1 give the model that rows without weights give (up to float noise: the weighted mean is
    summed in another order); uneven weights give the same model whether a batch is one forward pass or several
    (each pass's loss is scaled by its share of the batch's weight, not of its rows)."""
    from safetensors.torch import load_file

    from tether.recipes.reward import train_reward

    rows = make_pairs(64, seed=7)
    plain = write_jsonl(tmp_path / "plain.jsonl", rows)
    ones = write_jsonl(tmp_path / "ones.jsonl", [{**r, "weight": 1} for r in rows])
    uneven = write_jsonl(tmp_path / "uneven.jsonl", [{**r, "weight": [0.1, 1.0, 3.0][i % 3]} for i, r in enumerate(rows)])
    runs = {
        "plain": (plain, {}), "ones": (ones, {}),
        "uneven": (uneven, {}), "uneven-split": (uneven, {"max_tokens_per_forward": 64}),
    }
    logged: dict[str, list[float]] = {}
    for name, (data, extra) in runs.items():
        train_reward(config(tiny_lm_dir, data, tmp_path / name, max_steps=3, batch_size=8, **extra),
                     on_step=lambda step, stats, name=name: logged.setdefault(name, []).append(stats["train/loss"]))
    meta = {name: json.loads((tmp_path / name / "tether.json").read_text())["reward"] for name in runs}
    assert meta["plain"]["row_weights"] is None and meta["ones"]["row_weights"] == {"mean": 1.0, "min": 1.0, "max": 1.0}
    weights = {name: load_file(str(tmp_path / name / "model.safetensors")) for name in runs}

    def same(a: dict, b: dict) -> bool:  # the tolerance of test_token_budget_splits_passes_without_changing_the_result
        return all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-3) and (a[k] - b[k]).norm() <= 1e-3 * a[k].norm() + 1e-6 for k in a)

    assert same(weights["plain"], weights["ones"])
    assert same(weights["uneven"], weights["uneven-split"])
    # the logged loss is the weighted mean that was optimized, however the batch was cut into passes
    assert logged["uneven-split"] == pytest.approx(logged["uneven"], rel=1e-4) and logged["plain"] == pytest.approx(logged["ones"], rel=1e-4)
    assert not same(weights["plain"], weights["uneven"])  # the weights do change the model


@pytest.mark.parametrize(("weight", "needle"), [(-1, "got -1"), ("high", "got 'high'"), (None, None)])
def test_a_bad_weight_stops_training_with_the_row_and_the_fix(cli, tiny_lm_dir, tmp_path, weight, needle):
    rows = make_pairs(8, seed=8)
    if weight is None:  # every row weight 0: nothing to learn from
        data = write_jsonl(tmp_path / "zero.jsonl", [{**r, "weight": 0} for r in rows])
        needles = ["every one of the 8 training rows has weight 0", "give some rows a weight above 0"]
    else:
        rows[2] = {**rows[2], "weight": weight}
        data = write_jsonl(tmp_path / "bad.jsonl", rows)
        needles = ["bad.jsonl: record 3: weight must be a finite number >= 0", needle, "or leave the field out"]
    result = cli("train", "reward", "--model", tiny_lm_dir, "--data", data, "--output-dir", tmp_path / "m", "--batch-size", "4",
                 "--set", "progress=false", "--set", "mlflow=false")
    _fails(result, *needles)
    assert not (tmp_path / "m" / "model.safetensors").exists()
