"""Redaction of incoming records: PII (tether.checks.pii) replaced in every text of a record (strings, chat
messages, nested lists and objects), with counts of what was replaced; importers call it for ``--redact pii``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tether.checks.pii import redact
from tether.errors import TetherError

REDACT_CHOICES = ("pii",)


def redact_record(record: Any, counts: dict[str, int] | None = None, kinds: Iterable[str] | None = None) -> tuple[Any, dict[str, int]]:
    """``record`` with PII replaced in every string inside it (keys are kept), and the counts per PII kind.

    ``counts``, when given, is updated in place and returned (to total over many records).
    """
    counts = {} if counts is None else counts

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            text, found = redact(value, kinds)
            for kind, n in found.items():
                counts[kind] = counts.get(kind, 0) + n
            return text
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(record), counts


def check_redact(option: str | None) -> bool:
    """Validate a ``--redact`` value; True when redaction is on."""
    if option is None or option == "none":
        return False
    if option not in REDACT_CHOICES:
        raise TetherError(f"unknown --redact {option!r}", fix=f"use --redact {' or '.join(REDACT_CHOICES)}")
    return True
