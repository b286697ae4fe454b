"""The length-controlled reward (length_correction): the within-pair slope by hand, a trained model whose saved
scores no longer move with length inside the pairs it was fit on, the normalization over those pairs, and the
settings it refuses."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from test_train_reward import WORDS, config, make_pairs, write_jsonl

from tether.recipes.configs import RewardConfig
from tether.recipes.reward_length import length_correction, reference_pairs, within_pair_slope


def test_within_pair_slope_by_hand():
    chosen_len, rejected_len = torch.tensor([9.0, 3.0, 7.0, 1.0]), torch.tensor([4.0, 15.0, 7.0, 0.0])
    dl = np.log1p(chosen_len.numpy()) - np.log1p(rejected_len.numpy())  # log 2, -log 4, 0 (left out), log 2
    chosen = torch.tensor([[1.0, 0.5], [0.0, 2.0], [3.0, 3.0], [0.7, 1.0]])
    rejected = torch.tensor([[0.2, 0.5], [0.4, 2.0], [1.0, 3.0], [0.0, 1.0]])  # dr = 0.8, -0.4, (2.0), 0.7; and 0s
    per_pair = [0.8 / dl[0], -0.4 / dl[1], 0.7 / dl[3]]  # 1.154, 0.289, 1.010: the median is the third
    slope = within_pair_slope(chosen, rejected, chosen_len, rejected_len)
    assert slope.tolist() == pytest.approx([sorted(per_pair)[1], 0.0])
    same = torch.tensor([5.0, 5.0, 5.0, 5.0])
    assert within_pair_slope(chosen, rejected, same, same).tolist() == [0.0, 0.0]  # no length difference: nothing to fit
    corrected, record = length_correction(chosen, rejected, {"chosen_tokens": chosen_len, "rejected_tokens": rejected_len}, "4 pairs")
    b = slope.double()
    torch.testing.assert_close(corrected, chosen.double() - b * torch.log1p(chosen_len.double()).unsqueeze(1))
    assert record["slope"] == pytest.approx(slope.tolist()) and record["per"] == "log(1 + completion tokens)" and record["fit_on"] == "4 pairs"


def test_after_the_correction_the_longer_answer_wins_half_the_reference_pairs():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, 200, (101, 2), generator=gen).double()
    rewards = 0.3 * torch.log1p(tokens) + 0.2 * torch.randn(101, 2, generator=gen, dtype=torch.float64)  # pays for length
    longer = lambda r: float(((r[:, 0] > r[:, 1]) == (tokens[:, 0] > tokens[:, 1])).double().mean())  # noqa: E731
    assert longer(rewards) > 0.65
    b = within_pair_slope(rewards[:, :1], rewards[:, 1:], tokens[:, 0], tokens[:, 1])
    assert 0.2 < float(b) < 0.4  # about the 0.3 put in
    corrected = rewards - b * torch.log1p(tokens)
    assert longer(corrected) == pytest.approx(0.5, abs=1 / 101)


def test_the_reference_is_the_validation_split_else_a_seeded_training_sample():
    data = {"chosen": [[i] for i in range(10)], "rejected": [[i, i] for i in range(10)],
            "chosen_tokens": torch.arange(10.0), "rejected_tokens": torch.arange(10.0) * 2}
    validation = {"chosen": [[1]], "rejected": [[2]], "chosen_tokens": torch.tensor([1.0]), "rejected_tokens": torch.tensor([2.0])}
    assert reference_pairs(data, validation, 4, seed=0) == (validation, "1 validation pairs")
    sample, name = reference_pairs(data, None, 4, seed=0)
    assert name == "4 training pairs (a seeded sample)" and len(sample["chosen"]) == 4
    picked = [row[0] for row in sample["chosen"]]
    assert sample["rejected"] == [[i, i] for i in picked] and sample["rejected_tokens"].tolist() == [2.0 * i for i in picked]
    assert reference_pairs(data, None, 4, seed=0)[0]["chosen"] == sample["chosen"]  # seeded: the same sample again
    assert len(reference_pairs(data, None, None, seed=0)[0]["chosen"]) == 10


def _padded_pairs(n: int, seed: int, chosen_longer: float = 0.8) -> list[dict]:
    """The "thank"/"sorry" preference, with the chosen answer also padded longer ``chosen_longer`` of the time: a
    model trained at 0.8 learns to pay for length too."""
    rng = random.Random(seed)
    rows = make_pairs(n, seed)
    for row in rows:
        side = "chosen" if rng.random() < chosen_longer else "rejected"
        row[side] += " " + " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
    return rows


def test_a_length_corrected_model_scores_without_the_within_pair_length_slope(tiny_lm_dir, tmp_path):
    from tether.models.reward_model import RewardModel
    from tether.models.tokens import completion_tokens
    from tether.recipes.reward import train_reward

    train, held = _padded_pairs(240, seed=4), _padded_pairs(80, seed=9, chosen_longer=0.5)  # held out: length tells nothing
    data, validation = write_jsonl(tmp_path / "d.jsonl", train), write_jsonl(tmp_path / "v.jsonl", held)
    out = tmp_path / "rm"
    train_reward(config(tiny_lm_dir, data, out, epochs=3, validation_data=str(validation), length_correction=True))
    meta = json.loads((out / "tether.json").read_text())
    record = meta["reward"]["normalization"]["length_correction"]
    assert record["fit_on"] == "80 validation pairs" and record["slope"][0] > 0  # it paid for length
    rm = RewardModel.load(out, device="cpu")
    prompts = [r["prompt"] for r in held]
    chosen, rejected = rm.raw_scores(prompts, [r["chosen"] for r in held])[:, 0, 0], rm.raw_scores(prompts, [r["rejected"] for r in held])[:, 0, 0]
    lengths = [np.array(completion_tokens(rm.tokenizer, prompts, [r[side] for r in held]), dtype=float) for side in ("chosen", "rejected")]
    dl = np.log1p(lengths[0]) - np.log1p(lengths[1])
    longer_ahead = ((chosen - rejected) * dl > 0)[dl != 0].mean()
    assert longer_ahead == pytest.approx(0.5, abs=1.5 / (dl != 0).sum())  # the saved scores: no length preference left
    rm.length_slope = None  # the head's own outputs: they paid for length
    head_chosen, head_rejected = rm.raw_scores(prompts, [r["chosen"] for r in held])[:, 0, 0], rm.raw_scores(prompts, [r["rejected"] for r in held])[:, 0, 0]
    slope = float(np.median(((head_chosen - head_rejected) / np.where(dl != 0, dl, 1))[dl != 0]))
    assert slope == pytest.approx(record["slope"][0], rel=1e-3)
    np.testing.assert_allclose(chosen, head_chosen - slope * np.log1p(lengths[0]), rtol=1e-4, atol=1e-5)
    norm = meta["reward"]["normalization"]  # mean 0, std 1 over the validation chosen answers, corrected
    assert norm["mean"][0] == pytest.approx(chosen.mean(), abs=1e-4) and norm["std"][0] == pytest.approx(chosen.std(ddof=1), rel=1e-3)
    assert (chosen > rejected).mean() > 0.8  # the preference itself is still learned


def test_without_a_validation_split_it_fits_on_a_training_sample(tiny_lm_dir, tmp_path):
    from tether.recipes.reward import train_reward

    data = write_jsonl(tmp_path / "d.jsonl", _padded_pairs(64, seed=1))
    train_reward(config(tiny_lm_dir, data, tmp_path / "rm", max_steps=2, length_correction=True, normalize_max_rows=32))
    norm = json.loads((tmp_path / "rm" / "tether.json").read_text())["reward"]["normalization"]
    assert norm["length_correction"]["fit_on"] == "32 training pairs (a seeded sample)" and norm["n"] == 32


def test_length_correction_refuses_ratings_and_a_separate_normalization_set():
    with pytest.raises(ValueError, match="length_correction are for objective=pairwise"):
        RewardConfig(model="m", data="d", output_dir="o", objective="rating", length_correction=True)
    with pytest.raises(ValueError, match="drop normalize_data"):
        RewardConfig(model="m", data="d", output_dir="o", length_correction=True, normalize_data="n.jsonl")
