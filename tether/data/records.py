"""Reading feedback files, and canonical JSON.

Files: JSONL, JSON (a list of objects, or an object holding one list), parquet, each optionally gzipped. Every
problem is reported with the file, the line (or record number) and the reason.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tether.checks.inputs import find_unstorable
from tether.errors import TetherError, TooLarge


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
