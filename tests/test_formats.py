"""Reading feedback files and recognising their formats (no database)."""

from __future__ import annotations

import gzip
import json

import pytest

from tether.data.canonical import canonical_line, split_hh
from tether.data.formats import BOOLEAN_RESPONSE, SkipRecord, detect_format, parse_record
from tether.data.records import read_records, where
from tether.data.rows import load_rows
from tether.errors import TetherError


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_split_hh_cuts_at_the_last_shared_assistant_turn():
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"
    chosen, rejected = prompt + " Fine, thanks.", prompt + " Fine. Go away."
    assert split_hh(chosen, rejected) == (prompt, " Fine, thanks.", " Fine. Go away.")
    # The shared prefix " Fine" runs past the marker: the cut still falls right after "Assistant:".
    with pytest.raises(ValueError, match="no '.*Assistant:' turn"):
        split_hh("\n\nHuman: a", "\n\nHuman: b")


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "trl"),
        ({"chosen": [{"role": "user", "content": "p"}], "rejected": [{"role": "user", "content": "p"}]}, "trl"),
        ({"chosen": "\n\nHuman: p\n\nAssistant: a", "rejected": "\n\nHuman: p\n\nAssistant: b"}, "hh"),
        ({"instruction": "i", "input": "", "response1": "a", "response2": "b", "annotator1": 1}, "pandalm"),
        ({"question": "q", "prediction 1": "a", "prediction 2": "b", "preference": [1]}, "ranking"),
        ({"prompt": "p", "completions": ["a", "b"], "ranking": [1, 0]}, "ranking"),
        ({"prompt": "p", "completion": "a", "ratings": {"helpful": 4}}, "ratings"),
        ({"prompt": "p", "completion": "a", "rating": 3}, "ratings"),
        ({"prompt": "p", "completion": "a", "label": True}, "unpaired"),
        ({"prompt": "p"}, "prompts"),
        ({"question": "q", "answer": "a"}, None),
        ({"prompt": "p", "completion": "a"}, None),  # SFT data is not feedback
    ],
)
def test_detect_format_by_keys(record, fmt):
    assert detect_format(record) == fmt


def test_trl_plain_conversational_and_implicit_prompt():
    entry = parse_record("trl", {"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 2, "subset": "math"})
    assert (entry.prompt, entry.completions, entry.kind) == ("2+2?", ["4", "5"], "pairwise")
    assert entry.judgments == [("import", {"choice": "a", "strength": None, "margin": 2.0})]
    assert entry.item_meta == {"subset": "math"}
    user = {"role": "user", "content": "hi"}
    good, bad = {"role": "assistant", "content": "hello"}, {"role": "assistant", "content": "go away"}
    entry = parse_record("trl", {"chosen": [user, good], "rejected": [user, bad]})
    assert entry.prompt == [user] and entry.completions == [[good], [bad]]
    tie = parse_record("trl", {"prompt": "p", "chosen": "a", "rejected": "b", "tie": True})
    assert tie.judgments[0][1]["choice"] == "tie"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"prompt": "p", "chosen": "a"}, "missing key"),
        ({"prompt": "p", "chosen": "a", "rejected": ["b"]}, "all strings or all message lists"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "margin must be a number"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "tie": "yes"}, "tie must be true or false"),
    ],
)
def test_invalid_trl_rows_say_why(record, reason):
    with pytest.raises(ValueError, match=reason):
        parse_record("trl", record)


def test_identical_pairs_are_skipped_not_invalid():
    with pytest.raises(SkipRecord, match="identical"):
        parse_record("hh", {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: b"})
    with pytest.raises(SkipRecord):
        parse_record("trl", {"prompt": "p", "chosen": "same", "rejected": "same"})


def test_pandalm_votes_one_judgment_per_annotator_and_boolean_responses_become_text():
    record = {"idx": 157, "instruction": "Verify.", "input": "odd*odd is odd", "response1": True, "response2": "True.",
              "annotator1": 1, "annotator2": 2, "annotator3": 0, "cmp_key": "m1_m2"}
    entry = parse_record("pandalm", record)
    assert entry.prompt == "Verify.\n\nodd*odd is odd"
    assert entry.completions == ["True", "True."]
    assert entry.coerced == [BOOLEAN_RESPONSE]
    assert [(a, v["choice"]) for a, v in entry.judgments] == [("annotator1", "a"), ("annotator2", "b"), ("annotator3", "tie")]
    assert entry.external_id == "157" and entry.item_meta == {"cmp_key": "m1_m2"}
    with pytest.raises(ValueError, match="annotator2 must be 1"):
        parse_record("pandalm", {**record, "annotator2": 7})
    with pytest.raises(ValueError, match="response2 must be text"):
        parse_record("pandalm", {**record, "response2": None})


def test_qa_feedback_votes_follow_the_pair_order_1v2_1v3_1v4_2v3_2v4_3v4():
    record = {"question": "q", "passages": [["t", "p"]], "prediction 1": "p1", "prediction 2": "p2",
              "prediction 3": "p3", "prediction 4": "p4", "preference": [0, 1, 2, 1, 0, 2], "feedback": {"errors": []}}
    entry = parse_record("ranking", record)
    assert entry.kind == "ranking" and entry.completions == ["p1", "p2", "p3", "p4"]
    assert entry.judgments[0][1] == {"comparisons": [
        {"a": 0, "b": 1, "choice": "tie"}, {"a": 0, "b": 2, "choice": "a"}, {"a": 0, "b": 3, "choice": "b"},
        {"a": 1, "b": 2, "choice": "a"}, {"a": 1, "b": 3, "choice": "tie"}, {"a": 2, "b": 3, "choice": "b"},
    ]}
    assert entry.prompt_meta == {"passages": [["t", "p"]]} and entry.item_meta == {"feedback": {"errors": []}}
    with pytest.raises(ValueError, match="must list 6 votes"):
        parse_record("ranking", {**record, "preference": [1, 2]})


def test_generic_ranking_ratings_unpaired_and_prompts():
    entry = parse_record("ranking", {"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]})
    assert entry.judgments[0][1] == {"ranking": [2, 0, 1]}
    with pytest.raises(ValueError, match="ranking must order all positions"):
        parse_record("ranking", {"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, 0]})
    rating = parse_record("ratings", {"prompt": "p", "completion": "a", "ratings": {"helpful": 4, "honest": 5}, "scale": [1, 5]})
    assert (rating.kind, rating.judgments[0][1]) == ("rating", {"ratings": {"helpful": 4, "honest": 5}, "scale": [1, 5]})
    assert parse_record("ratings", {"prompt": "p", "completion": "a", "rating": 2}).judgments[0][1] == {"ratings": {"overall": 2}}
    with pytest.raises(ValueError, match="outside the scale"):
        parse_record("ratings", {"prompt": "p", "completion": "a", "rating": 9, "scale": [1, 5]})
    thumbs = parse_record("unpaired", {"prompt": "p", "completion": "a", "label": False})
    assert (thumbs.kind, thumbs.judgments[0][1]) == ("thumbs", {"label": False})
    with pytest.raises(ValueError, match="label must be true or false"):
        parse_record("unpaired", {"prompt": "p", "completion": "a", "label": "no"})
    assert parse_record("prompts", {"prompt": "p", "id": 7}).prompt_meta == {"id": 7}


def test_fields_over_the_limit_are_refused_with_their_name():
    with pytest.raises(ValueError, match=r"field 'chosen\[1\].content' holds 1,000,001 characters"):
        parse_record("trl", {"chosen": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "x" * 1_000_001}],
                             "rejected": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "y"}]})


def test_read_records_json_jsonl_gz_parquet_and_bom(tmp_path):
    records = [{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p2", "chosen": "c", "rejected": "d"}]
    plain = _write_jsonl(tmp_path / "a.jsonl", records)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "c.json").write_text(json.dumps({"data": records}), encoding="utf-8")
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), tmp_path / "e.parquet")
    for name in ("a.jsonl", "b.jsonl.gz", "c.json", "d.jsonl", "e.parquet"):
        assert [r for _, r in read_records(tmp_path / name)] == records, name
    assert where(tmp_path / "a.jsonl", 3) == f"{tmp_path / 'a.jsonl'}:3"
    assert where(tmp_path / "c.json", 3) == f"{tmp_path / 'c.json'}: record 3"


def test_read_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n\n{"prompt": "caf\xe9"}\n[1, 2]\n{"prompt": \n')
    with pytest.raises(TetherError, match=r"bad.jsonl:3: not UTF-8 text \(byte 0xe9 at column 16\)"):
        list(read_records(path))
    bad = []
    good = list(read_records(path, on_bad=lambda line, reason: bad.append((line, reason))))
    assert good == [(1, {"prompt": "ok"})]
    assert [line for line, _ in bad] == [3, 4, 5]
    assert "expected a JSON object, got list" in bad[1][1] and "invalid JSON" in bad[2][1]
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"prompt": "x"}\n' * 5000)[:200])
    with pytest.raises(TetherError, match="truncated or corrupt"):
        list(read_records(truncated))
    (tmp_path / "x.csv").write_text("prompt\nhi\n", encoding="utf-8")
    with pytest.raises(TetherError, match="unknown file type"):
        list(read_records(tmp_path / "x.csv"))


def test_load_rows_reads_files_as_canonical_rows(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1}])
    assert load_rows(path) == [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0}]
    assert load_rows(path, "sft") == [{"prompt": "p", "completion": "a"}]
    with pytest.raises(TetherError, match="record 1"):
        load_rows(path, "unpaired")


def test_canonical_rows_never_hold_nan_or_infinity():
    assert canonical_line({"margin": 1.5, "prompt": "p"}) == '{"margin":1.5,"prompt":"p"}'
    for bad in (float("nan"), float("inf")):
        with pytest.raises(TetherError, match="cannot write the row.margin is (NaN|Infinity)"):
            canonical_line({"prompt": "p", "margin": bad})
