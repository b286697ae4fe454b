"""Prompts and completions as token ids, rendered as the tokenizer's prompt format says (tether.models.hf):
for the policy trainers (``encode_texts``), reward models (``encode_many``) and sampling (``encode_prompts``).
Truncation keeps the prompt's end and the whole completion (tether.data.batching.truncate_prompt)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tether.data.batching import truncate_prompt
from tether.errors import TetherError
from tether.models.hf import render_completion, render_prompt, uses_template


def split_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A conversation as (prompt turns, final assistant turn): the loss is on the last answer only."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None or last == 0:
        raise TetherError("a conversation has no assistant turn after the prompt", fix="each 'messages' row must end with an assistant answer")
    return messages[:last], messages[last:]


def encode_texts(tokenizer: Any, prompts: list[Any], completions: list[Any]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of prompts and their completions (batched through the fast tokenizer).

    What the chat template renders (conversations; plain-text prompts too on chat models, see tether.models.hf) is
    the prompt with the generation prompt and the completion as the assistant turn the template writes, its
    end-of-turn token included; plain text is tokenized as it is, the prompt with the tokenizer's special tokens
    (BOS) and the completion followed by EOS.
    """
    prompt_texts = [render_prompt(tokenizer, p) for p in prompts]
    completion_texts = [render_completion(tokenizer, p, c) for p, c in zip(prompts, completions)]
    plain = [not uses_template(tokenizer, p) for p in prompts]
    prompt_ids = [[] for _ in prompts]
    for flag in (True, False):  # special tokens only for plain prompts (chat templates write their own)
        idx = [i for i, f in enumerate(plain) if f == flag]
        if idx:
            encoded = tokenizer([prompt_texts[i] for i in idx], add_special_tokens=flag)["input_ids"]
            for i, ids in zip(idx, encoded):
                prompt_ids[i] = list(ids)
    completion_ids = [list(ids) for ids in tokenizer(completion_texts, add_special_tokens=False)["input_ids"]]
    eos = tokenizer.eos_token_id
    for ids, completion in zip(completion_ids, completions):
        if not uses_template(tokenizer, completion) and eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
    return prompt_ids, completion_ids


def special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one text (BERT: [CLS] ... [SEP]; Llama: <s> ...)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    return [], []


def encode_many(tokenizer: Any, prompts: Sequence[Any], completions: Sequence[Any], max_length: int) -> list[list[int] | None]:
    """Token ids of each prompt+completion in at most ``max_length`` tokens, special tokens included.

    The prompt's START is cut first; an item whose completion alone cannot fit is None (callers skip and count it).
    Decoders get EOS appended to the completion when it does not end with it: the reward is read there.
    """
    prefix, suffix = special_tokens_around(tokenizer)
    eos = tokenizer.eos_token_id
    add_eos = eos is not None and not suffix  # encoders end with their own [SEP]
    prompt_texts = [render_prompt(tokenizer, p) for p in prompts]
    completion_texts = [render_completion(tokenizer, p, c) for p, c in zip(prompts, completions)]
    # verbose=False: texts longer than the model are expected here; they are cut below
    prompt_ids = tokenizer(prompt_texts, add_special_tokens=False, verbose=False)["input_ids"] if prompt_texts else []
    completion_ids = tokenizer(completion_texts, add_special_tokens=False, verbose=False)["input_ids"] if completion_texts else []
    room = max_length - len(prefix) - len(suffix)
    out: list[list[int] | None] = []
    for p_ids, c_ids in zip(prompt_ids, completion_ids):
        if add_eos and (not c_ids or c_ids[-1] != eos):
            c_ids = [*c_ids, eos]
        kept = truncate_prompt(p_ids, [len(c_ids)], room, min_prompt_tokens=0)
        out.append(None if kept is None else prefix + kept + c_ids + suffix)
    return out


def encode_prompts(tokenizer: Any, prompts: Sequence[Any], max_prompt_tokens: int) -> tuple[list[str], list[list[int]]]:
    """Rendered prompt texts and their ids: plain text gets the tokenizer's leading special tokens (BOS) once (a chat
    template writes its own), the prompt's END kept when it is longer than ``max_prompt_tokens``."""
    texts = [render_prompt(tokenizer, p) for p in prompts]
    prefix, _ = special_tokens_around(tokenizer)
    ids = []
    for prompt, row in zip(prompts, tokenizer(texts, add_special_tokens=False)["input_ids"]):
        # a chat template writes its own special tokens (as in training); plain text gets the tokenizer's BOS
        framed = uses_template(tokenizer, prompt) or row[: len(prefix)] == prefix
        row = list(row) if framed else prefix + list(row)
        ids.append(row[-max_prompt_tokens:])
    return texts, ids


def completion_tokens(tokenizer: Any, prompts: Sequence[Any], completions: Sequence[Any]) -> list[int]:
    """How many tokens each completion is, rendered as it is scored (tether.models.hf.render_completion): its whole
    length, even where ``encode_many`` cuts the prompt."""
    texts = [render_completion(tokenizer, p, c) for p, c in zip(prompts, completions)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]] if texts else []
