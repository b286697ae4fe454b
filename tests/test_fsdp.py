"""FSDP2 on 2 CPU processes (gloo) through `accelerate launch --use_fsdp`: the losses of one process, the saved
weights of one process, checkpoints that resume to the same numbers, every message once. SFT with full weights,
DPO with LoRA, the reward model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FSDP = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_state_dict_type", "SHARDED_STATE_DICT"]


def _launch(*args: str) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    cmd = [str(accelerate), "launch", *FSDP, "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "0", "-m", "tether", *map(str, args),
           "--set", "mlflow=false", "--set", "progress=false", "--set", "logging_steps=1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), done.stdout  # every message once
    return done


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.mark.slow  # process start-ups with torch imports: about a minute on the shared 2-core machine
def test_sft_on_two_fsdp_processes_matches_one_and_resumes(tiny_lm_dir, tmp_path):
    from tether.recipes.configs import SFTConfig
    from tether.recipes.sft import train_sft

    rows = [{"prompt": f"Question {i}? " + "word " * (i % 5), "completion": "Hello, how can I help?" + " yes" * (i % 3)} for i in range(16)]
    data = _write(tmp_path / "sft.jsonl", rows)
    common = dict(batch_size=4, max_steps=4, max_length=64, learning_rate=1e-3)
    train_sft(SFTConfig(model=str(tiny_lm_dir), data=str(data), output_dir=tmp_path / "one", mlflow=False, progress=False, logging_steps=1, **common))
    flags = ["--batch-size", "4", "--max-steps", "4", "--max-length", "64", "--learning-rate", "1e-3"]
    done = _launch("train", "sft", "--model", tiny_lm_dir, "--data", data, "--output-dir", tmp_path / "two", *flags, "--set", "save_steps=2")
    assert "done:" in done.stdout
    one, two = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert [h["train/loss"] for h in two] == pytest.approx([h["train/loss"] for h in one], rel=1e-4, abs=1e-5)
    assert [h["train/grad_norm"] for h in two] == pytest.approx([h["train/grad_norm"] for h in one], rel=1e-3)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for name in a:  # whole weights were saved, not one process's shard
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4)
    # The sharded checkpoint at step 2 resumes to the same steps 3 and 4.
    assert (tmp_path / "two" / "checkpoints" / "step-2" / "pytorch_model_fsdp_0").is_dir()
    resumed = _launch("train", "sft", "--model", tiny_lm_dir, "--data", data, "--output-dir", tmp_path / "two", *flags, "--resume", "--set", "save_steps=2")
    assert "resumed from" in resumed.stdout
    again = _history(tmp_path / "two")
    assert [h["step"] for h in again] == [1, 2, 3, 4]
    assert [h["train/loss"] for h in again] == pytest.approx([h["train/loss"] for h in two], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_dpo_with_lora_on_two_fsdp_processes_matches_one(tiny_lm_dir, tmp_path):
    from tether.recipes.configs import DPOConfig
    from tether.recipes.dpo import train_dpo

    rows = [{"prompt": f"Q: item {i} " + "word " * (i % 4) + "\nA:", "chosen": " thank you" + " yes" * (i % 2), "rejected": " go away"} for i in range(16)]
    data = _write(tmp_path / "pairs.jsonl", rows)
    common = dict(batch_size=4, max_steps=3, max_length=64, learning_rate=1e-2, lora_r=4)
    train_dpo(DPOConfig(model=str(tiny_lm_dir), data=str(data), output_dir=tmp_path / "one", mlflow=False, progress=False, logging_steps=1,
                        ref_cache_dir=tmp_path / "cache1", lm_head_chunk=8, **common))
    _launch("train", "dpo", "--model", tiny_lm_dir, "--data", data, "--output-dir", tmp_path / "two", "--batch-size", "4", "--max-steps", "3",
            "--max-length", "64", "--learning-rate", "1e-2", "--lora-r", "4", "--set", f"ref_cache_dir={tmp_path / 'cache2'}", "--set", "lm_head_chunk=8")
    one, two = _history(tmp_path / "one"), _history(tmp_path / "two")
    for key in ("train/loss", "rewards/margins", "logps/chosen"):
        assert [h[key] for h in two] == pytest.approx([h[key] for h in one], rel=1e-4, abs=1e-5), key
    assert one[0]["train/loss"] != one[-1]["train/loss"]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")  # the adapters
    assert a.keys() == b.keys() and any("lora_A" in k for k in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "row-weights"])
def test_reward_model_on_two_fsdp_processes_matches_one(tiny_lm_dir, tmp_path, weighted):
    """With row weights (a --votes reliability snapshot) each process's share of a batch carries other weights than
    the other's: the averaged gradient must still be the global batch's weighted mean, as on one process."""
    from tether.recipes.configs import RewardConfig
    from tether.recipes.reward import train_reward

    rows = [{"prompt": f"Q: item {i} " + "word " * (i % 4) + "\nA:", "chosen": " thank you" + " yes" * (i % 2), "rejected": " go away" + " no" * (i % 3)} for i in range(41)]
    if weighted:
        rows = [{**row, "weight": [0.05, 1.0, 0.3, 2.5, 0.0][i % 5]} for i, row in enumerate(rows)]
    data = _write(tmp_path / "pairs.jsonl", rows)
    settings = {"max_steps": 4, "batch_size": 8, "learning_rate": 3e-3, "eval_fraction": 0.1, "lora_r": 4}
    train_reward(RewardConfig(model=str(tiny_lm_dir), data=str(data), output_dir=tmp_path / "one", mlflow=False, progress=False, logging_steps=1, **settings))
    done = _launch("train", "reward", "--model", tiny_lm_dir, "--data", data, "--output-dir", tmp_path / "two", *[x for k, v in settings.items() for x in ("--set", f"{k}={v}")])
    assert "saved reward model" in done.stdout
    one, two = _history(tmp_path / "one"), _history(tmp_path / "two")
    losses = [[h["train/loss"] for h in history if "train/loss" in h] for history in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")  # LoRA merged into plain weights on both sides
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4)
    meta = [json.loads((tmp_path / d / "tether.json").read_text()) for d in ("one", "two")]
    assert [m["reward"]["row_weights"] is not None for m in meta] == [weighted, weighted]  # read on both sides
    norm = [m["reward"]["normalization"] for m in meta]
    assert norm[1]["n"] == norm[0]["n"] and norm[1]["mean"] == pytest.approx(norm[0]["mean"], abs=1e-4)
    assert meta[1]["metrics"]["eval/accuracy"] == pytest.approx(meta[0]["metrics"]["eval/accuracy"])


@pytest.mark.slow
def test_reward_model_with_a_validation_split_resumes_on_two_fsdp_processes(tiny_lm_dir, tmp_path):
    """The checkpoint selection's best weights are each process's shards: every process saves and restores its own
    (selection-RANK.pt), so a run resumed from step 2 keeps what the uninterrupted run keeps."""
    rows = [{"prompt": f"Q: item {i} " + "word " * (i % 4) + "\nA:", "chosen": " thank you" + " yes" * (i % 2), "rejected": " go away" + " no" * (i % 3)} for i in range(60)]
    data = _write(tmp_path / "pairs.jsonl", rows)
    settings = {"max_steps": 4, "batch_size": 8, "learning_rate": 3e-3, "validation_fraction": 0.2, "validation_steps": 1, "save_steps": 2}
    flags = [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]
    _launch("train", "reward", "--model", tiny_lm_dir, "--data", data, "--output-dir", tmp_path / "run", *flags)
    assert {p.name for p in (tmp_path / "run" / "checkpoints" / "step-2").glob("selection-*.pt")} == {"selection-0.pt", "selection-1.pt"}
    straight = json.loads((tmp_path / "run" / "tether.json").read_text())["reward"]["selection"]
    weights = _weights(tmp_path / "run")
    resumed = _launch("train", "reward", "--model", tiny_lm_dir, "--data", data, "--output-dir", tmp_path / "run", *flags, "--resume")
    assert "resumed at step 2 with the 2 validation evaluations so far" in resumed.stdout
    kept = json.loads((tmp_path / "run" / "tether.json").read_text())["reward"]["selection"]
    # the same decisions exactly; the losses to float32 rounding (a fresh process may take other CPU kernels: 6e-8
    # relative seen at step 4 on an Intel Xeon), as the weights below are compared
    assert {k: v for k, v in kept.items() if k != "evaluations"} == {k: v for k, v in straight.items() if k != "evaluations"}
    assert [(e["step"], e["accuracy"]) for e in kept["evaluations"]] == [(e["step"], e["accuracy"]) for e in straight["evaluations"]]
    assert [e["loss"] for e in kept["evaluations"]] == pytest.approx([e["loss"] for e in straight["evaluations"]], rel=1e-5)
    for name, tensor in _weights(tmp_path / "run").items():
        torch.testing.assert_close(tensor, weights[name], rtol=1e-5, atol=1e-6)
