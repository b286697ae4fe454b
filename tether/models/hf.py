"""Loading models and tokenizers from Hugging Face folders (the pad token, LoRA through peft, dropout), how prompts
are rendered (chat templates), and the ``tether.json`` Tether saves beside a model.

Paths are local folders (or hub ids when the user is online); nothing is downloaded otherwise.

Prompt formats (``prompt_format``), decided once when a tokenizer is loaded and recorded in the ``tether.json`` of
every model Tether saves, so that training, sampling and scoring render a prompt the same way:

- ``chat``: the tokenizer's own chat template for conversations and for plain-text prompts, which go in as one
  user turn (their completions as the assistant's turn, with the template's end-of-turn token);
- ``chat_messages_only``: the chat template for conversations, plain-text prompts as they are (``chat_template``
  off; what Tether did before it recorded the format);
- ``plain``: the tokenizer has no chat template: plain-text prompts as they are, conversations written as
  ``User: ...`` / ``Assistant: ...`` paragraphs. No template is ever made up and saved into a model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import TetherError

if TYPE_CHECKING:  # torch is imported where a model is loaded: reading tether.json stays light
    import torch

PROMPT_FORMATS = ("chat", "chat_messages_only", "plain")
TETHER_META = "tether.json"  # what Tether writes beside every model it saves


def check_model_path(path: str | Path, what: str) -> str:
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


def refuse_adapter(path: str | Path, what: str = "--model") -> None:
    """A LoRA adapter folder (adapter_config.json, no full weights) cannot be trained on: say what it is and what to do."""
    folder = Path(str(path)).expanduser()
    config = folder / "adapter_config.json"
    if not config.is_file() or (folder / "config.json").exists():
        return
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or "its base model"
    except (OSError, ValueError):
        base = "its base model"
    raise TetherError(
        f"{what} {folder} is a LoRA adapter (adapter_config.json) on {base}, not a full model: training needs full weights to start from",
        fix="merge it into its base and give that folder: rerun the training that made it with --merge (or --set merge=true), "
        f"or in Python PeftModel.from_pretrained(base_model, '{folder}').merge_and_unload().save_pretrained(OUT) and save the tokenizer beside it",
    )


def load_tokenizer(
    path: str | Path, *, padding_side: str = "right", chat_template: bool | None = None, say: Callable[[str], None] | None = None
) -> Any:
    """The tokenizer at ``path``, ready for Tether: a pad token (its EOS when it has none, as TRL does) and its
    ``prompt_format`` (see the module doc). ``chat_template``: apply the chat template to plain-text prompts (True),
    not (False), or as the model's ``tether.json`` recorded, else when the tokenizer has one (None). ``say``, when
    given, receives the one-line notes: the pad token borrowed, and which template the prompts go through."""
    from transformers import AutoTokenizer

    source = check_model_path(path, "model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise TetherError(f"cannot load a tokenizer from {source}: {exc}", fix="the folder needs tokenizer files (tokenizer.json or vocab files)") from None
    tokenizer.padding_side = padding_side
    ensure_pad_token(tokenizer, source, say)
    set_prompt_format(tokenizer, _choose_prompt_format(tokenizer, source, chat_template))
    if say is not None:
        say(prompt_format_line(tokenizer, source))
    return tokenizer


def ensure_pad_token(tokenizer: Any, source: str | Path, say: Callable[[str], None] | None = None) -> None:
    """A tokenizer without a pad token pads with its EOS token (as TRL does), with a note; one with neither is refused."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise TetherError(
            f"the tokenizer of {source} has neither a pad token nor an EOS token",
            fix="set one: tokenizer.pad_token = '<pad>' (tokenizer.add_special_tokens), then save_pretrained() the folder again",
        )
    tokenizer.pad_token = tokenizer.eos_token
    if say is not None:
        say(f"note: the tokenizer of {source} has no pad token: padding with its EOS token {tokenizer.eos_token!r} (as TRL does)")


def _choose_prompt_format(tokenizer: Any, source: str, chat_template: bool | None) -> str:
    if tokenizer.chat_template is None:
        return "plain"
    if chat_template is not None:
        return "chat" if chat_template else "chat_messages_only"
    if (Path(source) / TETHER_META).is_file():
        try:
            recorded = read_tether_meta(source).get("prompt_format")
        except (OSError, ValueError):
            recorded = None
        # A Tether model saved before the format was recorded rendered plain-text prompts as they are.
        return recorded if recorded in PROMPT_FORMATS else "chat_messages_only"
    return "chat"


def set_prompt_format(tokenizer: Any, fmt: str) -> None:
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; valid: {PROMPT_FORMATS}")
    if fmt != "plain" and tokenizer.chat_template is None:
        fmt = "plain"
    tokenizer.tether_prompt_format = fmt


def prompt_format(tokenizer: Any) -> str:
    """The tokenizer's prompt format; one not loaded by ``load_tokenizer`` follows its chat template when it has one."""
    fmt = getattr(tokenizer, "tether_prompt_format", None)
    if fmt is None:
        fmt = "chat" if tokenizer.chat_template is not None else "plain"
    return fmt


def prompt_format_line(tokenizer: Any, source: str | Path) -> str:
    """One line saying which template a run's prompts go through."""
    fmt = prompt_format(tokenizer)
    if fmt == "chat":
        return f"template: the chat template of {source}; plain-text prompts go in as a user turn (chat_template off: as they are)"
    if fmt == "chat_messages_only":
        return f"template: the chat template of {source} for conversations; plain-text prompts as they are (chat_template on: as a user turn)"
    return f"template: none ({source} has no chat template): plain-text prompts as they are, conversations as 'User: ...' / 'Assistant: ...' text"


def load_causal_lm(path: str | Path, *, bf16: bool = False, gradient_checkpointing: bool = False) -> Any:
    """A causal LM for training (fp32 master weights unless bf16)."""
    import torch
    from transformers import AutoModelForCausalLM

    source = check_model_path(path, "model")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16 if bf16 else torch.float32)
    except (OSError, ValueError) as exc:
        raise TetherError(f"cannot load a causal language model from {source}: {exc}", fix="point --model at a causal LM folder") from None
    if gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    return model


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass (non-reentrant): transformers' ``activation_checkpointing_enable``
    where it exists; before it, ``gradient_checkpointing_enable``, now a deprecated alias that warns the user."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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
    with warnings.catch_warnings():
        # peft reads the model's deprecated ``is_gradient_checkpointing``; transformers then warns the user about a
        # call that is not theirs, once per run
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


# ---------------------------------------------------------------------------------------------------------------
# Rendering prompts and completions as text (see the prompt formats in the module doc)
# ---------------------------------------------------------------------------------------------------------------


def uses_template(tokenizer: Any, value: Any) -> bool:
    """True when ``value`` (a prompt or a completion: text or messages) is rendered by the chat template, which then
    writes its own special tokens (BOS, end of turn); False when it is plain text the caller frames (BOS, EOS)."""
    fmt = prompt_format(tokenizer)
    return fmt == "chat" or (fmt == "chat_messages_only" and not isinstance(value, str))


def plain_conversation(messages: list[dict[str, Any]], *, add_generation_prompt: bool = False) -> str:
    """Messages as plain text, one ``Role: content`` paragraph per turn (for tokenizers without a chat template)."""
    text = "\n\n".join(f"{str(m.get('role', 'user')).capitalize()}: {m.get('content', '')}" for m in messages)
    return text + ("\n\nAssistant:" if add_generation_prompt else "")


def _as_messages(value: Any, role: str) -> list[dict[str, Any]]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def _render(tokenizer: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool) -> str:
    if prompt_format(tokenizer) == "plain":
        return plain_conversation(messages, add_generation_prompt=add_generation_prompt)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_prompt(tokenizer: Any, prompt: Any) -> str:
    """A prompt as text, ending where the answer starts: through the chat template with the generation prompt when
    ``uses_template``; plain text as it is; conversations without a template as ``plain_conversation``."""
    if isinstance(prompt, str) and not uses_template(tokenizer, prompt):
        return prompt
    return _render(tokenizer, _as_messages(prompt, "user"), add_generation_prompt=True)


def render_completion(tokenizer: Any, prompt: Any, completion: Any) -> str:
    """A completion as text that follows ``render_prompt(prompt)``: the rendering of the whole conversation minus
    the rendered prompt (with a template: the assistant turn and its end-of-turn token). Plain text is returned as
    it is (callers append EOS)."""
    if isinstance(completion, str) and not uses_template(tokenizer, completion):
        return completion
    prompt_messages, answer = _as_messages(prompt, "user"), _as_messages(completion, "assistant")
    prompt_text = _render(tokenizer, prompt_messages, add_generation_prompt=True)
    full = _render(tokenizer, prompt_messages + answer, add_generation_prompt=False)
    if not full.startswith(prompt_text):
        # Templates that rewrite earlier turns: fall back to the assistant turns' content.
        return "".join(m["content"] for m in answer if m.get("role") == "assistant")
    return full[len(prompt_text) :]


# ---------------------------------------------------------------------------------------------------------------
# Models for training, and the metadata Tether saves beside them
# ---------------------------------------------------------------------------------------------------------------


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere: ``nn.Dropout`` modules and the float ``attention_dropout`` some attentions keep. A
    policy and its reference must score a sequence the same way (as TRL does), RL needs log-probs that do not change
    between two passes (Huang et al. 2024), and reward models train reproducibly."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def load_policy(cfg: Any, tokenizer: Any, *, dropout: bool = True) -> Any:
    """The causal LM a trainer starts from (``cfg.model``, full weights: an adapter folder is refused) in fp32 master
    weights, with gradient checkpointing and LoRA as ``cfg`` says; ``dropout=False`` turns dropout off everywhere,
    the adapter's included."""
    refuse_adapter(cfg.model)
    model = load_causal_lm(cfg.model, bf16=False, gradient_checkpointing=cfg.gradient_checkpointing)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise TetherError(f"the tokenizer of {cfg.model} has {len(tokenizer)} tokens, more than the model's embeddings", fix="save the model and tokenizer together")
    model = apply_lora(model, cfg)
    if not dropout:
        disable_dropout(model)
    return model



def read_tether_meta(model_dir: str | Path) -> dict[str, Any]:
    """The ``tether.json`` Tether saves beside a model (kind, config, metrics, lineage, prompt format); ``{}`` when the
    folder has none."""
    path = Path(model_dir) / TETHER_META
    if not path.exists():
        return {}
    return json.loads(path.read_text())
