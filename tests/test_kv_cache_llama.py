"""The fast KV-cached decoder (tether.models.kv_cache_llama) against the models' own forward, per supported architecture."""

from __future__ import annotations

import pytest
import torch

from tether.models.kv_cache_llama import KVDecoder, unsupported_reason


def tiny_model(kind: str):
    """A randomly initialized 2-layer model of each supported family (hidden 32, vocab 64), in fp32."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, pad_token_id=0)
    config = {
        "llama": lambda: LlamaConfig(**common, num_key_value_heads=4),
        "llama-gqa": lambda: LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=True),
        "qwen2": lambda: Qwen2Config(**common, num_key_value_heads=2),  # q/k/v biases
        "qwen3": lambda: Qwen3Config(**common, num_key_value_heads=2, head_dim=8),  # per-head q/k norms
        "mistral": lambda: MistralConfig(**common, num_key_value_heads=2, sliding_window=None),
    }[kind]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    for name, param in model.named_parameters():  # biases and norm weights away from their 0 / 1 init, so they count
        if "bias" in name or "norm" in name:
            param.data.add_(0.1 * torch.randn_like(param))
    return model


def left_padded(n: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n prompts of lengths width, width - 1, ... (at least 2), left-padded with id 0. shape: (n, width) each."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (n, width), generator=generator)
    mask = torch.ones(n, width, dtype=torch.long)
    for i in range(n):
        pad = min(i, width - 2)
        ids[i, :pad], mask[i, :pad] = 0, 0
    return ids, mask


@pytest.mark.parametrize("kind", ["llama", "llama-gqa", "qwen2", "qwen3", "mistral"])
def test_decoder_logits_equal_the_model_forward(kind):
    """Prefill and two steps on left-padded prompts: next-token logits within 1e-5 (relative to the largest logit)
    of the model's own forward over the whole sequence."""
    model = tiny_model(kind)
    assert unsupported_reason(model) is None
    ids, mask = left_padded(3, 6)
    worst = KVDecoder(model, 6 + 3).verify(ids, mask, rtol=1e-5)
    assert worst < 1e-5


def test_group_rows_share_the_prompt_prefill():
    """prefill(repeats=3) gives each prompt three cache rows: the same logits, now and after a step, as prefilling
    the three copies separately."""
    model = tiny_model("llama-gqa")
    ids, mask = left_padded(2, 5)
    shared, copies = KVDecoder(model, 8), KVDecoder(model, 8)
    first = shared.prefill(ids, mask, repeats=3)
    expected = copies.prefill(ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0))
    assert first.shape == (6, 64)
    assert torch.allclose(first, expected, atol=1e-5)
    tokens = torch.arange(6) + 5  # a different next token in every row
    assert torch.allclose(shared.step(tokens), copies.step(tokens), atol=1e-5)


def test_selecting_rows_keeps_their_cache():
    """Dropping rows (finished completions) leaves the kept rows' next logits unchanged."""
    model = tiny_model("llama")
    ids, mask = left_padded(4, 5)
    full, kept = KVDecoder(model, 8), KVDecoder(model, 8)
    full.prefill(ids, mask)
    kept.prefill(ids, mask)
    tokens = torch.tensor([7, 8, 9, 10])
    full.step(tokens)
    kept.step(tokens)
    rows = torch.tensor([1, 3])
    kept.select(rows)
    assert torch.allclose(kept.step(tokens[rows]), full.step(tokens)[rows], atol=1e-6)


def test_unsupported_models_say_why(tiny_lm_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tether.demo.tiny import build_causal_lm
    from tether.models.hf import load_causal_lm, load_tokenizer

    gpt2 = build_causal_lm(load_tokenizer(tiny_lm_dir), tmp_path / "gpt2", arch="gpt2", hidden_size=32, num_layers=1, num_heads=2)
    assert "model type 'gpt2'" in unsupported_reason(gpt2)
    lora = get_peft_model(load_causal_lm(tiny_lm_dir), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert "PEFT" in unsupported_reason(lora)
    sliding = tiny_model("mistral")
    for layer in sliding.model.layers:
        layer.self_attn.sliding_window = 4
    assert "sliding" in unsupported_reason(sliding)


def test_verify_catches_a_wrong_decoder():
    """A decoder whose weights no longer match the model (here: one stale projection) fails its check."""
    model = tiny_model("llama")
    decoder = KVDecoder(model, 9)
    decoder.layers[0]["o"] = decoder.layers[0]["o"] * 1.5
    ids, mask = left_padded(2, 6)
    with pytest.raises(AssertionError, match="differ"):
        decoder.verify(ids, mask)


def test_decoder_under_bf16_autocast_keeps_close_to_the_model():
    """Under autocast (the bf16 path of the trainers) the decoder keeps HF's dtypes (fp32 residual stream, bf16
    matrix products), so its logits follow the model's own forward under the same autocast (measured: equal) far
    closer than bf16's resolution; a 5% error in one projection moves them 8e-3."""
    model = tiny_model("llama-gqa")
    ids, mask = left_padded(3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        worst = KVDecoder(model, 9).verify(ids, mask, rtol=3e-2)
    assert worst < 2e-3
