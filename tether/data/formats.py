"""Recognising a feedback record's format and turning it into an ``Entry`` (prompt, completions, item kind,
judgments), for the importer and for training rows read straight from a multi-annotator file.

Import formats (``tether data import --format``; ``auto`` recognises them by their keys, see ``detect_format``):
- ``trl``: ``{"prompt", "chosen", "rejected"}`` (strings or message lists), or the implicit-prompt form with only
  ``chosen``/``rejected`` conversations; optional ``margin`` (number), ``tie`` (bool), ``subset`` (str), ``weight``
  (a number >= 0, kept in the item's meta and written back by snapshots).
- ``hh``: HH-RLHF ``{"chosen", "rejected"}``, two whole dialogues; the prompt is their common prefix up to and
  including the last ``"\\n\\nAssistant:"``. Pairs whose two texts are identical are skipped and counted.
- ``pandalm``: ``{"instruction", "input", "response1", "response2", "annotator1", "annotator2", ...}`` with votes
  1 = response1 better, 2 = response2 better, 0 = tie; each vote is one judgment by its own external annotator.
  A response stored as a JSON boolean (6 records of PandaLM's test set hold ``true``) is imported as its text
  (``"True"``) and reported under ``coerced``: the item and its three votes stay.
- ``ranking``: k-wise items. ``{"prompt", "completions": [...], "ranking": [best, ..., worst]}`` (positions), or
  ``"comparisons": [{"a", "b", "choice"}]``, or ``"preference"`` (below); and the qa-feedback form
  ``{"question", "prediction 1".."prediction k", "preference": [...]}`` whose k(k-1)/2 entries cover the pairs in
  the order 1v2, 1v3, .., 1vk, 2v3, .. with 1 = first better, 2 = second better, 0 = no preference (a tie).
- ``ratings``: ``{"prompt", "completion", "ratings": {aspect: number}}`` or ``"rating": number``; optional
  ``"scale": [low, high]``.
- ``unpaired``: ``{"prompt", "completion", "label": true | false}`` (thumbs up/down, for KTO).
- ``prompts``: ``{"prompt"}`` only.

No string field may exceed ``MAX_FIELD_CHARS`` (1,000,000 characters): a longer one is refused with the line that
holds it (such a field is nearly always a broken export or a pasted blob; no model context holds it).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from tether.checks.inputs import find_unstorable
from tether.data.canonical import is_messages, preference_row
from tether.errors import TetherError
from tether.feedback.judgments import validate_value

IMPORT_FORMATS = ("trl", "hh", "pandalm", "ranking", "ratings", "unpaired", "prompts")


# The longest string field an import accepts (characters).
MAX_FIELD_CHARS = 1_000_000


# The annotator of files that carry one label per record without saying who gave it.
SINGLE_ANNOTATOR = "import"


IDENTICAL_PAIR = "identical chosen and rejected"


BOOLEAN_RESPONSE = "a response stored as a JSON boolean, imported as its text ('True'/'False')"


@dataclass
class Entry:
    """One imported record, ready for the store.

    ``completions`` are in item positions (0 is "a"); ``judgments`` are ``(annotator, value)`` with values shaped
    as tether.feedback.judgments says for ``kind``; ``coerced`` names what was repaired on the way in (counted per reason).
    """

    prompt: str | list[dict[str, Any]]
    completions: list[Any]
    kind: str
    judgments: list[tuple[str, dict[str, Any]]]
    prompt_meta: dict[str, Any] = field(default_factory=dict)
    item_meta: dict[str, Any] = field(default_factory=dict)
    external_id: str | None = None
    coerced: list[str] = field(default_factory=list)


class SkipRecord(Exception):
    """A well-formed record that carries no usable judgment (an identical pair): skipped and counted, never an error."""


_ANNOTATOR_KEY = re.compile(r"annotator(\d+)")


_PREDICTION_KEY = re.compile(r"prediction (\d+)")


_VOTE_CHOICE = {1: "a", 2: "b", 0: "tie"}  # PandaLM and qa-feedback votes


def detect_format(record: dict[str, Any]) -> str | None:
    """The import format a record's keys announce, or None."""
    keys = record.keys()
    if "chosen" in keys and "rejected" in keys:
        if "prompt" not in keys and isinstance(record["chosen"], str) and isinstance(record["rejected"], str):
            return "hh"
        return "trl"
    if "response1" in keys and "response2" in keys and any(_ANNOTATOR_KEY.fullmatch(k) for k in keys):
        return "pandalm"
    if ("prediction 1" in keys and "preference" in keys) or (
        "completions" in keys and keys & {"ranking", "comparisons", "preference"}
    ):
        return "ranking"
    if "completion" in keys and ("ratings" in keys or "rating" in keys):
        return "ratings"
    if "completion" in keys and "label" in keys:
        return "unpaired"
    if "prompt" in keys and not keys & {"completion", "completions", "response", "answer"}:
        return "prompts"
    return None


FORMAT_KEYS = (
    "trl: prompt/chosen/rejected; hh: chosen/rejected dialogues; pandalm: instruction/response1/response2/annotatorN; "
    "ranking: prompt/completions/ranking or question/prediction N/preference; ratings: prompt/completion/ratings; "
    "unpaired: prompt/completion/label; prompts: prompt"
)


def parse_record(fmt: str, record: dict[str, Any]) -> Entry:
    """A record of import format ``fmt`` as an Entry; ValueError(reason) when it is invalid, SkipRecord when empty.

    A record holding text that cannot be stored (NUL, lone surrogates) or a non-finite number anywhere is invalid
    (``tether.checks.inputs``)."""
    problem = find_unstorable(record)
    if problem is not None:
        raise ValueError(problem)
    for key, value in record.items():
        if isinstance(value, str):
            if len(value) > MAX_FIELD_CHARS:
                _check_sizes(value, key)
        elif isinstance(value, (dict, list)):
            _check_sizes(value, key)
    if fmt in ("trl", "hh"):
        return _parse_preference(fmt, record)
    if fmt == "pandalm":
        return _parse_pandalm(record)
    if fmt == "ranking":
        return _parse_ranking(record)
    if fmt == "ratings":
        return _parse_rating(record)
    if fmt == "unpaired":
        return _parse_unpaired(record)
    if fmt == "prompts":
        return Entry(_text_or_messages(record, "prompt"), [], "prompt", [], prompt_meta=_extras(record, {"prompt"}))
    raise ValueError(f"unknown import format {fmt!r}; valid: {IMPORT_FORMATS}")


def _check_sizes(value: Any, key: str = "") -> None:
    if isinstance(value, str):
        if len(value) > MAX_FIELD_CHARS:
            raise ValueError(f"field {key!r} holds {len(value):,} characters, over the limit of {MAX_FIELD_CHARS:,}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_sizes(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_sizes(v, f"{key}[{i}]")


def _text_or_messages(record: dict[str, Any], key: str) -> str | list[dict[str, Any]]:
    if key not in record:
        raise ValueError(f"missing key {key!r}")
    value = record[key]
    if isinstance(value, str) or (is_messages(value) and value):
        return value
    raise ValueError(f"{key} must be text or a list of {{role, content}} messages, got {type(value).__name__}")


def _extras(record: dict[str, Any], used: set[str]) -> dict[str, Any]:
    """The record's other short scalar fields (ids, sources, model names), kept in the item's meta."""
    return {
        k: v
        for k, v in record.items()
        if k not in used and (v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 200))
    }


# The common pairwise values, shared by every entry that states them (the importer binds each object once).
# Entries' values are read-only.
_PLAIN_PAIRWISE = {c: {"choice": c, "strength": None, "margin": None} for c in ("a", "b", "tie")}


def _pairwise_value(choice: str, margin: float | None = None) -> dict[str, Any]:
    if margin is None:
        return _PLAIN_PAIRWISE[choice]
    return {"choice": choice, "strength": None, "margin": margin}


def _parse_preference(fmt: str, record: dict[str, Any]) -> Entry:
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if fmt == "hh" and "prompt" not in record and not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise ValueError("hh rows hold two whole dialogues as strings in 'chosen' and 'rejected'")
    if chosen is not None and chosen == rejected:
        raise SkipRecord(IDENTICAL_PAIR)
    row = preference_row(record)
    if row["chosen"] == row["rejected"]:
        raise SkipRecord(IDENTICAL_PAIR)
    value = _pairwise_value("tie" if row.get("tie") else "a", row.get("margin"))
    meta = _extras(record, {"prompt", "chosen", "rejected", "margin", "tie", "weight"})
    if "weight" in row:  # the row's weight stays with its item: a snapshot of the set writes it back
        meta["weight"] = row["weight"]
    return Entry(row["prompt"], [row["chosen"], row["rejected"]], "pairwise", [(SINGLE_ANNOTATOR, value)], item_meta=meta)


def _parse_pandalm(record: dict[str, Any]) -> Entry:
    missing = [k for k in ("instruction", "response1", "response2") if k not in record]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    instruction, extra_input = record["instruction"], record.get("input") or ""
    if not isinstance(instruction, str) or not isinstance(extra_input, str):
        raise ValueError("instruction and input must be text")
    prompt = f"{instruction}\n\n{extra_input}" if extra_input else instruction
    completions, coerced = [], []
    for key in ("response1", "response2"):
        response = record[key]
        if isinstance(response, bool):
            # PandaLM's test set holds `true` where a model answered "True": keep the item, import the text.
            response = str(response)
            coerced.append(BOOLEAN_RESPONSE)
        elif not isinstance(response, str):
            raise ValueError(f"{key} must be text, got {type(response).__name__}")
        completions.append(response)
    votes = _annotator_keys(tuple(record))
    judgments = []
    for key in votes:
        vote = record[key]
        if vote is None:  # this annotator did not judge the item
            continue
        if isinstance(vote, bool) or vote not in _VOTE_CHOICE:
            raise ValueError(f"{key} must be 1 (response1 better), 2 (response2 better) or 0 (tie), got {vote!r}")
        judgments.append((key, _pairwise_value(_VOTE_CHOICE[vote])))
    if not judgments:
        raise ValueError("no annotator votes (annotatorN keys holding 0, 1 or 2)")
    used = {"instruction", "input", "response1", "response2", "idx", *votes}
    external_id = str(record["idx"]) if record.get("idx") is not None else None
    return Entry(prompt, completions, "pairwise", judgments, item_meta=_extras(record, used), external_id=external_id, coerced=coerced)


@functools.lru_cache(maxsize=64)
def _annotator_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The annotatorN keys among ``keys``, in annotator order (every record of a file has the same keys)."""
    return tuple(m.group(0) for m in sorted(filter(None, map(_ANNOTATOR_KEY.fullmatch, keys)), key=lambda m: int(m.group(1))))


def _comparisons_from_votes(votes: Any, k: int) -> list[dict[str, Any]]:
    """qa-feedback style votes over the pairs (0,1), (0,2), .., (k-2,k-1) as feedback comparisons."""
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    if not isinstance(votes, list) or len(votes) != len(pairs):
        raise ValueError(f"'preference' must list {len(pairs)} votes for {k} completions (pairs 1v2, 1v3, ..), got {votes!r}")
    comparisons = []
    for (i, j), vote in zip(pairs, votes):
        if isinstance(vote, bool) or vote not in _VOTE_CHOICE:
            raise ValueError(f"preference votes must be 1 (first better), 2 (second better) or 0 (none), got {vote!r}")
        comparisons.append({"a": i, "b": j, "choice": _VOTE_CHOICE[vote]})
    return comparisons


def _parse_ranking(record: dict[str, Any]) -> Entry:
    prompt_meta: dict[str, Any] = {}
    item_meta: dict[str, Any] = {}
    if "completions" in record:
        prompt = _text_or_messages(record, "prompt")
        completions = record["completions"]
        if not isinstance(completions, list) or len(completions) < 2:
            raise ValueError("'completions' must list at least 2 answers")
        for index, completion in enumerate(completions):
            if not (isinstance(completion, str) or is_messages(completion)):
                raise ValueError(f"completions[{index}] must be text or a message list")
        if "ranking" in record:
            value: dict[str, Any] = {"ranking": record["ranking"]}
        elif "comparisons" in record:
            value = {"comparisons": record["comparisons"]}
        else:
            value = {"comparisons": _comparisons_from_votes(record.get("preference"), len(completions))}
        used = {"prompt", "completions", "ranking", "comparisons", "preference"}
    else:  # qa-feedback: question, "prediction 1".."prediction k", preference
        prompt = _text_or_messages(record, "question")
        numbers = sorted(int(m.group(1)) for m in map(_PREDICTION_KEY.fullmatch, record) if m)
        if numbers != list(range(1, len(numbers) + 1)) or len(numbers) < 2:
            raise ValueError(f"expected keys 'prediction 1'..'prediction k' (k >= 2), got numbers {numbers}")
        completions = []
        for n in numbers:
            completion = record[f"prediction {n}"]
            if not isinstance(completion, str):
                raise ValueError(f"'prediction {n}' must be text")
            completions.append(completion)
        value = {"comparisons": _comparisons_from_votes(record.get("preference"), len(completions))}
        if record.get("passages") is not None:
            prompt_meta["passages"] = record["passages"]
        for key in ("gold", "feedback"):  # the reference answer; span errors and the corrected prediction 1
            if record.get(key) is not None:
                item_meta[key] = record[key]
        used = {"question", "preference", "passages", "gold", "feedback", *(f"prediction {n}" for n in numbers)}
    try:
        validate_value("ranking", value, len(completions))
    except TetherError as exc:
        raise ValueError(exc.message) from None
    item_meta.update(_extras(record, used))
    return Entry(prompt, completions, "ranking", [(SINGLE_ANNOTATOR, value)], prompt_meta=prompt_meta, item_meta=item_meta)


def _parse_rating(record: dict[str, Any]) -> Entry:
    prompt = _text_or_messages(record, "prompt")
    completion = _text_or_messages(record, "completion")
    ratings = record.get("ratings")
    if ratings is None and "rating" in record:
        ratings = {"overall": record["rating"]}
    if not isinstance(ratings, dict) or not ratings:
        raise ValueError("expected 'ratings': {aspect: number} or 'rating': number")
    value: dict[str, Any] = {"ratings": ratings}
    if record.get("scale") is not None:
        scale = record["scale"]
        if not (isinstance(scale, list) and len(scale) == 2 and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scale)):
            raise ValueError(f"scale must be [low, high], got {scale!r}")
        value["scale"] = scale
    try:
        validate_value("rating", value, 1)
    except TetherError as exc:
        raise ValueError(exc.message) from None
    meta = _extras(record, {"prompt", "completion", "ratings", "rating", "scale"})
    return Entry(prompt, [completion], "rating", [(SINGLE_ANNOTATOR, value)], item_meta=meta)


def _parse_unpaired(record: dict[str, Any]) -> Entry:
    prompt = _text_or_messages(record, "prompt")
    completion = _text_or_messages(record, "completion")
    label = record.get("label")
    if not isinstance(label, bool):
        raise ValueError(f"label must be true or false, got {label!r}")
    meta = _extras(record, {"prompt", "completion", "label"})
    return Entry(prompt, [completion], "thumbs", [(SINGLE_ANNOTATOR, {"label": label})], item_meta=meta)
