"""The fast log-prob paths equal the plain ones: the LM head in chunks (``linear_token_logps``: the (N, V) logits
never held at once) and packed pairs (DPO's rows of several pairs, no padding): values and gradients, then whole
SFT, DPO and KTO runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tether.models.logprobs import TokenLogProbs, collate_pairs, linear_token_logps, score_pairs


def _plain(hidden, weight, bias, targets, temperature=1.0):
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature
    return logits.log_softmax(-1).gather(1, targets.unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_head_gives_the_values_and_gradients_of_the_plain_one(chunk, with_bias):
    torch.manual_seed(0)
    N, H, V = 23, 16, 50
    hidden = torch.randn(N, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    bias = torch.randn(V, requires_grad=True) if with_bias else None
    targets = torch.randint(0, V, (N,))
    upstream = torch.randn(N)  # an arbitrary downstream loss: sum(upstream * logps)
    inputs = [hidden, weight] + ([bias] if with_bias else [])
    for temperature in (1.0, 0.7):
        want = _plain(hidden, weight, bias, targets, temperature)
        want_grads = torch.autograd.grad((want * upstream).sum(), inputs)
        got = linear_token_logps(hidden, weight, bias, targets, chunk, temperature)
        got_grads = torch.autograd.grad((got * upstream).sum(), inputs)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_chunked_head_frozen_weight_and_no_grad():
    """LoRA leaves the head frozen: only the hidden states get a gradient (no recomputation in backward). Under
    no_grad (reference log-probs) the values alone."""
    torch.manual_seed(1)
    hidden = torch.randn(9, 8, requires_grad=True)
    weight = torch.randn(40, 8)
    targets = torch.randint(0, 40, (9,))
    want = _plain(hidden, weight, None, targets)
    (want_grad,) = torch.autograd.grad(want.sum(), [hidden])
    got = linear_token_logps(hidden, weight, None, targets, 4)
    (got_grad,) = torch.autograd.grad(got.sum(), [hidden])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(linear_token_logps(hidden, weight, None, targets, 2), want.detach(), rtol=1e-6, atol=1e-6)


def _tiny(arch: str = "llama"):
    from tether.demo.tiny import build_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(["hello world, how are you"] * 4, vocab_size=300)
    return build_causal_lm(tokenizer, arch=arch, hidden_size=32, num_layers=2, num_heads=2)


TRIPLES = [([1, 5, 9], [20, 21, 2], [30, 2]), ([1, 7, 7, 7, 7], [40, 2], [41, 42, 43, 44, 2]), ([1, 8], [50, 51, 52, 2], [60, 2]), ([1, 9, 9, 9], [70, 2], [71, 2])]


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(got, want, rtol=1e-4, atol=1e-6):
    assert got.keys() == want.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("lora", [False, True])
def test_token_log_probs_in_chunks_equal_the_plain_head_on_a_model(lora):
    model = _tiny()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.eval()
    weights = torch.tensor([1.0, -0.5, 2.0, 0.3])  # a loss that weighs the pairs differently
    plain = score_pairs(TokenLogProbs(model), TRIPLES, pad_id=0, device="cpu")
    want = _grads(model, (plain.sum(1) * weights).sum())
    chunked = score_pairs(TokenLogProbs(model, chunk_tokens=5), TRIPLES, pad_id=0, device="cpu")
    got = _grads(model, (chunked.sum(1) * weights).sum())
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-5)
    _assert_same(got, want)
    if not lora:  # full fine-tuning: the head's (tied embedding's) gradient came through the chunked backward too
        assert any("embed" in n or "lm_head" in n for n in got)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_pairs_give_the_log_probs_and_gradients_of_one_row_per_pair(arch):
    model = _tiny(arch).eval()
    padded = score_pairs(TokenLogProbs(model), TRIPLES, pad_id=0, device="cpu")
    want = _grads(model, padded[:, 0].sum() - 2 * padded[:, 1].sum())
    batch = collate_pairs(TRIPLES, 0, pack_to=24)
    assert batch.input_ids.shape[0] < len(TRIPLES)  # really packed
    assert batch.input_ids.numel() < collate_pairs(TRIPLES, 0).input_ids.numel()  # fewer tokens: no padding
    packed = score_pairs(TokenLogProbs(model, chunk_tokens=3), TRIPLES, pad_id=0, device="cpu", pack_to=24)
    got = _grads(model, packed[:, 0].sum() - 2 * packed[:, 1].sum())
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    _assert_same(got, want)
    from tether.data.batching import packed_branch_rows

    _, _, mask, places = packed_branch_rows(TRIPLES, 0, 24)
    spans = [(r, c, c + sum(map(len, t))) for (r, c), t in zip(places, TRIPLES)]
    shared = [(a, b) for a in spans for b in spans if a != b and a[0] == b[0]]
    assert shared  # two pairs share a row, and neither sees the other
    for (row, a0, a1), (_, b0, b1) in shared:
        assert not mask[row, 0, a0:a1, b0:b1].any()


# ---------------------------------------------------------------------------------------------------------------
# Whole runs: the same losses with the chunked head and packing on as off
# ---------------------------------------------------------------------------------------------------------------

WORDS = "apple river stone cloud green quick lazy order ship account page help support data reset".split()


def _pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "Q: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) + "\nA:"
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))
        rows.append({"prompt": prompt, "chosen": f" {body} thank you", "rejected": f" {body} go away"})
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def _losses(out: Path, key: str = "train/loss") -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_and_kto_runs_give_the_same_losses_chunked_packed_or_plain(tiny_lm_dir, tmp_path):
    from tether.recipes.configs import DPOConfig, KTOConfig
    from tether.recipes.dpo import train_dpo
    from tether.recipes.kto import train_kto

    data = _write(tmp_path / "pairs.jsonl", _pairs(16, seed=3))
    base = dict(model=str(tiny_lm_dir), data=str(data), batch_size=8, micro_batch_size=4, max_steps=3, learning_rate=1e-3,
                mlflow=False, progress=False, logging_steps=1, ref_cache_dir=tmp_path / "cache", max_length=64)
    runs = {"plain": dict(lm_head_chunk=0), "chunked": dict(lm_head_chunk=7), "packed": dict(lm_head_chunk=7, packing=True)}
    dpo = {}
    for name, kw in runs.items():
        train_dpo(DPOConfig(**base, output_dir=tmp_path / f"dpo-{name}", **kw))
        dpo[name] = _losses(tmp_path / f"dpo-{name}")
    assert dpo["chunked"] == pytest.approx(dpo["plain"], rel=1e-5, abs=1e-6)
    assert dpo["packed"] == pytest.approx(dpo["plain"], rel=1e-4, abs=1e-5)
    assert dpo["plain"][0] != dpo["plain"][-1]  # it trained
    kto = {}
    for name in ("plain", "chunked"):
        train_kto(KTOConfig(**base, output_dir=tmp_path / f"kto-{name}", lm_head_chunk=runs[name]["lm_head_chunk"]))
        kto[name] = _losses(tmp_path / f"kto-{name}")
    assert kto["chunked"] == pytest.approx(kto["plain"], rel=1e-5, abs=1e-6)


def test_sft_runs_give_the_same_losses_chunked_or_plain(tiny_lm_dir, tmp_path):
    from tether.recipes.configs import SFTConfig
    from tether.recipes.sft import train_sft

    rows = [{"prompt": "Q: " + "word " * n, "completion": " answer" * (1 + n % 3)} for n in range(8)]
    data = _write(tmp_path / "sft.jsonl", rows)
    losses = {}
    for name, kw in {"plain": dict(lm_head_chunk=0), "chunked": dict(lm_head_chunk=5), "packed": dict(lm_head_chunk=5, packing=True)}.items():
        cfg = SFTConfig(model=str(tiny_lm_dir), data=str(data), output_dir=tmp_path / name, batch_size=8, max_steps=3, max_length=64,
                        learning_rate=1e-3, mlflow=False, progress=False, logging_steps=1, **kw)
        train_sft(cfg)
        losses[name] = _losses(tmp_path / name)
    assert losses["chunked"] == pytest.approx(losses["plain"], rel=1e-5, abs=1e-6)
    assert losses["packed"] == pytest.approx(losses["plain"], rel=1e-4, abs=1e-5)


@pytest.mark.slow  # inductor compiles the decoder layer: a minute or more on a 2-core CPU
def test_torch_compile_gives_the_losses_of_eager_mode(tiny_lm_dir, tmp_path):
    from tether.recipes.configs import DPOConfig, SFTConfig
    from tether.recipes.dpo import train_dpo
    from tether.recipes.sft import train_sft

    sft_data = _write(tmp_path / "sft.jsonl", [{"prompt": "Q: " + "word " * n, "completion": " answer" * (1 + n % 3)} for n in range(8)])
    pairs = _write(tmp_path / "pairs.jsonl", _pairs(8, seed=5))
    common = dict(model=str(tiny_lm_dir), batch_size=4, max_steps=3, max_length=64, learning_rate=1e-3, mlflow=False, progress=False, logging_steps=1)
    for compiled in (False, True):
        train_sft(SFTConfig(**common, data=str(sft_data), output_dir=tmp_path / f"sft-{compiled}", torch_compile=compiled))
        train_dpo(DPOConfig(**common, data=str(pairs), output_dir=tmp_path / f"dpo-{compiled}", torch_compile=compiled, ref_cache_dir=tmp_path / f"cache-{compiled}", packing=True))
    for kind in ("sft", "dpo"):
        assert _losses(tmp_path / f"{kind}-True") == pytest.approx(_losses(tmp_path / f"{kind}-False"), rel=1e-5, abs=1e-6), kind
    from transformers import AutoModelForCausalLM  # the compiled run saved an ordinary folder

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "sft-True") is not None
