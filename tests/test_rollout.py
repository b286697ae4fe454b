"""Rollouts (tether.rollout): batched sampling, left padding, EOS handling, log-probs that ignore padding."""

from __future__ import annotations

import warnings

import pytest
import torch

from tether.rollout import build_rollout, completion_logps, encode_prompts, generate_hf, prompt_indices


@pytest.fixture(scope="module")
def lm(tiny_lm_dir):
    from tether.models import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_lm_dir).eval(), load_tokenizer(tiny_lm_dir)


def test_generate_shapes_groups_and_left_padding(lm):
    model, tokenizer = lm
    torch.manual_seed(0)
    prompts = ["Hello, how", "The quick brown fox jumps over the lazy"]
    rollout = generate_hf(model, tokenizer, prompts, group_size=3, max_new_tokens=6, cache="dynamic")
    assert len(rollout) == 6
    assert rollout.prompts == [prompts[0]] * 3 + [prompts[1]] * 3
    width = rollout.prompt_ids.shape[1]
    short = len(encode_prompts(tokenizer, prompts[:1], 100)[1][0])
    # Row 0 is the short prompt: left padding, real tokens at the end.
    assert rollout.prompt_mask[0].tolist() == [0] * (width - short) + [1] * short
    assert (rollout.prompt_ids[0, : width - short] == tokenizer.pad_token_id).all()
    assert rollout.completion_ids.shape[1] <= 6
    assert rollout.input_ids.shape == (6, width + rollout.completion_ids.shape[1])
    assert len(rollout.completion_texts) == 6 and all(isinstance(t, str) for t in rollout.completion_texts)


def test_static_and_dynamic_cache_sample_the_same_tokens(lm):
    model, tokenizer = lm
    out = {}
    for cache in ("static", "dynamic"):
        torch.manual_seed(3)
        out[cache] = generate_hf(model, tokenizer, ["Please reset", "Thank you"], group_size=2, max_new_tokens=5, cache=cache)
    assert torch.equal(out["static"].completion_ids, out["dynamic"].completion_ids)


def test_static_cache_failure_falls_back_to_dynamic(lm, monkeypatch):
    import tether.rollout as rollout_module

    model, tokenizer = lm
    original = model.generate
    calls = []

    def generate(*args, generation_config, **kwargs):
        calls.append(generation_config.cache_implementation)
        if generation_config.cache_implementation == "static":
            raise RuntimeError("no static cache here")
        return original(*args, generation_config=generation_config, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    monkeypatch.setattr(rollout_module, "_STATIC_FAILED", set())
    with pytest.warns(UserWarning, match="static KV cache failed"):
        generate_hf(model, tokenizer, ["Hello"], max_new_tokens=3, cache="static")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the next call goes straight to the dynamic cache
        generate_hf(model, tokenizer, ["Hello"], max_new_tokens=3, cache="static")
    assert calls == ["static", None, None]


def test_completions_stop_at_the_first_eos(lm):
    _, tokenizer = lm
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rollout = build_rollout(
        tokenizer, ["a", "b"], ["a", "b"], [[10, 11], [12]],
        [[20, 21, eos, 22, 23], [24, 25, 26, 27]],  # row 0 ends at EOS; row 1 hit the length limit
        sampler_logps=[[-1.0, -2.0, -3.0, -4.0, -5.0], [-1.0, -1.0, -1.0, -1.0]],
    )
    assert rollout.completion_ids.tolist() == [[20, 21, eos, pad], [24, 25, 26, 27]]
    assert rollout.completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert rollout.has_eos.tolist() == [True, False]
    assert rollout.completion_lengths.tolist() == [3, 4]
    assert rollout.prompt_ids.tolist() == [[10, 11], [pad, 12]]
    assert rollout.sampler_logps.tolist() == [[-1.0, -2.0, -3.0, 0.0], [-1.0, -1.0, -1.0, -1.0]]
    assert rollout.completion_texts[0] == tokenizer.decode([20, 21])  # EOS is not part of the text


def test_log_probs_ignore_left_padding_and_use_the_temperature(lm):
    """A padded row's completion log-probs equal those of the same row alone (positions skip the padding), and
    temperature T gives log_softmax(logits / T)."""
    model, tokenizer = lm
    torch.manual_seed(1)
    rollout = generate_hf(model, tokenizer, ["Hi", "Your order has shipped and"], max_new_tokens=4, cache="dynamic")
    width = rollout.completion_ids.shape[1]
    with torch.no_grad():
        batched, _ = completion_logps(model, rollout.input_ids, rollout.attention_mask, width)
        keep = rollout.attention_mask[0].bool()
        alone, _ = completion_logps(model, rollout.input_ids[:1, keep], rollout.attention_mask[:1, keep], int(rollout.completion_mask[0].sum()))
        assert torch.allclose(batched[0, : alone.shape[1]], alone[0], atol=1e-5)
        hot, _ = completion_logps(model, rollout.input_ids, rollout.attention_mask, width, temperature=2.0)
        logits = model(rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=(rollout.attention_mask.cumsum(1) - 1).clamp(min=0)).logits
        expected = torch.log_softmax(logits[:, -width - 1 : -1] / 2.0, -1).gather(2, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(hot, expected, atol=1e-5)


def test_long_prompts_keep_their_end(lm):
    _, tokenizer = lm
    _, ids = encode_prompts(tokenizer, ["The quick brown fox jumps over the lazy dog. " * 5], 7)
    full = tokenizer("The quick brown fox jumps over the lazy dog. " * 5, add_special_tokens=False)["input_ids"]
    assert ids[0] == full[-7:]


def test_prompt_stream_is_deterministic_and_covers_every_prompt():
    passes = [prompt_indices(5, r, 2, seed=7) for r in range(5)]  # 10 positions = two passes over 5 prompts
    flat = [i for chunk in passes for i in chunk]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:]) == list(range(5))
    assert flat[:5] != flat[5:] or flat[:5] != sorted(flat[:5])  # shuffled per pass
    assert prompt_indices(5, 3, 2, seed=7) == passes[3]
    assert prompt_indices(5, 0, 5, seed=8) != prompt_indices(5, 0, 5, seed=7)
