"""Monitoring's settings: the alert thresholds (``[monitor]`` in tether.toml), the report options, durations and times."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any

import numpy as np

from tether.errors import TetherError

ScoreFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


EmbedFn = Callable[[Sequence[str]], np.ndarray]


# Exit status of `tether monitor report` when at least one alert is raised (documented in the command).
ALERT_EXIT_CODE = 3


REVIEW_PROJECT = "production-review"


@dataclass
class Thresholds:
    """Alert thresholds, read from the ``[monitor]`` section of tether.toml (every key optional)."""

    max_reward_psi: float = 0.2  # reward PSI above this is drift (0.1 = moderate, 0.25 = major, by convention)
    ks_pvalue: float = 0.01  # family-wise alpha for the KS, MMD, agreement and rate tests (Bonferroni over windows)
    min_ks_stat: float = 0.1  # a significant KS test also needs a statistic (max CDF gap) at least this large
    max_input_psi: float = 0.2  # prompt-length PSI above this is input drift
    min_embed_mmd: float = 0.01  # a significant embedding MMD^2 must also exceed this
    min_agreement: float = 0.6  # reward-human AUC below this raises an alert
    max_agreement_drop: float = 0.1  # ... and so does a significant drop from the baseline AUC larger than this
    min_feedback: int = 20  # windows with fewer thumbs-up or thumbs-down records skip the agreement check
    max_violation_rate: float = 0.05  # share of completions breaking a rule (PII, tether.checks.rules)
    max_rate_rise: float = 0.05  # refusal / repetition / violation rate may rise this much over the baseline
    max_length_growth: float = 1.5  # mean completion length over the baseline's
    min_window_records: int = 30  # smaller windows are reported but not tested

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> Thresholds:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise TetherError(
                f"unknown key(s) in [monitor] of tether.toml: {', '.join(unknown)}",
                fix=f"valid keys: {', '.join(sorted(known))}",
            )
        values = {}
        for f in fields(cls):
            if f.name in section:
                value = section[f.name]
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise TetherError(f"[monitor] {f.name} must be a number, got {value!r}", fix="edit tether.toml")
                values[f.name] = type(f.default)(value)
        return cls(**values)


@dataclass
class ReportOptions:
    """What `tether monitor report` looks at and how."""

    window: str = "1d"  # window length: 30m, 6h, 1d, 1w
    baseline: str = "first"  # "first" (the first window), "Nd"/"Nh" (the first N days/hours), or "START..END" (ISO)
    since: datetime | None = None
    until: datetime | None = None
    model_version: str | None = None
    sample_per_window: int = 2000  # records per window for text checks and reward-model scoring
    embed_sample: int = 256  # prompts per window embedded for the MMD test
    permutations: int = 1000  # permutations of the MMD test (raised so the smallest p-value can pass Bonferroni)
    seed: int = 0
    review_project: str = REVIEW_PROJECT


def parse_duration(text: str) -> float:
    """``30m``, ``6h``, ``1d``, ``2w`` (or plain seconds) as seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise TetherError(f"bad duration {text!r}", fix="write a number and a unit: 30m, 6h, 1d, 1w")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
    return float(m.group(1)) * unit


def parse_time(value: Any) -> datetime:
    """A timestamp as an aware UTC datetime: ISO 8601 text (``Z`` allowed; naive means UTC), or epoch seconds
    (numbers above 1e11 are taken as milliseconds)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) / (1000.0 if abs(value) > 1e11 else 1.0)
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not ISO 8601 (2024-05-01T12:00:00Z) or epoch seconds") from None
    else:
        raise ValueError(f"timestamp {value!r} is not ISO 8601 text or epoch seconds")
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


# Review items are single completions rated 1-5 in the web app; 4-5 counts as thumbs up and 1-2 as thumbs down.
REVIEW_SCHEMA = {"kind": "rating", "aspects": ["overall"], "scale": [1, 5]}
