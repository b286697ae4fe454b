"""Shared training plumbing: batching, truncation, padding, log-probs, configs, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from tether.data.batching import (
    length_bucketed_batches,
    pad_left,
    pad_right,
    padded_passes,
    truncate_prompt,
)
from tether.errors import TetherError
from tether.models.logprobs import sequence_logps
from tether.recipes.configs import TrainConfig, load_config
from tether.recipes.runtime import make_optimizer, make_scheduler, total_optimizer_steps


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
    assert truncate_prompt([1, 2, 3, 4], [2], 4) == [3, 4]
    assert truncate_prompt([1, 2], [2], 10) == [1, 2]
    assert truncate_prompt([1, 2, 3], [1, 2], 4) == [2, 3]  # room before the longest completion
    # No room for the prompt: a policy needs one prompt token before its completion, a reward model none.
    assert truncate_prompt([1, 2], [2], 2) is None
    assert truncate_prompt([1, 2], [2], 2, min_prompt_tokens=0) == []
    assert truncate_prompt([1], [3], 2) is None and truncate_prompt([1], [3], 2, min_prompt_tokens=0) is None


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


def test_the_cpu_optimizer_is_fused_and_steps_as_adamw_does():
    # torch runs AdamW per tensor on the CPU unless asked (6x slower on MiniLM); the fused kernel must give the same step
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
    reference = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
    reference.load_state_dict(model.state_dict())
    cfg = TrainConfig(model="m", output_dir="o", learning_rate=1e-2, weight_decay=0.1)
    fused = make_optimizer(model, cfg)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW([{"params": [p for n, p in reference.named_parameters() if p.ndim >= 2], "weight_decay": 0.1},
                               {"params": [p for n, p in reference.named_parameters() if p.ndim < 2], "weight_decay": 0.0}], lr=1e-2, foreach=False)
    x = torch.randn(32, 8)
    for _ in range(3):
        for net, opt in ((model, fused), (reference, plain)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert make_optimizer(torch.nn.Linear(2, 2).to(torch.float64), cfg).defaults["fused"] is True  # any floating dtype


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


def test_conflicting_settings_are_refused_not_silently_ordered(tmp_path):
    """A flag and a --set (or two --set) for one field with different values: refused, naming both. The same value
    twice is no conflict. A value the command implies (train rloo: algo) cannot be contradicted by the file."""
    with pytest.raises(TetherError, match=r"--batch-size 8 and --set batch_size=4 both set batch_size"):
        load_config(TrainConfig, None, ["batch_size=4"], model="m", output_dir=tmp_path, batch_size=8)
    with pytest.raises(TetherError, match=r"--set seed=1 and --set seed=2 both set seed"):
        load_config(TrainConfig, None, ["seed=1", "seed=2"], model="m", output_dir=tmp_path)
    assert load_config(TrainConfig, None, ["batch_size=8"], model="m", output_dir=tmp_path, batch_size=8).batch_size == 8
    from tether.recipes.configs import GRPOConfig

    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("algo: grpo\n")
    with pytest.raises(TetherError, match=r"`tether train rloo` sets algo=rloo, but algo \(in .*c\.yaml\) says grpo"):
        load_config(GRPOConfig, yaml_file, None, implied={"algo": ("rloo", "`tether train rloo`")}, model="m", output_dir=tmp_path, prompts="p", reward=["r"])
    with pytest.raises(TetherError, match=r"--model is missing \(give the option, or `model:` in the --config file\)"):
        load_config(TrainConfig, None, None, output_dir=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# The output folder and resume, through the CLI (tether.recipes.checkpoints.Checkpointer: one place for every trainer)
# ---------------------------------------------------------------------------------------------------------------


def _write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _files(folder):
    """Every file under ``folder`` with its bytes: to show that a refused command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


SFT_ARGS = ("--batch-size", "4", "--max-steps", "3", "--learning-rate", "1e-3", "--set", "progress=false", "--set", "mlflow=false")


@pytest.fixture
def sft_run(cli, tiny_lm_dir, tmp_path):
    """An SFT run of 3 steps with checkpoints after steps 1 and 2, from a copy of the tiny model."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_lm_dir, model)
    data = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"Question {i}?", "completion": "Hello, how can I help?"} for i in range(12)])
    out = tmp_path / "run"
    result = cli("train", "sft", "--model", model, "--data", data, "--output-dir", out, *SFT_ARGS, "--set", "save_steps=1")
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    return model, data, out


def _other_model(tiny_lm_dir, folder):
    """A tiny Llama of another width, on the same tokenizer."""
    from transformers import AutoTokenizer

    from tether.demo.tiny import build_causal_lm

    build_causal_lm(AutoTokenizer.from_pretrained(tiny_lm_dir), folder, hidden_size=48, num_layers=2, num_heads=2)
    return folder


def _retrain_in_place(model, _folder):
    """The same folder, the same architecture, other weights (a model retrained and saved over the old one)."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        lm.model.norm.weight.add_(0.5)
    lm.save_pretrained(model)
    return model


@pytest.mark.parametrize(
    "change, needle",
    [
        ("data", "was trained on other data: --data has digest"),
        ("model", "was trained from another model"),
        ("weights", "changed since the checkpoint"),
        ("learning_rate", "--learning-rate 0.5 (the checkpoint's run: 0.001)"),
        ("schedule", "--lr-schedule 'cosine' (the checkpoint's run: 'linear')"),
        ("max_steps", "--max-steps 5 (the checkpoint's run: 3)"),
        ("command", "is from `tether train sft`, not `tether train dpo`"),
        ("old", "does not say which run it belongs to"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(cli, tiny_lm_dir, tmp_path, sft_run, change, needle):
    """--resume into a folder whose checkpoint is another run's: one line naming the difference, and the old run's
    checkpoints and model stay as they were (before: other data ran "3/2" and kept the old weights; another model
    gave a size-mismatch traceback; a new learning rate was ignored while tether.json recorded it)."""
    import json

    model, data, out = sft_run
    args = ["train", "sft", "--model", model, "--data", data, "--output-dir", out, *SFT_ARGS, "--resume"]
    if change == "data":
        args[args.index("--data") + 1] = _write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"Other {i}?", "completion": "The quick brown fox."} for i in range(12)])
    elif change == "model":
        args[args.index("--model") + 1] = _other_model(tiny_lm_dir, tmp_path / "other-model")
    elif change == "weights":
        _retrain_in_place(model, None)
    elif change == "learning_rate":
        args += ["--set", "learning_rate=0.5"]
        args.remove("--learning-rate"), args.remove("1e-3")
    elif change == "schedule":
        args += ["--set", "lr_schedule=cosine"]
    elif change == "max_steps":
        args[args.index("--max-steps") + 1] = "5"
    elif change == "command":
        pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Hi", "chosen": "Hello, how can I help?", "rejected": "No."}] * 8)
        args = ["train", "dpo", "--model", model, "--data", pairs, "--output-dir", out, *SFT_ARGS, "--resume"]
    elif change == "old":  # a checkpoint written before checkpoints said which run they belong to
        state = out / "checkpoints" / "step-2" / "trainer_state.json"
        state.write_text(json.dumps({"step": 2}))
    before = _files(out)
    result = cli(*args)
    assert result.code == 2, result.stdout + result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: the ") or result.stderr.startswith("error: resume keeps")
    assert len(result.stderr.strip().splitlines()) == 2  # the error and its fix
    assert _files(out) == before


def test_resume_with_the_same_settings_continues_and_drops_metrics_logged_after_the_checkpoint(cli, sft_run):
    """The same run resumes from its last checkpoint (a path spelled differently is the same model; a setting
    that changes only how it runs, like the logging or the progress bar, may change), and the metrics logged after
    that checkpoint are logged again, once."""
    import json
    import os

    model, data, out = sft_run
    relative = os.path.relpath(model)
    result = cli("train", "sft", "--model", relative, "--data", data, "--output-dir", out, *SFT_ARGS, "--resume", "--set", "logging_steps=1")
    assert result.code == 0, result.stderr
    assert f"resumed from {out / 'checkpoints' / 'step-2'} (step 2 of 3)" in result.stdout
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3]  # logging_steps=10 logged only the last step before; it is logged once more, not twice


def test_a_new_run_into_an_earlier_runs_folder_is_refused_unless_overwrite(cli, tiny_lm_dir, tmp_path, sft_run):
    model, data, out = sft_run
    before = _files(out)
    result = cli("train", "sft", "--model", model, "--data", data, "--output-dir", out, *SFT_ARGS)
    assert result.code == 2 and "holds an earlier run (tether.json, checkpoints/" in result.stderr and "--overwrite" in result.stderr
    assert _files(out) == before
    result = cli("train", "sft", "--model", model, "--data", data, "--output-dir", out, *SFT_ARGS, "--resume", "--overwrite")
    assert result.code == 2 and "give one of them" in result.stderr and "Traceback" not in result.stderr
    result = cli("train", "sft", "--model", model, "--data", data, "--output-dir", model, *SFT_ARGS, "--overwrite")
    assert result.code == 2 and "is the --model folder" in result.stderr
    assert (model / "model.safetensors").exists()

    # --overwrite deletes the earlier run (its checkpoints too) and nothing else; a user's file never blocks a run.
    (out / "notes.txt").write_text("mine")
    other = _other_model(tiny_lm_dir, tmp_path / "other-model")
    result = cli("train", "sft", "--model", other, "--data", data, "--output-dir", out, *SFT_ARGS, "--overwrite")
    assert result.code == 0, result.stderr
    assert "--overwrite deleted the earlier run" in result.stdout
    assert not (out / "checkpoints").exists() and (out / "notes.txt").read_text() == "mine"
    import json

    assert json.loads((out / "tether.json").read_text())["base_model"] == str(other)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text("seed: 1\n")
    result = cli("train", "sft", "--config", fresh / "config.yaml", "--model", model, "--data", data, "--output-dir", fresh, *SFT_ARGS)
    assert result.code == 0, result.stderr


def test_resume_without_a_checkpoint(cli, tiny_lm_dir, tmp_path):
    """--resume where there is no checkpoint yet starts at step 0 with a note (a preemptible job passes --resume
    every time); where a finished run left no checkpoint, there is nothing to resume and it says so."""
    data = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"Question {i}?", "completion": "Hello."} for i in range(8)])
    out = tmp_path / "run"
    result = cli("train", "sft", "--model", tiny_lm_dir, "--data", data, "--output-dir", out, *SFT_ARGS, "--resume")
    assert result.code == 0 and "no checkpoint in" in result.stdout and "starting at step 0" in result.stdout
    result = cli("train", "sft", "--model", tiny_lm_dir, "--data", data, "--output-dir", out, *SFT_ARGS, "--resume")
    assert result.code == 2 and "nothing to resume" in result.stderr and "save_steps" in result.stderr


def test_config_file_gives_model_data_and_output_dir(cli, tiny_lm_dir, tmp_path):
    """`tether train fields` lists model, data and output_dir: a --config file can give them (before: "Missing
    option '--model'"); a flag then overrides the file, and a flag and --set for one field are refused."""
    data = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"Question {i}?", "completion": "Hello."} for i in range(8)])
    config = tmp_path / "sft.yaml"
    config.write_text(f"model: {tiny_lm_dir}\ndata: {data}\noutput_dir: {tmp_path / 'from-file'}\nmax_steps: 1\nbatch_size: 4\nprogress: false\nmlflow: false\n")
    result = cli("train", "sft", "--config", config)
    assert result.code == 0, result.stderr
    assert (tmp_path / "from-file" / "tether.json").exists()
    result = cli("train", "sft", "--config", config, "--output-dir", tmp_path / "from-flag")
    assert result.code == 0 and (tmp_path / "from-flag" / "tether.json").exists()
    result = cli("train", "sft", "--config", config, "--output-dir", tmp_path / "x", "--batch-size", "8", "--set", "batch_size=4")
    assert result.code == 2 and "--batch-size 8 and --set batch_size=4 both set batch_size" in result.stderr
    result = cli("train", "sft", "--data", data, "--output-dir", tmp_path / "x")
    assert result.code == 2 and "--model is missing" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["sft", "reward", "dpo", "kto", "ppo", "grpo", "rloo"])
def test_every_trainer_checks_its_output_folder_and_checkpoint(cli, tiny_lm_dir, tmp_path, command):
    """The same rules in every trainer: a new run into an earlier run's folder is refused, and --resume refuses a
    checkpoint it cannot tie to this run; both before any model is loaded, and nothing in the folder changes."""
    import json

    pairs = [{"prompt": f"Question {i}?", "chosen": "Hello, how can I help?", "rejected": "No."} for i in range(8)]
    if command == "sft":
        inputs = ["--data", _write_jsonl(tmp_path / "d.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs])]
    elif command == "kto":
        inputs = ["--data", _write_jsonl(tmp_path / "d.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"], "label": i % 2 == 0} for i, r in enumerate(pairs)])]
    elif command in ("reward", "dpo"):
        inputs = ["--data", _write_jsonl(tmp_path / "d.jsonl", pairs)]
    else:
        (tmp_path / "rules.yaml").write_text('rules:\n  - name: has_e\n    required: ["e"]\n')
        inputs = ["--prompts", _write_jsonl(tmp_path / "d.jsonl", [{"prompt": r["prompt"]} for r in pairs]), "--reward", f"rules:{tmp_path / 'rules.yaml'}"]
    out = tmp_path / "run"
    (out / "checkpoints" / "step-1").mkdir(parents=True)
    (out / "checkpoints" / "step-1" / "trainer_state.json").write_text(json.dumps({"step": 1}))
    (out / "tether.json").write_text("{}")
    before = _files(out)
    args = ["train", command, "--model", tiny_lm_dir, *inputs, "--output-dir", out, "--batch-size", "4", "--max-steps", "2"]
    if command in ("grpo", "rloo"):
        args += ["--group-size", "2"]
    result = cli(*args)
    assert result.code == 2 and "holds an earlier run (tether.json, checkpoints/)" in result.stderr, result.stderr
    result = cli(*args, "--resume")
    assert result.code == 2 and "does not say which run it belongs to" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and _files(out) == before


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
           "--resume", "--set", "mlflow=false"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), done.stdout
    assert any(line.startswith("note: skipped 1 of 9") for line in lines), done.stdout
    assert any(line.startswith("note: no checkpoint") for line in lines) and any(line.startswith("done: ") for line in lines)
    assert done.stderr.count("Loading weights: 100%") == 1, done.stderr[-3000:]
