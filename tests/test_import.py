"""`tether data import`: real data sets on SQLite and PostgreSQL, bad inputs, concurrency."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter

import pytest
from sqlalchemy import func, select

from tether.errors import TetherError
from tether.store.db import session_scope
from tether.store.importer import import_file
from tether.store.tables import AuditEvent, Base, Item, ItemCompletion, Judgment, Project, Prompt, User

HH_HARMLESS = "hh-rlhf/harmless-base/test.jsonl.gz"
HH_HELPFUL = "hh-rlhf/helpful-base/test.jsonl.gz"
PANDALM = "pandalm/testset-v1.json"
QA_FEEDBACK = "qa-feedback/dev_feedback.json"


def table_counts(url: str) -> dict[str, int]:
    """Rows in every table of the store."""
    with session_scope(url) as session:
        return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def _import(url, path, name, **kwargs):
    with session_scope(url) as session:
        return import_file(path, name, session=session, **kwargs)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(("split", "expected_pairs", "expected_identical"), [(HH_HARMLESS, 2312, 0), (HH_HELPFUL, 2352, 2)])
def test_hh_imports_exact_pair_counts(any_workspace, cli, shared_data, split, expected_pairs, expected_identical):
    path = shared_data / split
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raw = [json.loads(line) for line in fh]
    identical = sum(r["chosen"] == r["rejected"] for r in raw)
    assert (len(raw) - identical, identical) == (expected_pairs, expected_identical)  # the numbers we observed

    result = cli("data", "import", path, "--name", "hh", "--json")
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["imported"] == len(raw) - identical and out["skipped"] == identical
    assert out["skip_reasons"] == ({"identical chosen and rejected": identical} if identical else {})
    assert out["format"] == "hh" and out["judgments"] == out["items"] == out["imported"]
    assert out["completions"] == 2 * out["items"]  # chosen and rejected always differ, within each prompt
    url = any_workspace.database_url
    counts = table_counts(url)
    assert counts["judgment"] == counts["item"] == len(raw) - identical
    assert counts["item_completion"] == 2 * counts["item"]
    with session_scope(url) as session:
        project = session.scalar(select(Project).where(Project.name == "hh"))
        assert project.source == "import:hh"
        assert session.scalars(select(User.name)).all() == ["hh/import"]
        assert {j.value["choice"] for j in session.scalars(select(Judgment))} == {"a"}
        assert set(session.scalars(select(Judgment.source))) == {"import"}
        # Every prompt ends with the last shared Assistant turn.
        assert all(t.endswith("\n\nAssistant:") for t in session.scalars(select(Prompt.text)))
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "data.import"))
        assert event.object_id == str(project.id) and event.detail["imported"] == len(raw) - identical


def test_pandalm_imports_2997_judgments_by_three_annotators_over_999_items(any_workspace, shared_data):
    raw = json.loads((shared_data / PANDALM).read_text(encoding="utf-8"))
    booleans = sum(isinstance(r[k], bool) for r in raw for k in ("response1", "response2"))
    votes = Counter(r[f"annotator{n}"] for r in raw for n in (1, 2, 3))
    url = any_workspace.database_url
    result = _import(url, shared_data / PANDALM, "pandalm")
    assert (result.format, result.records, result.imported, result.skipped) == ("pandalm", 999, 999, 0)
    assert (result.items, result.judgments, result.annotators) == (999, 2997, 3)
    assert booleans == 6 and result.coerced == {"a response stored as a JSON boolean, imported as its text ('True'/'False')": 6}
    assert len(result.coerced_examples) == 6 and result.coerced_examples[0]["where"].endswith("record 158")
    with session_scope(url) as session:
        per_annotator = dict(session.execute(
            select(User.name, func.count()).join(Judgment, Judgment.user_id == User.id).group_by(User.name)
        ).all())
        assert per_annotator == {"pandalm/annotator1": 999, "pandalm/annotator2": 999, "pandalm/annotator3": 999}
        assert set(session.scalars(select(User.role))) == {"external"}
        choices = Counter(j["choice"] for j in session.scalars(select(Judgment.value)))
        assert choices == {"a": votes[1], "b": votes[2], "tie": votes[0]}
        # The malformed records stay items; their boolean answer is the text "True".
        item = session.scalar(select(Item).where(Item.external_id == "157"))
        texts = [c.completion_id for c in item.completions]
        assert len(texts) == 2
        assert session.scalar(select(func.count()).select_from(ItemCompletion)) == 2 * 999


def test_qa_feedback_imports_its_3000_comparisons(any_workspace, shared_data):
    raw = json.loads((shared_data / QA_FEEDBACK).read_text(encoding="utf-8"))
    url = any_workspace.database_url
    result = _import(url, shared_data / QA_FEEDBACK, "qa")
    assert (result.format, result.items, result.judgments, result.comparisons) == ("ranking", 500, 500, 3000)
    assert result.completions == 2000 and sum(len(r["preference"]) for r in raw) == 3000
    with session_scope(url) as session:
        first = session.scalar(select(Judgment).order_by(Judgment.id))
        assert [c["choice"] for c in first.value["comparisons"]] == [
            {0: "tie", 1: "a", 2: "b"}[v] for v in raw[0]["preference"]
        ]


def test_every_format_imports(db_url, tmp_path):
    user = {"role": "user", "content": "hi"}
    files = {
        "trl": [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 0.5}, {"chosen": [user, {"role": "assistant", "content": "x"}], "rejected": [user, {"role": "assistant", "content": "y"}]}],
        "ranking": [{"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]}],
        "ratings": [{"prompt": "p", "completion": "a", "ratings": {"helpful": 4}}, {"prompt": "p", "completion": "b", "rating": 2}],
        "unpaired": [{"prompt": "p", "completion": "a", "label": True}, {"prompt": "p", "completion": "a", "label": False}],
        "prompts": [{"prompt": "p"}, {"prompt": "q"}, {"prompt": "p"}],
    }
    for fmt, records in files.items():
        result = _import(db_url, _write_jsonl(tmp_path / f"{fmt}.jsonl", records), f"set-{fmt}")
        assert result.format == fmt and result.skipped == 0
    with session_scope(db_url) as session:
        kinds = dict(session.execute(select(Project.name, Project.source)).all())
        assert kinds["set-ratings"] == "import:ratings"
        trl = session.scalar(select(Project.id).where(Project.name == "set-trl"))
        messages = session.scalars(select(Prompt.messages).where(Prompt.project_id == trl).order_by(Prompt.id)).all()
        assert messages == [None, [user]]
        prompt_set = session.scalar(select(Project.id).where(Project.name == "set-prompts"))
        assert session.scalar(select(func.count()).select_from(Prompt).where(Prompt.project_id == prompt_set)) == 2
        unpaired = session.scalar(select(Project.id).where(Project.name == "set-unpaired"))
        # the same prompt and completion in two records: one prompt, one completion, two items
        assert session.scalar(select(func.count()).select_from(Item).where(Item.project_id == unpaired)) == 2


def test_a_bad_record_after_the_first_chunk_leaves_nothing(db_url, tmp_path):
    records = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(2500)]
    records[2200] = {"prompt": "p", "chosen": "a"}  # after the first chunk of 2,000 was written
    path = _write_jsonl(tmp_path / "late.jsonl", records)
    before = table_counts(db_url)
    with pytest.raises(TetherError, match=r"late.jsonl:2201: missing key\(s\) \['rejected'\]"):
        _import(db_url, path, "late")
    assert table_counts(db_url) == before
    result = _import(db_url, path, "late", skip_invalid=True)
    assert (result.imported, result.skipped, result.skip_reasons) == (2499, 1, {"missing key(s) ['rejected']": 1})
    assert table_counts(db_url)["judgment"] == before["judgment"] + 2499


def _bad_inputs(tmp_path, shared_data):
    """(name, file, expected message fragment) for each bad input the issue lists."""
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes((shared_data / HH_HELPFUL).read_bytes()[:300_000])
    wrong = _write_jsonl(tmp_path / "wrong.jsonl", [{"question": "q", "answer": "a"}])
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n')
    huge = _write_jsonl(tmp_path / "huge.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "x" * 10_485_760, "rejected": "b"}])
    return [
        (empty, "empty.jsonl: no records (the file is empty)"),
        (truncated, "truncated.jsonl.gz: the gzip stream is truncated or corrupt"),
        (wrong, "wrong.jsonl:1: cannot tell the format from the keys ['answer', 'question']"),
        (latin, "latin.jsonl:2: not UTF-8 text (byte 0xe9 at column 16)"),
        (huge, "huge.jsonl:2: field 'chosen' holds 10,485,760 characters, over the limit of 1,000,000"),
    ]


def test_bad_inputs_give_a_clear_error_and_leave_the_store_unchanged(any_workspace, cli, tmp_path, shared_data):
    url = any_workspace.database_url
    good = _write_jsonl(tmp_path / "good.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert cli("data", "import", good, "--name", "taken").code == 0
    cases = [*_bad_inputs(tmp_path, shared_data), (good, "a feedback set named 'taken' already exists")]
    for path, message in cases:
        before = table_counts(url)
        result = cli("data", "import", path, "--name", "taken" if path == good else "fresh")
        assert result.code == 2, (path, result.stdout)
        assert result.stderr.startswith(f"error: {path}" if path != good else "error: "), result.stderr
        assert message in result.stderr, result.stderr
        assert "fix:" in result.stderr and "Traceback" not in result.stderr
        assert table_counts(url) == before, path


def test_skip_invalid_reports_how_many_and_why(workspace, cli, tmp_path, shared_data):
    _, _, _, (latin, _), (huge, _) = _bad_inputs(tmp_path, shared_data)
    result = cli("data", "import", latin, "--name", "latin", "--skip-invalid", "--json")
    out = json.loads(result.stdout)
    assert (out["imported"], out["skipped"]) == (1, 1)
    assert out["skip_reasons"] == {"not UTF-8 text (byte 0xe9 at column 16)": 1}
    assert out["skipped_examples"] == [{"where": f"{latin}:2", "reason": "not UTF-8 text (byte 0xe9 at column 16)"}]
    result = cli("data", "import", huge, "--name", "huge", "--skip-invalid")
    assert result.code == 0 and "imported 1 of 2 records" in result.stdout and "over the limit of 1,000,000" in result.stdout


def test_an_unknown_format_and_a_bad_name_are_refused(workspace, cli, tmp_path):
    good = _write_jsonl(tmp_path / "good.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    result = cli("data", "import", good, "--name", "x", "--format", "csv")
    assert result.code == 2 and "unknown format 'csv'" in result.stderr and "pandalm" in result.stderr
    result = cli("data", "import", good, "--name", "a/b")
    assert result.code == 2 and "invalid set name 'a/b'" in result.stderr
    result = cli("data", "import", tmp_path / "missing.jsonl", "--name", "x")
    assert result.code == 2 and "not found" in result.stderr


def test_two_processes_importing_at_once_both_succeed_or_one_is_busy(workspace, shared_data):
    env = {**os.environ, "TETHER_HOME": str(workspace.root), "OMP_NUM_THREADS": "1"}
    env.pop("TETHER_DATABASE_URL", None)
    tether = [sys.executable, "-m", "tether"]
    procs = [
        subprocess.Popen([*tether, "data", "import", str(shared_data / split), "--name", name, "--json"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for split, name in ((HH_HARMLESS, "harmless"), (HH_HELPFUL, "helpful"))
    ]
    outcomes = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    imported = 0
    for stdout, stderr, code in outcomes:
        assert "Traceback" not in stderr
        if code == 0:
            imported += json.loads(stdout)["judgments"]
        else:
            assert "busy" in stderr, stderr
    assert any(code == 0 for _, _, code in outcomes)
    db = sqlite3.connect(workspace.root / "tether.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("SELECT count(*) FROM judgment").fetchone() == (imported,)
    finally:
        db.close()
    assert imported in (2312, 2352, 2312 + 2352)


def test_a_writer_that_waits_too_long_gets_a_clear_busy_error(workspace, cli, tmp_path, monkeypatch):
    from tether.store import db

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 0.3)
    db.dispose_engine(workspace.database_url)  # the next engine takes the short timeout
    good = _write_jsonl(tmp_path / "good.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    before = table_counts(workspace.database_url)
    holder = sqlite3.connect(workspace.root / "tether.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        result = cli("data", "import", good, "--name", "late")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        db.dispose_engine(workspace.database_url)
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "busy" in result.stderr or "locked" in result.stderr, result.stderr
    assert table_counts(workspace.database_url) == before


def _unstorable_files(tmp_path):
    """Files whose second record holds text the store cannot keep or a non-finite number, one per file kind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    lines = {
        "nul.jsonl": '{"prompt": "q", "chosen": "x\\u0000y", "rejected": "b"}',
        "surrogate.jsonl.gz": '{"prompt": "q\\ud83d", "chosen": "a", "rejected": "b"}',
        "nan.jsonl": '{"prompt": "q", "chosen": "a", "rejected": "b", "margin": NaN}',
        "overflow.json": '{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 1e999}',
        "infinity.jsonl": '{"prompt": "q", "chosen": "a", "rejected": "b", "margin": -Infinity}',
        "meta.jsonl": '{"prompt": "q", "chosen": "a", "rejected": "b", "source": "s\\u0000"}',
        "key.jsonl": '{"prompt": "q", "chosen": "a", "rejected": "b", "s\\u0000": 1}',
    }
    files = []
    for name, bad in lines.items():
        path = tmp_path / name
        if name.endswith(".json"):
            path.write_text(f"[{json.dumps(good)},\n{bad}]", encoding="utf-8")
        else:
            text = f"{json.dumps(good)}\n{bad}\n"
            path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
        files.append(path)
    pq.write_table(pa.table({"prompt": ["p", "q\x00"], "chosen": ["a", "a"], "rejected": ["b", "b"]}), tmp_path / "nul.parquet")
    pq.write_table(pa.table({"prompt": ["p", "q"], "chosen": ["a", "a"], "rejected": ["b", "b"], "margin": [1.0, float("nan")]}),
                   tmp_path / "nan.parquet")
    return files + [tmp_path / "nul.parquet", tmp_path / "nan.parquet"]


REASONS = {
    "nul.jsonl": "nul.jsonl:2: chosen holds a NUL character (U+0000) at character 2",
    "surrogate.jsonl.gz": "surrogate.jsonl.gz:2: prompt holds a lone surrogate (U+D83D) at character 2, which is not valid Unicode",
    "nan.jsonl": "nan.jsonl:2: margin is NaN (numbers must be finite)",
    "overflow.json": "overflow.json: record 2: margin is Infinity (numbers must be finite)",
    "infinity.jsonl": "infinity.jsonl:2: margin is -Infinity (numbers must be finite)",
    "meta.jsonl": "meta.jsonl:2: source holds a NUL character",
    "key.jsonl": "key.jsonl:2: a field name in the object holds a NUL character",
    "nul.parquet": "nul.parquet: record 2: prompt holds a NUL character",
    "nan.parquet": "nan.parquet: record 2: margin is NaN",
}


def test_unstorable_text_and_non_finite_numbers_are_refused_in_every_file_kind(any_workspace, cli, tmp_path):
    """NUL (a raw DataError traceback on PostgreSQL), lone surrogates and NaN/Infinity margins (written into
    snapshots as non-standard JSON) are refused with the file, line and field; --skip-invalid counts them."""
    url = any_workspace.database_url
    for number, path in enumerate(_unstorable_files(tmp_path)):
        before = table_counts(url)
        result = cli("data", "import", path, "--name", "bad")
        assert result.code == 2, (path.name, result.stdout, result.stderr)
        first = result.stderr.splitlines()[0]
        assert first.startswith("error: ") and REASONS[path.name] in first, result.stderr
        assert "Traceback" not in result.stderr and "fix:" in result.stderr
        assert table_counts(url) == before, path.name
        skipped = cli("data", "import", path, "--name", f"skip{number}", "--skip-invalid", "--json")
        assert skipped.code == 0, skipped.stderr
        out = json.loads(skipped.stdout)
        assert (out["imported"], out["skipped"]) == (1, 1), path.name
    # Nothing non-finite reaches a snapshot or an export.
    assert cli("data", "snapshot", "skip2").code == 0  # nan.jsonl
    exported = tmp_path / "out.jsonl"
    assert cli("data", "export", "skip2-v1", "--format", "trl", "-o", exported).code == 0
    text = exported.read_text()
    assert "NaN" not in text and "Infinity" not in text and len(text.splitlines()) == 1
