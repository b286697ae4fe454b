"""SFT: completion-only log-probs (padded and packed), the chat template, memorization, outputs, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tether.models.hf import load_tokenizer
from tether.models.logprobs import TokenLogProbs, collate_completions, sequence_logps
from tether.recipes.configs import SFTConfig
from tether.recipes.sft import encode_sft_rows, train_sft


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def _config(tiny_lm_dir: Path, data: Path, out: Path, **kw) -> SFTConfig:
    base = dict(model=str(tiny_lm_dir), data=str(data), output_dir=out, batch_size=4, mlflow=False, progress=False, logging_steps=1)
    return SFTConfig(**{**base, **kw})


def _reference_logps(model, examples):
    """Each example alone, full logits, the lead's sequence_logps: the straightforward way."""
    out = []
    for prompt, completion in examples:
        ids = torch.tensor([prompt + completion])
        mask = torch.tensor([[0] * len(prompt) + [1] * len(completion)])
        out.append(sequence_logps(model(input_ids=ids).logits, ids, mask)[0])
    return torch.stack(out)


@pytest.mark.parametrize("pack", [False, True])
def test_scored_positions_give_the_log_probs_of_separate_sequences(tiny_lm_dir, pack):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    examples = [([1, 5, 9, 12], [20, 21, 2]), ([1, 7], [30, 31, 32, 33, 2]), ([1, 8, 8, 8, 8, 8], [40, 2])]
    batch = collate_completions(examples, pad_id=0, pack_to=16 if pack else None)
    if pack:
        assert batch.input_ids.shape[0] < len(examples)  # really packed
    with torch.no_grad():
        got = batch.sequence_logps(TokenLogProbs(model)(**batch.model_inputs("cpu")))
        want = _reference_logps(model, examples)
    assert torch.allclose(got, want, atol=1e-5)
    assert batch.lengths.tolist() == [3, 5, 2]


def test_conversations_go_through_the_chat_template_and_only_the_answer_is_scored(tiny_lm_dir):
    tokenizer = load_tokenizer(tiny_lm_dir)
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hello, how can I help you today?"}]
    (prompt, completion), = encode_sft_rows(tokenizer, [{"messages": messages}], max_length=512)[0]
    assert tokenizer.decode(prompt) == "<|user|>\nhello\n<|assistant|>\n"
    assert tokenizer.decode(completion).startswith("Hello, how can I help you today?</s>")
    # plain-text rows on a chat model: the prompt goes in as a user turn, the completion as the assistant's
    (prompt, completion), = encode_sft_rows(tokenizer, [{"prompt": "Q: hi", "completion": "Hello"}], 512)[0]
    assert tokenizer.decode(prompt) == "<|user|>\nQ: hi\n<|assistant|>\n"
    assert tokenizer.decode(completion).startswith("Hello</s>")
    # chat_template=false: the prompt as it is, the completion followed by EOS
    tokenizer = load_tokenizer(tiny_lm_dir, chat_template=False)
    (prompt, completion), = encode_sft_rows(tokenizer, [{"prompt": "Q: hi\nA:", "completion": " Hello"}], 512)[0]
    assert tokenizer.decode(prompt) == "Q: hi\nA:" and completion[-1] == tokenizer.eos_token_id


def test_truncation_keeps_the_prompt_end_and_drops_completions_that_cannot_fit(tiny_lm_dir):
    tokenizer = load_tokenizer(tiny_lm_dir, chat_template=False)
    rows = [{"prompt": "one two three four five six seven eight", "completion": " ok"}, {"prompt": "a", "completion": " x" * 40}]
    examples, kept = encode_sft_rows(tokenizer, rows, max_length=8)
    assert kept == [0]
    prompt, completion = examples[0]
    full = tokenizer("one two three four five six seven eight")["input_ids"]
    assert len(prompt) + len(completion) == 8 and prompt == full[-len(prompt):]


def test_sft_memorizes_a_completion_and_writes_a_loadable_model(tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    data = _write(tmp_path / "sft.jsonl", [{"prompt": "Q: where is my order?\nA:", "completion": " Your order has shipped."}] * 4)
    cfg = _config(tiny_lm_dir, data, tmp_path / "out", max_steps=60, learning_rate=1e-2, lr_schedule="constant")
    metrics = train_sft(cfg).metrics
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["train/loss"] > 3.0 and metrics["train/loss"] < 0.05
    # the saved folder is an ordinary HF model that scores the completion almost surely
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokenizer = load_tokenizer(tmp_path / "out")
    (example,), _ = encode_sft_rows(tokenizer, [{"prompt": "Q: where is my order?\nA:", "completion": " Your order has shipped."}], 512)
    with torch.no_grad():
        nll = -_reference_logps(model, [example])[0] / len(example[1])
    assert nll < 0.05
    meta = json.loads((tmp_path / "out" / "tether.json").read_text())
    assert meta["kind"] == "sft" and meta["base_model"] == str(tiny_lm_dir) and len(meta["data_digest"]) == 64
    assert meta["config"]["learning_rate"] == 1e-2 and meta["metrics"]["train/loss"] == pytest.approx(metrics["train/loss"])


def test_packing_gives_the_loss_of_padding(tiny_lm_dir, tmp_path):
    rows = [{"prompt": "Q: " + "word " * n, "completion": " answer" * (1 + n % 3)} for n in range(8)]
    data = _write(tmp_path / "sft.jsonl", rows)
    losses = []
    for pack in (False, True):
        cfg = _config(tiny_lm_dir, data, tmp_path / f"out-{pack}", max_steps=2, batch_size=8, packing=pack, max_length=64)
        train_sft(cfg)
        losses.append([json.loads(x)["train/loss"] for x in (tmp_path / f"out-{pack}" / "metrics.jsonl").read_text().splitlines()])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_lora_saves_an_adapter_or_merged_weights(tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    data = _write(tmp_path / "sft.jsonl", [{"prompt": "Q:", "completion": " yes"}] * 4)
    train_sft(_config(tiny_lm_dir, data, tmp_path / "adapter", max_steps=2, lora_r=4))
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert hasattr(AutoModelForCausalLM.from_pretrained(tmp_path / "adapter"), "peft_config")  # loads base + adapter
    train_sft(_config(tiny_lm_dir, data, tmp_path / "merged", max_steps=2, lora_r=4, merge=True, learning_rate=1e-2))
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    names = [n for n, _ in base.named_parameters() if "q_proj" in n]
    assert names and not torch.equal(dict(merged.named_parameters())[names[0]], dict(base.named_parameters())[names[0]])


def test_lora_training_shows_no_deprecation_warning_of_a_library(tiny_lm_dir, tmp_path):
    """peft reads transformers' deprecated ``is_gradient_checkpointing``: a FutureWarning about code that is not the
    user's, printed in every LoRA run until it was silenced around the wrapping."""
    import warnings

    data = _write(tmp_path / "sft.jsonl", [{"prompt": "Q:", "completion": " yes"}] * 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_sft(_config(tiny_lm_dir, data, tmp_path / "adapter", max_steps=1, lora_r=4))
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert [str(w.message) for w in caught if "checkpointing" in str(w.message)] == []


def test_gradient_checkpointing_is_on_without_a_deprecation_warning(tiny_lm_dir):
    """``--gradient-checkpointing`` called transformers' deprecated ``gradient_checkpointing_enable``: a FutureWarning
    in every such run."""
    import warnings

    from tether.models.hf import load_causal_lm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_causal_lm(tiny_lm_dir, gradient_checkpointing=True)
    assert [str(w.message) for w in caught if "checkpointing" in str(w.message)] == []
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # it is on
    assert model.config.use_cache is False


def test_cli_sft_runs_and_refuses_bad_input(cli, tiny_lm_dir, tmp_path):
    data = _write(tmp_path / "sft.jsonl", [{"prompt": "Q:", "completion": " yes"}] * 4)
    ok = cli("train", "sft", "--model", tiny_lm_dir, "--data", data, "--output-dir", tmp_path / "o", "--max-steps", "1", "--batch-size", "2", "--set", "mlflow=false")
    assert ok.code == 0 and "done:" in ok.stdout
    for args, needle in [
        (["--data", tmp_path / "missing.jsonl"], "not found"),
        (["--data", data, "--batch-size", "0"], "--batch-size"),
        (["--data", data, "--learning-rate", "5"], "--learning-rate"),
        (["--data", data, "--set", "packing=maybe"], "--set packing=maybe"),
        (["--data", _write(tmp_path / "bad.jsonl", [{"text": "no prompt"}])], "record 1"),
    ]:
        res = cli("train", "sft", "--model", tiny_lm_dir, "--output-dir", tmp_path / "o2", *map(str, args))
        assert res.code != 0 and needle in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    res = cli("train", "sft", "--model", tmp_path / "nomodel", "--data", data, "--output-dir", tmp_path / "o3")
    assert res.code != 0 and "not found" in res.stderr and "Traceback" not in res.stderr
