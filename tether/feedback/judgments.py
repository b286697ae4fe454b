"""The kinds of judgment and the shape of their values, and how each becomes training pairs.

A judgment's ``value`` is a JSON object in *item positions* (0 is the item's first completion, "a"), whatever
order the annotator saw them in (that order is stored beside it as ``shown_order``). Shapes by item kind:

- ``pairwise``: ``{"choice": "a" | "b" | "tie", "strength": 0..3 | null, "margin": float | null}``;
  strength 3 = much better, 2 = better, 1 = slightly better, 0 = tie.
- ``ranking``: ``{"ranking": [best_pos, ..., worst_pos]}`` (a full order) or
  ``{"comparisons": [{"a": i, "b": j, "choice": "a" | "b" | "tie"}, ...]}`` (some pairs of a k-wise item).
- ``rating``: ``{"ratings": {"aspect": number, ...}, "scale": [low, high]}`` for the item's one completion.
- ``thumbs``: ``{"label": true | false}`` (unpaired feedback, for KTO).

Any kind may also carry ``"flags": [category, ...]``, ``"critique": str`` and ``"rewrite": str``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tether.errors import TetherError

CHOICES = ("a", "b", "tie")
STRENGTH_LABELS = {3: "much better", 2: "better", 1: "slightly better", 0: "tie"}
FLAG_CATEGORIES = ("pii", "harmful", "policy", "factual", "offensive", "other")


@dataclass(frozen=True)
class Pair:
    """One preference between two item positions. ``tie`` pairs have no winner (chosen/rejected arbitrary)."""

    chosen: int
    rejected: int
    tie: bool = False
    strength: int | None = None
    margin: float | None = None


def _bad(kind: str, reason: str) -> TetherError:
    return TetherError(f"invalid {kind} judgment: {reason}", fix="see tether.feedback.judgments for the value shapes")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (a JSON ``true`` is not a number; NaN and infinities are not finite)."""
    return _is_int(value) or isinstance(value, float) and math.isfinite(value)


def validate_value(kind: str, value: Any, n_completions: int) -> dict[str, Any]:
    """Check a judgment value against its item kind; returns it unchanged or raises TetherError.

    Any JSON may arrive here (an API body, an imported record): every field's type is checked before it is used,
    so a malformed value is a clear refusal, never a TypeError."""
    if not isinstance(value, dict):
        raise _bad(kind, "the value must be a JSON object")
    if kind == "pairwise":
        if n_completions != 2:
            raise _bad(kind, f"a pairwise item has 2 completions, this one has {n_completions}")
        choice = value.get("choice")
        if not isinstance(choice, str) or choice not in CHOICES:
            raise _bad(kind, f"choice must be one of {CHOICES}, got {choice!r}")
        strength = value.get("strength")
        if strength is not None and not (_is_int(strength) and strength in STRENGTH_LABELS):
            raise _bad(kind, f"strength must be 0..3, got {strength!r}")
        if strength == 0 and choice != "tie" or choice == "tie" and strength not in (None, 0):
            raise _bad(kind, "strength 0 means a tie and only a tie has strength 0")
        margin = value.get("margin")
        if margin is not None and not _is_number(margin):
            raise _bad(kind, f"margin must be a finite number, got {margin!r}")
    elif kind == "ranking":
        if "ranking" in value:
            ranking = value["ranking"]
            if not (isinstance(ranking, list) and all(_is_int(p) for p in ranking) and sorted(ranking) == list(range(n_completions))):
                raise _bad(kind, f"ranking must order all positions 0..{n_completions - 1}, got {ranking!r}")
        elif "comparisons" in value:
            comparisons = value["comparisons"]
            if not isinstance(comparisons, list) or not comparisons:
                raise _bad(kind, f"comparisons must be a non-empty list of {{a, b, choice}}, got {comparisons!r}")
            for comp in comparisons:
                if not isinstance(comp, dict):
                    raise _bad(kind, f"each comparison must be an object {{a, b, choice}}, got {comp!r}")
                a, b = comp.get("a"), comp.get("b")
                if not (_is_int(a) and _is_int(b) and 0 <= a < n_completions and 0 <= b < n_completions and a != b):
                    raise _bad(kind, f"comparison positions out of range: {comp!r}")
                if not isinstance(comp.get("choice"), str) or comp["choice"] not in CHOICES:
                    raise _bad(kind, f"comparison choice must be one of {CHOICES}: {comp!r}")
        else:
            raise _bad(kind, "needs 'ranking' or 'comparisons'")
    elif kind == "rating":
        ratings = value.get("ratings")
        if not isinstance(ratings, dict) or not ratings:
            raise _bad(kind, "needs 'ratings': {aspect: number}")
        for aspect, score in ratings.items():
            if not _is_number(score):
                raise _bad(kind, f"rating of {aspect!r} must be a finite number, got {score!r}")
        scale = value.get("scale")
        if scale is not None:
            if not (isinstance(scale, list) and len(scale) == 2 and all(_is_number(s) for s in scale) and scale[0] < scale[1]):
                raise _bad(kind, f"scale must be [low, high] with low < high, got {scale!r}")
            lo, hi = scale
            if any(not lo <= s <= hi for s in ratings.values()):
                raise _bad(kind, f"a rating lies outside the scale {scale}")
    elif kind == "thumbs":
        if not isinstance(value.get("label"), bool):
            raise _bad(kind, "needs 'label': true or false")
    elif kind == "prompt":
        pass
    else:
        raise TetherError(f"unknown item kind {kind!r}", fix="use one of pairwise, ranking, rating, thumbs, prompt")
    flags = value.get("flags")
    if flags is not None and not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
        raise _bad(kind, "flags must be a list of category names")
    return value


def to_pairs(kind: str, value: dict[str, Any]) -> list[Pair]:
    """The preference pairs a judgment states (ties included, marked), in item positions."""
    if kind == "pairwise":
        choice = value["choice"]
        if choice == "tie":
            return [Pair(0, 1, tie=True, strength=0, margin=value.get("margin"))]
        winner = 0 if choice == "a" else 1
        return [Pair(winner, 1 - winner, strength=value.get("strength"), margin=value.get("margin"))]
    if kind == "ranking":
        if "ranking" in value:
            order = value["ranking"]
            return [Pair(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
        pairs = []
        for comp in value["comparisons"]:
            a, b = comp["a"], comp["b"]
            if comp["choice"] == "tie":
                pairs.append(Pair(a, b, tie=True, strength=0))
            else:
                pairs.append(Pair(a, b) if comp["choice"] == "a" else Pair(b, a))
        return pairs
    return []
