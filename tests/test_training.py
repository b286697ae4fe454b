"""Shared training plumbing: batching, truncation, padding, log-probs, configs, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from tether.config import TrainConfig, load_config
from tether.errors import TetherError
from tether.models import sequence_logps
from tether.training import (
    length_bucketed_batches,
    make_scheduler,
    pad_left,
    pad_right,
    padded_passes,
    total_optimizer_steps,
    truncate_keep_end,
)


def test_bucketed_batches_cover_every_index_once_and_are_deterministic():
    lengths = [7, 1, 9, 3, 3, 12, 5, 2, 8, 4, 6]
    batches = length_bucketed_batches(lengths, 3, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches == length_bucketed_batches(lengths, 3, seed=1, epoch=0)
    assert batches != length_bucketed_batches(lengths, 3, seed=1, epoch=1)


def test_the_longest_example_is_in_the_first_batch():
    import random

    for seed in range(5):
        lengths = [random.Random(seed * 100 + i).randint(1, 500) for i in range(257)]
        for epoch in range(3):
            batches = length_bucketed_batches(lengths, 8, seed=seed, epoch=epoch)
            assert lengths.index(max(lengths)) in batches[0]
            assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_bucketing_reduces_padding():
    lengths = [1, 100, 2, 99, 3, 98, 4, 97]
    batches = length_bucketed_batches(lengths, 2, seed=0, epoch=0)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded == 2 * (2 + 4 + 98 + 100)  # pairs of neighbours in sorted order


def _pass_cost(lengths: list[int], passes: list[list[int]], overhead: int) -> float:
    return sum(len(p) * max(lengths[i] for i in p) * (1 + max(lengths[i] for i in p) / 512) + overhead for p in passes)


def test_padded_passes_cover_every_sequence_once_at_the_least_cost():
    import itertools
    import random

    for seed in range(20):
        rng = random.Random(seed)
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 9))]
        overhead = rng.choice([0, 50, 500, 10**6])
        passes = padded_passes(lengths, overhead)
        assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
        # Brute force over every way to cut the sorted order into contiguous runs.
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        best = min(
            _pass_cost(lengths, [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], overhead)
            for k in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), k)
        )
        assert _pass_cost(lengths, passes, overhead) == pytest.approx(best)
    assert padded_passes([7, 300, 5, 290], 0) == [[2], [0], [3], [1]]  # passes are free: no padding at all
    assert padded_passes([7, 300, 5, 290], 50) == [[2, 0], [3, 1]]  # short with short, long with long
    assert padded_passes([7, 300, 5, 290], 10**6) == [[2, 0, 3, 1]]  # a pass costs more than any padding: one pass
    assert padded_passes([], 96) == []


def test_truncation_keeps_the_completion_and_the_prompt_end():
    assert truncate_keep_end([1, 2, 3, 4], [8, 9], 4) == [3, 4, 8, 9]
    assert truncate_keep_end([1, 2], [8, 9], 10) == [1, 2, 8, 9]
    assert truncate_keep_end([1, 2], [8, 9], 2) == [8, 9]
    assert truncate_keep_end([1], [7, 8, 9], 2) is None


def test_padding_sides():
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_sequence_logps_counts_only_masked_positions():
    # Uniform logits over 4 tokens: each counted token adds log(1/4).
    logits = torch.zeros(2, 4, 4)
    labels = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert torch.allclose(sequence_logps(logits, labels, mask), torch.tensor([2, 3]) * math.log(0.25))


def test_linear_schedule_with_warmup():
    cfg = TrainConfig(model="m", output_dir="o", warmup_ratio=0.2, learning_rate=0.5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, cfg, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(1 / 8)


def test_total_steps_from_epochs_or_max_steps():
    cfg = TrainConfig(model="m", output_dir="o", batch_size=4, epochs=2)
    assert total_optimizer_steps(10, cfg) == 6
    assert total_optimizer_steps(10, cfg.model_copy(update={"max_steps": 3})) == 3


def test_config_layers_and_errors(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("learning_rate: 0.001\nbatch-size: 16\n")
    cfg = load_config(TrainConfig, yaml_file, ["batch_size=32"], model="m", output_dir=tmp_path, seed=3)
    assert (cfg.learning_rate, cfg.batch_size, cfg.seed) == (0.001, 32, 3)
    # Each bad value is named the way the user wrote it: the --set pair, the flag, or the key in the YAML file.
    with pytest.raises(TetherError, match="--set learning_rate=-1"):
        load_config(TrainConfig, None, ["learning_rate=-1"], model="m", output_dir=tmp_path)
    with pytest.raises(TetherError, match="--learning-rate"):
        load_config(TrainConfig, None, None, model="m", output_dir=tmp_path, learning_rate=-1)
    yaml_file.write_text("batch-size: 0\n")
    with pytest.raises(TetherError, match=r"batch-size \(in .*c\.yaml\)"):
        load_config(TrainConfig, yaml_file, None, model="m", output_dir=tmp_path)
    with pytest.raises(TetherError, match="unknown config field"):
        load_config(TrainConfig, None, ["learnin_rate=1"], model="m", output_dir=tmp_path)
    with pytest.raises(TetherError, match="key=value"):
        load_config(TrainConfig, None, ["oops"], model="m", output_dir=tmp_path)


def _write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("command, settings, steps", [("ppo", [], 2), ("grpo", ["num_minibatches=2", "ppo_epochs=2"], 3), ("rloo", ["num_minibatches=2", "ppo_epochs=2"], 3)])
def test_online_max_steps_is_honoured_exactly(cli, tiny_lm_dir, tmp_path, command, settings, steps):
    """--max-steps counts optimizer steps: a last rollout stops after the steps that remain, with a one-line note
    (before: PPO's 4 epochs per rollout turned --max-steps 2 into 4 steps), and the schedule ends on that step."""
    import json

    (tmp_path / "rules.yaml").write_text('rules:\n  - name: has_e\n    required: ["e"]\n')
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in ("Hello, how", "Your order", "Please reset", "The quick")])
    out = tmp_path / command
    args = ["train", command, "--model", tiny_lm_dir, "--prompts", prompts, "--reward", f"rules:{tmp_path / 'rules.yaml'}", "--output-dir", out,
            "--batch-size", "4", "--max-new-tokens", "4", "--max-steps", str(steps), "--learning-rate", "1e-3", "--set", "progress=false",
            "--set", "mlflow=false", "--set", "logging_steps=1", "--set", "lr_schedule=linear", *(x for s in settings for x in ("--set", s))]
    if command != "ppo":
        args += ["--group-size", "2"]
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert f"note: --max-steps {steps}: the last rollout makes" in result.stdout
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == steps
    assert history[-1]["train/learning_rate"] == pytest.approx(0.0)  # linear decay reaches 0 at exactly --max-steps


@pytest.mark.slow  # two process start-ups with torch imports: ~30 s on the shared 2-core machine
def test_two_processes_say_everything_once(tiny_lm_dir, tmp_path):
    """`accelerate launch --num_processes 2` (gloo on the CPU): every line of stdout (notes, `done:`) appears
    once, and so do the progress bars of model loading on stderr (before: every message twice)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    rows = [{"prompt": f"Question {i}?", "completion": "Hello, how can I help?"} for i in range(8)]
    rows.append({"prompt": "Too long?", "completion": " ".join(["hello"] * 400)})  # a note: skipped 1 of 9
    data = _write_jsonl(tmp_path / "a.jsonl", rows)
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "0", "-m", "tether", "train", "sft", "--model", str(tiny_lm_dir),
           "--data", str(data), "--output-dir", str(tmp_path / "two"), "--batch-size", "4", "--max-steps", "2", "--max-length", "64",
           "--set", "mlflow=false"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), done.stdout
    assert any(line.startswith("note: skipped 1 of 9") for line in lines), done.stdout
    assert any(line.startswith("done: ") for line in lines)
    assert done.stderr.count("Loading weights: 100%") == 1, done.stderr[-3000:]
