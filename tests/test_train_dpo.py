"""DPO / IPO / cDPO / KTO loops on a tiny model: the shared-prompt pass, the reference cache, learning a synthetic
preference, resume, LoRA, two processes, CLI errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tether.models.hf import load_tokenizer
from tether.models.logprobs import collate_pairs, score_pairs, sequence_logps
from tether.recipes.configs import DPOConfig, KTOConfig
from tether.recipes.dpo import TokenLogProbs, encode_pairs, train_dpo
from tether.recipes.kto import train_kto

WORDS = "apple river stone cloud green quick lazy order ship account page help support data reset".split()


def _pairs(n: int, seed: int) -> list[dict]:
    """A learnable preference: the same answer body, ending 'thank you' (chosen) or 'go away' (rejected)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "Q: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + "\nA:"
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        rows.append({"prompt": prompt, "chosen": f" {body} thank you", "rejected": f" {body} go away"})
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _config(tiny_lm_dir: Path, tmp_path: Path, data: Path, name: str, **kw) -> DPOConfig:
    base = dict(
        model=str(tiny_lm_dir), data=str(data), output_dir=tmp_path / name, batch_size=8, learning_rate=1e-3,
        mlflow=False, progress=False, logging_steps=1, ref_cache_dir=tmp_path / "cache",
    )
    return DPOConfig(**{**base, **kw})


def _pair_logps(model, triples):
    """(B, 2) log-probs from separate prompt+answer sequences and full logits (the straightforward way)."""
    out = []
    for prompt, *answers in triples:
        row = []
        for answer in answers:
            ids = torch.tensor([prompt + answer])
            mask = torch.tensor([[0] * len(prompt) + [1] * len(answer)])
            row.append(sequence_logps(model(input_ids=ids).logits, ids, mask)[0])
        out.append(torch.stack(row))
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_row_per_pair_gives_the_log_probs_of_separate_sequences(tmp_path, arch):
    from tether.demo.tiny import build_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(["hello world"] * 4, vocab_size=300)
    model = build_causal_lm(tokenizer, arch=arch, hidden_size=32, num_layers=2, num_heads=2).eval()
    triples = [([1, 5, 9], [20, 21, 2], [30, 2]), ([1, 7, 7, 7, 7], [40, 2], [41, 42, 43, 44, 2])]
    with torch.no_grad():
        got = score_pairs(TokenLogProbs(model), triples, pad_id=0, device="cpu")
        want = _pair_logps(model, triples)
    assert torch.allclose(got, want, atol=1e-5)
    mask = collate_pairs(triples, 0).attention_mask[0, 0]
    assert not mask[3 + 3, 3 : 3 + 3].any() and mask[3 + 3, :3].all()  # rejected sees the prompt, not chosen


def test_truncation_cuts_the_shared_prompt_start_only(tiny_lm_dir):
    tokenizer = load_tokenizer(tiny_lm_dir, chat_template=False)
    rows = [{"prompt": "one two three four five six seven eight nine", "chosen": " yes", "rejected": " no no"}]
    (prompt, chosen, rejected), = encode_pairs(tokenizer, rows, max_length=8)[0]
    full = tokenizer(rows[0]["prompt"])["input_ids"]
    assert prompt == full[-len(prompt):] and len(prompt) + max(len(chosen), len(rejected)) == 8
    assert encode_pairs(tokenizer, [{"prompt": "a", "chosen": " x" * 30, "rejected": " y"}], 8) == ([], [])


def test_cached_reference_gives_exactly_the_loss_of_on_the_fly(tiny_lm_dir, tmp_path, capsys):
    data = _write(tmp_path / "pairs.jsonl", _pairs(12, seed=1))
    # micro batch 1 everywhere: the same row shapes in the cached pass and in training, so bitwise equality holds
    kw = dict(max_steps=3, batch_size=4, micro_batch_size=1, ref_batch_size=1)
    train_dpo(_config(tiny_lm_dir, tmp_path, data, "cached", **kw))
    assert "cached in" in capsys.readouterr().out
    train_dpo(_config(tiny_lm_dir, tmp_path, data, "cached-again", **kw))
    assert "reference log-probs: cached" in capsys.readouterr().out
    train_dpo(_config(tiny_lm_dir, tmp_path, data, "online", precompute_ref=False, **kw))
    cached, again, online = (_history(tmp_path / n) for n in ("cached", "cached-again", "online"))
    assert [h["train/loss"] for h in cached] == [h["train/loss"] for h in online] == [h["train/loss"] for h in again]
    assert [h["rewards/margins"] for h in cached] == [h["rewards/margins"] for h in online]
    # a different max_length is a different cache entry
    train_dpo(_config(tiny_lm_dir, tmp_path, data, "other", max_length=32, **kw))
    assert "cached in" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("pairs-*.pt"))) == 2


def _heldout_accuracy(policy_dir: Path, ref_dir: Path, rows: list[dict]) -> tuple[float, float, float]:
    """Implicit-reward accuracy on held-out pairs, and the mean (chosen - rejected) log-prob gap of policy and ref."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(ref_dir)
    triples, _ = encode_pairs(tokenizer, rows, 512)
    with torch.no_grad():
        pol = score_pairs(TokenLogProbs(AutoModelForCausalLM.from_pretrained(policy_dir).eval()), triples, tokenizer.pad_token_id, "cpu")
        ref = score_pairs(TokenLogProbs(AutoModelForCausalLM.from_pretrained(ref_dir).eval()), triples, tokenizer.pad_token_id, "cpu")
    margins = (pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1])
    return (margins > 0).float().mean().item(), (pol[:, 0] - pol[:, 1]).mean().item(), (ref[:, 0] - ref[:, 1]).mean().item()


@pytest.mark.parametrize("loss", ["dpo", "ipo", "cdpo"])
def test_learns_a_synthetic_preference_that_generalizes(tiny_lm_dir, tmp_path, loss):
    data = _write(tmp_path / "pairs.jsonl", _pairs(64, seed=1))
    extra = {"label_smoothing": 0.1} if loss == "cdpo" else {}
    metrics = train_dpo(_config(tiny_lm_dir, tmp_path, data, loss, loss=loss, epochs=3, **extra)).metrics
    accuracy, policy_gap, ref_gap = _heldout_accuracy(tmp_path / loss, tiny_lm_dir, _pairs(32, seed=2))
    assert accuracy >= 0.9
    assert policy_gap > ref_gap + 1.0  # the chosen answer's log-prob rose relative to the rejected one
    assert metrics["rewards/accuracies"] >= 0.9 and metrics["rewards/margins"] > 0
    assert {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "train/loss"} <= set(metrics)
    meta = json.loads((tmp_path / loss / "tether.json").read_text())
    assert meta["kind"] == loss and meta["config"]["loss"] == loss and "rewards/accuracies" in meta["metrics"]


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    data = _write(tmp_path / "pairs.jsonl", _pairs(16, seed=3))
    kw = dict(max_steps=4, batch_size=4, micro_batch_size=2, save_steps=2, warmup_ratio=0.25)
    train_dpo(_config(tiny_lm_dir, tmp_path, data, "full", **kw))
    def preempt(step: int, _stats: dict) -> None:
        if step == 2:
            raise KeyboardInterrupt  # preempted after step 2 (its checkpoint written)

    with pytest.raises(KeyboardInterrupt):
        train_dpo(_config(tiny_lm_dir, tmp_path, data, "resumed", **kw), on_step=preempt)
    assert (tmp_path / "resumed" / "checkpoints" / "step-2").is_dir() and not (tmp_path / "resumed" / "tether.json").exists()
    train_dpo(_config(tiny_lm_dir, tmp_path, data, "resumed", resume=True, **kw))
    full, resumed = _history(tmp_path / "full"), _history(tmp_path / "resumed")
    assert [h["step"] for h in resumed] == [1, 2, 3, 4]  # steps 1-2 before the preemption, 3-4 after the resume
    assert [h["train/loss"] for h in full] == pytest.approx([h["train/loss"] for h in resumed], abs=1e-6)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "full").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "resumed").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_lora_reference_is_the_policy_with_its_adapter_disabled(tiny_lm_dir, tmp_path):
    data = _write(tmp_path / "pairs.jsonl", _pairs(16, seed=4))
    kw = dict(max_steps=3, batch_size=4, micro_batch_size=1, ref_batch_size=1, lora_r=4, learning_rate=5e-3)
    train_dpo(_config(tiny_lm_dir, tmp_path, data, "lora-cached", **kw))
    train_dpo(_config(tiny_lm_dir, tmp_path, data, "lora-online", precompute_ref=False, **kw))
    cached, online = _history(tmp_path / "lora-cached"), _history(tmp_path / "lora-online")
    assert [h["train/loss"] for h in cached] == [h["train/loss"] for h in online]
    assert cached[0]["train/loss"] == pytest.approx(0.6931472, abs=1e-6)  # LoRA starts at the reference: log 2
    assert (tmp_path / "lora-cached" / "adapter_config.json").exists()


def test_kto_learns_from_unpaired_thumbs(tiny_lm_dir, tmp_path):
    rows = []
    for i, pair in enumerate(_pairs(64, seed=5)):
        good = i % 2 == 0
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"] if good else pair["rejected"], "label": good})
    data = _write(tmp_path / "thumbs.jsonl", rows)
    cfg = KTOConfig(
        model=str(tiny_lm_dir), data=str(data), output_dir=tmp_path / "kto", batch_size=8, learning_rate=1e-3, epochs=3,
        mlflow=False, progress=False, logging_steps=1, ref_cache_dir=tmp_path / "cache", undesirable_weight=1.2,
    )
    metrics = train_kto(cfg).metrics
    first = _history(tmp_path / "kto")[0]
    assert metrics["rewards/chosen"] > 0 > metrics["rewards/rejected"]
    assert metrics["train/loss"] < first["train/loss"] and metrics["objective/kl"] >= 0
    accuracy, policy_gap, ref_gap = _heldout_accuracy(tmp_path / "kto", tiny_lm_dir, _pairs(32, seed=6))
    assert accuracy >= 0.9 and policy_gap > ref_gap


def test_cli_dpo_refuses_bad_input_clearly(cli, tiny_lm_dir, tmp_path):
    data = _write(tmp_path / "pairs.jsonl", _pairs(4, seed=0))
    base = ["train", "dpo", "--model", str(tiny_lm_dir), "--output-dir", str(tmp_path / "o"), "--set", "mlflow=false"]
    for args, needle in [
        (["--data", str(data), "--loss", "xpo"], "--loss"),
        (["--data", str(data), "--loss", "cdpo"], "label_smoothing"),
        (["--data", str(data), "--label-smoothing", "0.2"], "cdpo"),
        (["--data", str(data), "--beta", "-1"], "--beta"),
        (["--data", str(data), "--max-length", "4"], "--max-length"),
        (["--data", str(data), "--set", "bogus=1"], "bogus"),
        (["--data", str(_write(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}]))], "record 1"),
    ]:
        res = cli(*base, *args)
        assert res.code != 0 and needle in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    res = cli("train", "kto", "--model", str(tiny_lm_dir), "--data", str(tmp_path / "sft.jsonl"), "--output-dir", str(tmp_path / "k"))
    assert res.code != 0 and "label" in res.stderr and "Traceback" not in res.stderr  # neither unpaired rows nor pairs
    ok = cli(*base, "--data", str(data), "--max-steps", "1", "--batch-size", "2", "--set", f"ref_cache_dir={tmp_path / 'c'}")
    assert ok.code == 0 and "rewards/accuracies" in ok.stdout


_TWO_PROCESS_SCRIPT = """
import sys
from tether.recipes.configs import DPOConfig
from tether.recipes.dpo import train_dpo
cfg = DPOConfig(model=sys.argv[1], data=sys.argv[2], output_dir=sys.argv[3], max_steps=3, batch_size=8,
                micro_batch_size=int(sys.argv[4]), learning_rate=1e-3, logging_steps=1, mlflow=False, progress=False,
                ref_cache_dir=sys.argv[3] + "-cache")
train_dpo(cfg)
import torch.distributed as dist
print("world", dist.get_world_size() if dist.is_initialized() else 1)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two process start-ups with torch imports: ~45 s on the shared 2-core machine
def test_two_processes_match_one_process_with_the_same_global_batch(tiny_lm_dir, tmp_path):
    data = _write(tmp_path / "pairs.jsonl", _pairs(24, seed=7))
    script = tmp_path / "run.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    one = [sys.executable, str(script), str(tiny_lm_dir), str(data), str(tmp_path / "one"), "4"]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), str(tiny_lm_dir), str(data), str(tmp_path / "two"), "2"]
    for cmd, world in ((one, 1), (two, 2)):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"world {world}" in res.stdout
    a, b = _history(tmp_path / "one"), _history(tmp_path / "two")
    for key in ("train/loss", "rewards/margins", "logps/chosen"):
        assert [h[key] for h in a] == pytest.approx([h[key] for h in b], rel=1e-4, abs=1e-5), key


def test_bf16_flag_runs_the_same_loop_in_mixed_precision(tiny_lm_dir, tmp_path):
    from accelerate.state import AcceleratorState

    data = _write(tmp_path / "pairs.jsonl", _pairs(8, seed=8))
    # Accelerate keeps the precision in a process-wide singleton: reset it around this test (not the process group).
    AcceleratorState._reset_state(reset_partial_state=False)
    try:
        metrics = train_dpo(_config(tiny_lm_dir, tmp_path, data, "bf16", max_steps=2, batch_size=4, bf16=True)).metrics
    finally:
        AcceleratorState._reset_state(reset_partial_state=False)
    assert 0.0 < metrics["train/loss"] < 2.0
    meta = json.loads((tmp_path / "bf16" / "tether.json").read_text())
    assert meta["config"]["bf16"] is True
