"""Reading feedback files, recognising their format, and turning them into canonical training rows.

Files: JSONL, JSON (a list of objects, or an object holding one list), parquet, each optionally gzipped. Every
problem is reported with the file, the line (or record number) and the reason.

Import formats (``tether data import --format``; ``auto`` recognises them by their keys, see ``detect_format``):
- ``trl``: ``{"prompt", "chosen", "rejected"}`` (strings or message lists), or the implicit-prompt form with only
  ``chosen``/``rejected`` conversations; optional ``margin`` (number), ``tie`` (bool), ``subset`` (str).
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

Canonical training rows (what snapshots hold and what every trainer reads) follow TRL's dataset formats:
- preference: ``{"prompt", "chosen", "rejected"}`` plus optional ``"margin"`` (float), ``"tie"`` (bool) and
  ``"subset"`` (str). Plain rows hold strings; conversational rows hold lists of ``{"role", "content"}``
  messages (the prompt's turns, and the assistant turn(s) of each answer).
- sft: ``{"prompt", "completion"}`` or ``{"messages": [...]}``.
- unpaired: ``{"prompt", "completion", "label": bool}`` (KTO).
- rating: ``{"prompt", "completion", "ratings": {aspect: number}}``.
- prompt: ``{"prompt"}``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.errors import TetherError, TooLarge
from tether.inputs import find_unstorable

HH_ASSISTANT = "\n\nAssistant:"
ROW_KINDS = ("preference", "sft", "unpaired", "rating", "prompt")
IMPORT_FORMATS = ("trl", "hh", "pandalm", "ranking", "ratings", "unpaired", "prompts")
# The longest string field an import accepts (characters).
MAX_FIELD_CHARS = 1_000_000
# The annotator of files that carry one label per record without saying who gave it.
SINGLE_ANNOTATOR = "import"
IDENTICAL_PAIR = "identical chosen and rejected"
BOOLEAN_RESPONSE = "a response stored as a JSON boolean, imported as its text ('True'/'False')"


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext in (".jsonl", ".ndjson"):
        if name.endswith(ext):
            return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    raise TetherError(
        f"{path}: unknown file type {path.suffix!r}",
        fix="use .jsonl, .json or .parquet (optionally .gz)",
    )


def where(path: Path, number: int) -> str:
    """``file:LINE`` for JSONL, ``file: record N`` for JSON and parquet: the place every error message names."""
    return f"{path}:{number}" if _file_kind(Path(path)) == "jsonl" else f"{path}: record {number}"


def read_records(
    path: Path,
    *,
    on_bad: Callable[[int, str], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
    max_bytes: int | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_or_record_number, record)`` from a feedback file; clear errors for every failure.

    ``on_bad(number, reason)``, when given, receives the JSONL lines that cannot be read (invalid JSON, not UTF-8,
    not an object) instead of an error, so ``--skip-invalid`` can go on. A truncated gzip stream or a broken JSON
    or parquet file is always an error: nothing after the break can be trusted. ``on_progress(fraction)`` is
    called now and then with the share of the file read (0..1).

    ``max_bytes`` (the web app's uploads) bounds the *decompressed* bytes read, counted while streaming: a small
    gzip of one huge line is refused (``TooLarge``) once the count passes the limit, with at most ``max_bytes``
    read into memory, never the whole expansion.
    """
    path = Path(path)
    if not path.exists():
        raise TetherError(f"file not found: {path}", fix="check the path")
    if path.is_dir():
        raise TetherError(f"{path} is a folder", fix="name a .jsonl, .json or .parquet file")
    kind = _file_kind(path)
    try:
        if kind == "parquet":
            yield from _read_parquet(path, on_progress, max_bytes)
        elif kind == "jsonl":
            yield from _read_jsonl(path, on_bad, on_progress, max_bytes)
        else:
            yield from _read_json(path, on_progress, max_bytes)
    except UnicodeDecodeError as exc:
        raise TetherError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", fix="re-encode the file as UTF-8") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise TetherError(f"{path}: the gzip stream is truncated or corrupt ({exc})", fix="download or copy the file again") from None


def _too_large(path: Path, max_bytes: int) -> TooLarge:
    what = "once decompressed" if path.suffix == ".gz" else ""
    return TooLarge(
        f"{path} holds more than {max_bytes / 2**20:.1f} MB {what}; the limit is {max_bytes / 2**20:.1f} MB".replace("  ", " "),
        fix="split the file into smaller uploads (or raise TETHER_MAX_UPLOAD_MB)",
    )


def _lines(stream: Any, path: Path, max_bytes: int | None) -> Iterator[bytes]:
    """The stream's lines; with ``max_bytes``, no line is read past the bytes left (a line never ends otherwise)."""
    if max_bytes is None:
        yield from stream
        return
    left = max_bytes
    while line := stream.readline(left + 1):
        left -= len(line)
        if left < 0:
            raise _too_large(path, max_bytes)
        yield line


def _read_limited(path: Path, max_bytes: int | None) -> bytes:
    """The file's bytes (decompressed for .gz), refused past ``max_bytes`` without reading further."""
    with path.open("rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
        data = stream.read() if max_bytes is None else stream.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_large(path, max_bytes)
    return data


def _read_jsonl(
    path: Path, on_bad: Callable[[int, str], None] | None, on_progress: Callable[[float], None] | None, max_bytes: int | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    size = max(path.stat().st_size, 1)
    with path.open("rb") as raw:
        # Bytes, decoded line by line: a bad byte is reported with its line and the other lines stay readable.
        stream = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
        for line_no, line in enumerate(_lines(stream, path, max_bytes), start=1):
            if on_progress is not None and line_no % 1000 == 0:
                on_progress(raw.tell() / size)
            if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
                line = line[3:]
            if not line.strip():
                continue
            reason = None
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                reason = f"not UTF-8 text (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
            except json.JSONDecodeError as exc:
                reason = f"invalid JSON ({exc.msg} at column {exc.colno})"
            except RecursionError:
                reason = "invalid JSON (nested too deeply)"
            else:
                if not isinstance(record, dict):
                    reason = f"expected a JSON object, got {type(record).__name__}"
            if reason is not None:
                if on_bad is None:
                    raise TetherError(f"{path}:{line_no}: {reason}", fix="fix or remove that line (`tether data import --skip-invalid` skips such lines)")
                on_bad(line_no, reason)
                continue
            yield line_no, record
    if on_progress is not None:
        on_progress(1.0)


def _read_json(
    path: Path, on_progress: Callable[[float], None] | None = None, max_bytes: int | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    raw = _read_limited(path, max_bytes)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TetherError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})", fix="re-encode the file as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TetherError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})", fix="fix the file, or save it as JSONL (one object per line)") from None
    except RecursionError:
        raise TetherError(f"{path}: invalid JSON (nested too deeply)", fix="fix the file, or save it as JSONL (one object per line)") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise TetherError(f"{path}: expected a list of records", fix="make the top level a JSON list of objects")
        data = lists[0]
    if not isinstance(data, list):
        raise TetherError(f"{path}: expected a list of records", fix="make the top level a JSON list of objects")
    for index, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise TetherError(f"{path}: record {index} is {type(record).__name__}, not an object", fix="each record must be a JSON object")
        if on_progress is not None and index % 1000 == 0:
            on_progress(index / len(data))
        yield index, record
    if on_progress is not None:
        on_progress(1.0)


def _read_parquet(
    path: Path, on_progress: Callable[[float], None] | None = None, max_bytes: int | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        if max_bytes is None:
            source = io.BytesIO(gzip.decompress(path.read_bytes())) if path.suffix == ".gz" else path
            groups: Iterator[Any] = iter([pq.read_table(source)])
            total = None
        else:
            groups, total = _parquet_groups(path, max_bytes)
        index = 0
        for table in groups:  # one row group at a time when bounded
            rows = table.to_pylist()
            total = total or len(rows)
            for record in rows:
                index += 1
                if on_progress is not None and index % 1000 == 0:
                    on_progress(index / total)
                yield index, record
    except (EOFError, gzip.BadGzipFile, zlib.error, TooLarge):
        raise
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise TetherError(f"{path}: cannot read parquet ({exc})", fix="check the file is complete parquet") from None
    if on_progress is not None:
        on_progress(1.0)


# What a Python object costs beyond its bytes, for the bound below (a str or an int is about 50 bytes or more).
_OBJECT_BYTES = 64


def _parquet_groups(path: Path, max_bytes: int) -> tuple[Iterator[Any], int]:
    """A bounded parquet file's row groups (as tables) and its row count.

    Parquet compresses twice: pages (zstd, snappy) and dictionaries (a value stored once, referenced by every row
    that repeats it: 722 bytes of parquet can name 2 GB of text). So the text columns are read as dictionaries,
    and each row group's decoded size (values as referenced, plus a Python object per value) is counted against
    ``max_bytes`` before its rows are made.
    """
    import pyarrow.parquet as pq

    data = io.BytesIO(_read_limited(path, max_bytes))
    schema = pq.ParquetFile(data).schema
    text_leaves = [schema.column(i).path for i in range(len(schema)) if schema.column(i).physical_type == "BYTE_ARRAY"]
    data.seek(0)
    parquet = pq.ParquetFile(data, read_dictionary=text_leaves)

    def groups() -> Iterator[Any]:
        decoded = 0
        for number in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(number)
            decoded += sum(_decoded_bytes(chunk) for column in table.columns for chunk in column.chunks)
            if decoded > max_bytes:
                raise _too_large(path, max_bytes)
            yield table

    return groups(), parquet.metadata.num_rows


def _decoded_bytes(array: Any) -> int:
    """About what ``array.to_pylist()`` will hold: dictionary values counted once per reference."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        lengths = pc.take(pc.binary_length(array.dictionary), array.indices)
        return (pc.sum(lengths).as_py() or 0) + _OBJECT_BYTES * len(array)
    if pa.types.is_struct(kind):
        return sum(_decoded_bytes(array.field(i)) for i in range(kind.num_fields)) + _OBJECT_BYTES * len(array)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        return _decoded_bytes(array.values) + _OBJECT_BYTES * len(array)
    return array.nbytes + _OBJECT_BYTES * len(array)


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


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def preference_row(record: dict[str, Any]) -> dict[str, Any]:
    """A TRL-style or HH-style record as a canonical preference row (raises ValueError with the reason)."""
    if "chosen" not in record or "rejected" not in record:
        missing = [k for k in ("chosen", "rejected") if k not in record]
        raise ValueError(f"missing key(s) {missing}")
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" in record:
        prompt = record["prompt"]
        ok = (isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str)) or (
            _is_messages(prompt) and _is_messages(chosen) and _is_messages(rejected)
        )
        if not ok:
            raise ValueError("prompt/chosen/rejected must be all strings or all message lists")
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    elif _is_messages(chosen) and _is_messages(rejected):
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
    return row


# ---------------------------------------------------------------------------------------------------------------
# Import: recognise a record's format and turn it into an Entry (prompt, completions, item kind, judgments).


@dataclass
class Entry:
    """One imported record, ready for the store.

    ``completions`` are in item positions (0 is "a"); ``judgments`` are ``(annotator, value)`` with values shaped
    as tether.feedback says for ``kind``; ``coerced`` names what was repaired on the way in (counted per reason).
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


# allow_nan=False: a NaN or an infinity is never written as the non-standard tokens NaN / Infinity.
_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def canonical_json(value: Any) -> str:
    """``json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))``, with one shared encoder;
    a non-finite number is a TetherError naming it (imports refuse them, so one here is a bug upstream)."""
    try:
        return _CANONICAL.encode(value)
    except ValueError:
        raise TetherError(
            f"cannot write {find_unstorable(value, 'the row') or 'a non-finite number'}",
            fix="report this: a non-finite number reached a snapshot or an export",
        ) from None


def content_hash(value: Any) -> str:
    """sha256 of a text or a message list (their canonical JSON), for de-duplication within a set."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def messages_text(messages: list[dict[str, Any]]) -> str:
    """A readable plain-text form of a conversation (for display and search; the messages stay the truth)."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


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
    (``tether.inputs``)."""
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
    if isinstance(value, str) or (_is_messages(value) and value):
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
    meta = _extras(record, {"prompt", "chosen", "rejected", "margin", "tie"})
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
    from tether.feedback import validate_value

    prompt_meta: dict[str, Any] = {}
    item_meta: dict[str, Any] = {}
    if "completions" in record:
        prompt = _text_or_messages(record, "prompt")
        completions = record["completions"]
        if not isinstance(completions, list) or len(completions) < 2:
            raise ValueError("'completions' must list at least 2 answers")
        for index, completion in enumerate(completions):
            if not (isinstance(completion, str) or _is_messages(completion)):
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
    from tether.feedback import validate_value

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


def canonical_line(row: dict[str, Any]) -> str:
    """One row as canonical JSON: sorted keys, no spaces, UTF-8 kept, numbers finite."""
    return canonical_json(row)


def rows_digest(rows: list[dict[str, Any]]) -> str:
    """sha256 of the canonical content of ``rows`` (one canonical line per row, joined by newlines)."""
    import hashlib

    digest = hashlib.sha256()
    for index, row in enumerate(rows):
        if index:
            digest.update(b"\n")
        digest.update(canonical_line(row).encode("utf-8"))
    return digest.hexdigest()


def read_snapshot_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def resolve_snapshot(name: str) -> Path:
    """The JSONL file of the snapshot ``name`` in the current workspace (refuses purged snapshots)."""
    from sqlalchemy import select

    from tether.cli.common import workspace_url
    from tether.store.db import session_scope
    from tether.store.tables import Snapshot

    ws, url = workspace_url()
    with session_scope(url, readonly=True) as session:
        snap = session.scalar(select(Snapshot).where(Snapshot.name == name))
        if snap is None:
            raise TetherError(f"no snapshot named {name!r} in {ws.root}", fix="see `tether data list`, or make one with `tether data snapshot`")
        if snap.purged_at is not None:
            raise TetherError(f"snapshot {name!r} was built from purged data ({snap.purge_note})", fix="make a new snapshot from the current data")
        path = Path(snap.path)
    if not path.is_absolute():
        path = ws.root / path
    if not path.exists():
        raise TetherError(f"the file of snapshot {name!r} is missing: {path}", fix="make the snapshot again")
    return path


def load_rows(spec: str | Path, kind: str = "preference") -> list[dict[str, Any]]:
    """Training rows from ``snapshot:NAME`` or a file, as canonical rows of ``kind`` (see the module doc).

    Files of TRL or HH pairs give their rows as they are; PandaLM-style multi-annotator and k-wise ranking files
    give the pairs their judgments decide by majority (as a majority snapshot of the imported file would).
    """
    if kind not in ROW_KINDS:
        raise ValueError(f"unknown row kind {kind!r}; valid: {ROW_KINDS}")
    spec_text = str(spec)
    if spec_text.startswith("snapshot:"):
        path = resolve_snapshot(spec_text.split(":", 1)[1])
        records = list(enumerate(read_snapshot_rows(path), start=1))
    else:
        path = Path(spec_text)
        records = list(read_records(path))
    if not records:
        raise TetherError(f"{path}: no records", fix="the file is empty; point at a file with rows")
    if kind in ("preference", "sft") and not spec_text.startswith("snapshot:") and detect_format(records[0][1]) in ("pandalm", "ranking"):
        pairs = _judged_preference_rows(path, records)
        return pairs if kind == "preference" else [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs]
    rows = []
    for number, record in records:
        try:
            rows.append(_canonical(record, kind))
        except ValueError as exc:
            raise TetherError(f"{path}: record {number}: {exc}", fix=f"expected {kind} rows; see `tether data import --help` for the formats") from None
    return rows


def _judged_preference_rows(path: Path, records: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Multi-annotator (pandalm) and k-wise (ranking) records as preference rows, decided by majority with ties
    and split votes left out: the rows (and digest) `tether data import` + `tether data snapshot` would give."""
    from tether.store.snapshots import Vote, majority_pairs

    fmt = detect_format(records[0][1])
    entries: list[Entry] = []
    votes: list[Any] = []
    annotators: dict[str, int] = {}
    for number, record in records:
        try:
            entry = parse_record(fmt, record)
        except (ValueError, SkipRecord) as exc:
            raise TetherError(f"{where(path, number)}: {exc}", fix=f"expected {fmt} records; see the README's Data formats") from None
        for annotator, value in entry.judgments:
            votes.append(Vote(len(entries), annotators.setdefault(annotator, len(annotators)), entry.kind, value))
        entries.append(entry)
    rows = []
    for pair in majority_pairs(votes):
        if pair.tie:
            continue
        entry = entries[pair.item_id]
        row = {"prompt": entry.prompt, "chosen": entry.completions[pair.chosen], "rejected": entry.completions[pair.rejected]}
        if pair.margin is not None:
            row["margin"] = float(pair.margin)
        rows.append(row)
    return rows


def _canonical(record: dict[str, Any], kind: str) -> dict[str, Any]:
    if kind == "preference":
        return preference_row(record)
    if kind == "sft":
        if _is_messages(record.get("messages")):
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
