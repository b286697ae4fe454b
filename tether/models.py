"""Loading models and tokenizers from Hugging Face folders; LoRA through peft; log-probs of sequences.

Paths are local folders (or hub ids when the user is online); nothing is downloaded otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tether.errors import TetherError


def _check_model_path(path: str | Path, what: str) -> str:
    text = str(path)
    local = Path(text).expanduser()
    if local.exists():
        if not (local / "config.json").exists() and not (local / "adapter_config.json").exists():
            raise TetherError(f"{what} folder {local} has no config.json", fix="point at a Hugging Face model folder (save_pretrained output)")
        return str(local)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise TetherError(f"{what} not found: {text}", fix="check the path; it must be a Hugging Face model folder")
    return text


def load_tokenizer(path: str | Path, *, padding_side: str = "right") -> Any:
    """The tokenizer at ``path``; a default chat template when it has none. Needs a pad token (clear error)."""
    from transformers import AutoTokenizer

    from tether.tiny import DEFAULT_CHAT_TEMPLATE

    source = _check_model_path(path, "model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise TetherError(f"cannot load a tokenizer from {source}: {exc}", fix="the folder needs tokenizer files (tokenizer.json or vocab files)") from None
    if tokenizer.chat_template is None:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    tokenizer.padding_side = padding_side
    return tokenizer


def require_pad_token(tokenizer: Any, source: str | Path) -> None:
    if tokenizer.pad_token_id is None:
        raise TetherError(
            f"the tokenizer of {source} has no pad token",
            fix="set one: tokenizer.pad_token = tokenizer.eos_token, then save_pretrained() the folder again",
        )


def load_causal_lm(path: str | Path, *, bf16: bool = False, gradient_checkpointing: bool = False) -> Any:
    """A causal LM for training (fp32 master weights unless bf16)."""
    from transformers import AutoModelForCausalLM

    source = _check_model_path(path, "model")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16 if bf16 else torch.float32)
    except (OSError, ValueError) as exc:
        raise TetherError(f"cannot load a causal language model from {source}: {exc}", fix="point --model at a causal LM folder") from None
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def apply_lora(model: Any, cfg: Any, task_type: str = "CAUSAL_LM") -> Any:
    """Wrap ``model`` in a LoRA adapter when ``cfg.lora_r`` > 0; the base weights are frozen."""
    if not cfg.lora_r:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules or "all-linear",
        task_type=task_type,
    )
    return get_peft_model(model, lora)


def token_logps(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(labels[t+1] | ..t) for each position. logits (B, T, V), labels (B, T) -> (B, T-1)."""
    logits = logits[:, :-1, :].float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = labels[:, 1:].unsqueeze(-1)
    # log_softmax gathered at the target, without materializing a second (B, T, V) tensor beyond log_softmax
    return torch.gather(logits.log_softmax(-1), 2, targets).squeeze(-1)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Sum of the log-probs of the masked tokens of each sequence.

    logits (B, T, V); labels (B, T); loss_mask (B, T) marks the tokens whose probability counts (the completion).
    The mask is read at the predicted position, so loss_mask[:, 0] is ignored. Returns (B,).
    """
    per_token = token_logps(logits, labels, temperature)
    return (per_token * loss_mask[:, 1:].to(per_token.dtype)).sum(-1)


def render_prompt(tokenizer: Any, prompt: Any) -> str:
    """A prompt as text: strings pass through; message lists go through the chat template with the
    generation prompt added."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def render_completion(tokenizer: Any, prompt: Any, completion: Any) -> str:
    """A completion as text that follows ``render_prompt(prompt)``. Message lists: the chat template's rendering of
    the whole conversation minus the rendered prompt. Strings are returned as they are (callers append EOS)."""
    if isinstance(completion, str):
        return completion
    prompt_text = render_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)
    if not full.startswith(prompt_text):
        # Templates that rewrite earlier turns: fall back to the assistant turns' content.
        return "".join(m["content"] for m in completion if m.get("role") == "assistant")
    return full[len(prompt_text) :]
