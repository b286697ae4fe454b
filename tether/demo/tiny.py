"""Small models built offline: a byte-level BPE tokenizer trained on given texts and a tiny Llama or GPT-2.

Used by the tests, the demo and the benchmarks, so nothing is ever downloaded. The saved folders are ordinary
Hugging Face directories (``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` load them).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The chat template of the tiny tokenizers: "<|user|>\n...\n<|assistant|>\n...<eos>" (its role tokens are special tokens
# of their vocabulary; it is never given to another model's tokenizer).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512, out_dir: str | Path | None = None, *, chat_template: bool = True) -> Any:
    """Train a byte-level BPE tokenizer on ``texts``; pad, bos, eos and unk tokens set; the chat template set unless
    ``chat_template`` is False (a base model's tokenizer: plain-text prompts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    if chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_causal_lm(
    tokenizer: Any,
    out_dir: str | Path | None = None,
    *,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
) -> Any:
    """A randomly initialized causal LM sized for CPU tests, matching ``tokenizer``'s vocabulary and ids."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(seed)
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size or 4 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=True,
            **ids,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_positions,
            **ids,
        )
    else:
        raise ValueError(f"unknown arch {arch!r}; valid: llama, gpt2")
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if out_dir is not None:
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    return model
