"""Property tests of `tether data import` on SQLite and PostgreSQL: on arbitrary bytes (every file kind) and on
arbitrary records (the formats' keys with any JSON values, NUL, lone surrogates, NaN, huge numbers), an import
either succeeds and stores exactly what it reports, or raises a TetherError with a one-line message and stores
nothing: never another exception (a traceback for the user), never half a file.

Example counts are bounded so the suite stays fast (docs/benchmarks.md, Fuzzing); ``TETHER_FUZZ_EXAMPLES``
scales them for a longer run.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tether.errors import TetherError
from tether.store.db import session_scope
from tether.store.importer import import_file
from tether.store.tables import Base

SCALE = int(os.environ.get("TETHER_FUZZ_EXAMPLES", "6"))
RECORD_EXAMPLES = 10 * SCALE
BYTES_EXAMPLES = 5 * SCALE
_names = itertools.count()

KEYS = [
    "prompt", "chosen", "rejected", "completion", "completions", "ranking", "comparisons", "preference", "ratings",
    "rating", "scale", "label", "margin", "tie", "subset", "instruction", "input", "response1", "response2",
    "annotator1", "annotator2", "question", "prediction 1", "prediction 2", "passages", "idx", "gold", "meta", "id",
]
ODD = ["\x00", "\ud800", "\udfff", "\ud83d\ude00", "\n\nHuman: ", "\n\nAssistant:", "\u202e", "\ufeff", ""]
texts = st.lists(st.one_of(st.text(st.characters(codec=None), max_size=8), st.sampled_from(ODD)), max_size=6).map("".join)
numbers = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, 2, 3]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "\x00"]), "content": texts}), min_size=1, max_size=3)
values = st.recursive(st.one_of(scalars, messages), lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
                      max_leaves=12)
keys = st.one_of(st.sampled_from(KEYS), texts)
# Shapes close to each format, with any values, so the parsers past detection are reached too.
shaped = st.one_of(
    st.fixed_dictionaries({"prompt": texts, "chosen": st.one_of(texts, messages), "rejected": st.one_of(texts, messages)},
                          optional={"margin": numbers, "tie": scalars, "subset": scalars}),
    st.fixed_dictionaries({"chosen": texts.map(lambda t: "\n\nHuman: q\n\nAssistant:" + t), "rejected": texts.map(lambda t: "\n\nHuman: q\n\nAssistant:" + t)}),
    st.fixed_dictionaries({"instruction": texts, "response1": scalars, "response2": scalars, "annotator1": scalars, "annotator2": scalars}),
    st.fixed_dictionaries({"prompt": texts, "completions": st.lists(st.one_of(texts, messages), max_size=4)},
                          optional={"ranking": values, "comparisons": values, "preference": values}),
    st.fixed_dictionaries({"prompt": texts, "completion": texts}, optional={"ratings": values, "rating": numbers, "scale": values, "label": scalars}),
    st.fixed_dictionaries({"prompt": st.one_of(texts, messages)}),
)
records = st.one_of(shaped, st.dictionaries(keys, values, max_size=8)).flatmap(
    lambda record: st.dictionaries(keys, values, max_size=2).map(lambda extra: {**extra, **record})
)


def _counts(url: str) -> dict[str, int]:
    with session_scope(url, readonly=True) as session:
        return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def _import_checked(url: str, path, skip_invalid: bool = False) -> str:
    """Import ``path``; check the store against the outcome. Returns "imported" or "refused"."""
    before = _counts(url)
    name = f"fuzz{next(_names)}"
    try:
        with session_scope(url) as session:
            result = import_file(path, name, session=session, skip_invalid=skip_invalid)
    except TetherError as exc:
        assert "\n" not in exc.message and exc.message, repr(exc.message)
        after = _counts(url)
        assert after == before, (exc.message, {k: (before[k], after[k]) for k in before if before[k] != after[k]})
        return "refused"
    after = _counts(url)
    grew = {k: after[k] - before[k] for k in before}
    assert grew["project"] == 1
    assert (grew["item"], grew["judgment"], grew["prompt"], grew["completion"]) == (result.items, result.judgments, result.prompts, result.completions)
    assert result.imported + result.skipped == result.records
    return "imported"


def _write(tmp_path, suffix: str, payload: bytes):
    path = tmp_path / f"data{next(_names)}{suffix}"
    path.write_bytes(gzip.compress(payload) if suffix.endswith(".gz") else payload)
    return path


@settings(max_examples=RECORD_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(records, min_size=1, max_size=5), as_list=st.booleans(), skip_invalid=st.booleans())
def test_arbitrary_records_import_whole_or_not_at_all(db_url, tmp_path, rows, as_list, skip_invalid):
    if as_list:
        path = _write(tmp_path, ".json", json.dumps(rows).encode())
    else:
        path = _write(tmp_path, ".jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    _import_checked(db_url, path, skip_invalid=skip_invalid)


def _parquet_of(rows) -> bytes | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(rows)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
    except Exception:  # rows whose values pyarrow cannot type: not a parquet file anyone could write
        return None
    return buffer.getvalue()


@settings(max_examples=BYTES_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    payload=st.one_of(
        st.binary(max_size=300),
        st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([b"\n", b"{", b"}", b'"prompt": ', b'"chosen": "a", "rejected": "b"', b"\xef\xbb\xbf", b"NaN", b"[" * 50])),
                 max_size=20).map(b"".join),
    ),
    suffix=st.sampled_from([".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz", ".parquet.gz"]),
    cut=st.integers(min_value=0, max_value=400),
)
def test_arbitrary_bytes_import_or_give_a_one_line_error(db_url, tmp_path, payload, suffix, cut):
    path = _write(tmp_path, suffix, payload)
    if suffix.endswith(".gz") and cut:  # a truncated stream too
        path.write_bytes(path.read_bytes()[: max(1, len(path.read_bytes()) - cut % 10)])
    _import_checked(db_url, path)


@settings(max_examples=BYTES_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(shaped, min_size=1, max_size=4), gz=st.booleans())
def test_arbitrary_parquet_records_import_whole_or_not_at_all(db_url, tmp_path, rows, gz):
    data = _parquet_of(rows)
    if data is None:
        return
    path = _write(tmp_path, ".parquet.gz" if gz else ".parquet", data)
    _import_checked(db_url, path)
