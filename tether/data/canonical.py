"""Canonical training rows: what snapshots hold and what every trainer reads, and their digest.

Canonical training rows (what snapshots hold and what every trainer reads) follow TRL's dataset formats:
- preference: ``{"prompt", "chosen", "rejected"}`` plus optional ``"margin"`` (float), ``"tie"`` (bool),
  ``"subset"`` (str) and ``"weight"`` (a finite number >= 0: how much the row counts in the reward model's loss,
  e.g. its annotator's reliability in a ``--votes reliability`` snapshot; a row without one counts 1). Plain rows hold strings; conversational rows hold lists of ``{"role", "content"}``
  messages (the prompt's turns, and the assistant turn(s) of each answer).
- sft: ``{"prompt", "completion"}`` or ``{"messages": [...]}``.
- unpaired: ``{"prompt", "completion", "label": bool}`` (KTO).
- rating: ``{"prompt", "completion", "ratings": {aspect: number}}``.
- prompt: ``{"prompt"}``.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from tether.data.records import canonical_json

HH_ASSISTANT = "\n\nAssistant:"


ROW_KINDS = ("preference", "sft", "unpaired", "rating", "prompt")
WEIGHT_FIX = "give the row's weight as a finite number >= 0 (1 counts the row fully, 0 not at all), or leave the field out"


class RowValueError(ValueError):
    """A row field whose value is wrong, with how to fix it (``fix``): readers turn it into a TetherError."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def check_weight(weight: Any) -> float:
    """A preference row's ``weight`` as a float: a finite number >= 0 (RowValueError otherwise)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise RowValueError(f"weight must be a finite number >= 0, got {weight!r}", WEIGHT_FIX)
    return float(weight)


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split an HH-RLHF pair into (prompt, chosen completion, rejected completion).

    The prompt is the longest common prefix of the two dialogues cut back to the end of its last
    ``"\\n\\nAssistant:"``; the completions are what follows.
    """
    # The length of the common prefix, by bisection on slice equality (C speed; a char loop is 50x slower).
    low, high = 0, min(len(chosen), len(rejected))
    while low < high:
        middle = (low + high + 1) // 2
        if chosen[:middle] == rejected[:middle]:
            low = middle
        else:
            high = middle - 1
    common = low
    cut = chosen.rfind(HH_ASSISTANT, 0, common)  # the last turn marker wholly inside the shared prefix
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn shared by chosen and rejected")
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def is_messages(value: Any) -> bool:
    """A non-empty list of chat messages: ``{"role", "content"}`` objects."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def preference_row(record: dict[str, Any]) -> dict[str, Any]:
    """A TRL-style or HH-style record as a canonical preference row (raises ValueError with the reason)."""
    if "chosen" not in record or "rejected" not in record:
        missing = [k for k in ("chosen", "rejected") if k not in record]
        raise ValueError(f"missing key(s) {missing}")
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" in record:
        prompt = record["prompt"]
        ok = (isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str)) or (
            is_messages(prompt) and is_messages(chosen) and is_messages(rejected)
        )
        if not ok:
            raise ValueError("prompt/chosen/rejected must be all strings or all message lists")
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    elif is_messages(chosen) and is_messages(rejected):
        # Implicit prompt: both conversations share their turns up to the last answer.
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise ValueError("chosen and rejected conversations share no prompt turns")
        row = {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}
    elif isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen_text, rejected_text = split_hh(chosen, rejected)
        row = {"prompt": prompt, "chosen": chosen_text, "rejected": rejected_text}
    else:
        raise ValueError("chosen/rejected must be strings or message lists")
    if record.get("margin") is not None:
        margin = record["margin"]
        if not isinstance(margin, (int, float)) or isinstance(margin, bool):
            raise ValueError(f"margin must be a number, got {margin!r}")
        row["margin"] = float(margin)
    if record.get("tie") is not None:
        if not isinstance(record["tie"], bool):
            raise ValueError(f"tie must be true or false, got {record['tie']!r}")
        row["tie"] = record["tie"]
    if record.get("subset") is not None:
        if not isinstance(record["subset"], str):
            raise ValueError(f"subset must be text, got {record['subset']!r}")
        row["subset"] = record["subset"]
    if record.get("weight") is not None:
        row["weight"] = check_weight(record["weight"])
    return row


def messages_text(messages: list[dict[str, Any]]) -> str:
    """A readable plain-text form of a conversation (for display and search; the messages stay the truth)."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def canonical_line(row: dict[str, Any]) -> str:
    """One row as canonical JSON: sorted keys, no spaces, UTF-8 kept, numbers finite."""
    return canonical_json(row)


def rows_digest(rows: list[dict[str, Any]]) -> str:
    """sha256 of the canonical content of ``rows`` (one canonical line per row, joined by newlines)."""
    digest = hashlib.sha256()
    for index, row in enumerate(rows):
        if index:
            digest.update(b"\n")
        digest.update(canonical_line(row).encode("utf-8"))
    return digest.hexdigest()


def canonical_row(record: dict[str, Any], kind: str) -> dict[str, Any]:
    """A record as a canonical row of ``kind`` (raises ValueError with the reason)."""
    if kind == "preference":
        return preference_row(record)
    if kind == "sft":
        if is_messages(record.get("messages")):
            return {"messages": record["messages"]}
        if "prompt" in record and "completion" in record:
            return {"prompt": record["prompt"], "completion": record["completion"]}
        if "prompt" in record and "chosen" in record:  # preference data: train on the chosen answer
            row = preference_row(record)
            sft = {"prompt": row["prompt"], "completion": row["chosen"]}
            if row.get("tie"):  # a tie's "chosen" is no better than the other answer: trainers skip and count it
                sft["tie"] = True
            return sft
        raise ValueError("expected 'messages', or 'prompt' and 'completion'")
    if kind == "unpaired":
        if not {"prompt", "completion", "label"} <= record.keys():
            raise ValueError("expected 'prompt', 'completion' and 'label'")
        if not isinstance(record["label"], bool):
            raise ValueError(f"label must be true or false, got {record['label']!r}")
        return {"prompt": record["prompt"], "completion": record["completion"], "label": record["label"]}
    if kind == "rating":
        if not {"prompt", "completion"} <= record.keys():
            raise ValueError("expected 'prompt', 'completion' and 'ratings' (or 'rating')")
        ratings = record.get("ratings")
        if ratings is None and "rating" in record:
            ratings = {"overall": record["rating"]}
        if not isinstance(ratings, dict) or not ratings:
            raise ValueError("expected 'ratings': {aspect: number} or 'rating': number")
        return {"prompt": record["prompt"], "completion": record["completion"], "ratings": ratings}
    if "prompt" not in record:
        raise ValueError("expected 'prompt'")
    return {"prompt": record["prompt"]}
