"""Output paths that cannot be written (`data export -o`, `audit export -o`, `qc --html`): a one-line error that
names the path and why, exit 2, no traceback and no temporary file left behind."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def snapshot_ws(workspace, cli, tmp_path):
    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(3)))
    assert cli("data", "import", rows, "--name", "s").code == 0
    assert cli("data", "snapshot", "s").code == 0
    return tmp_path


def test_unwritable_output_paths_are_a_clear_error(snapshot_ws, cli):
    tmp = snapshot_ws
    (tmp / "a-file").write_text("x")
    (tmp / "a-folder.jsonl").mkdir()
    (tmp / "a-folder.html").mkdir()
    cases = [
        (["data", "export", "s-v1", "-o", tmp / "a-file" / "out.jsonl"], "a-file is a file, not a folder"),
        (["data", "export", "s-v1", "-o", tmp / "a-folder.jsonl", "--force"], "a-folder.jsonl is a folder"),
        (["audit", "export", "-o", tmp / "a-file" / "deeper" / "audit.jsonl"], "a-file is a file, not a folder"),
        (["audit", "export", "-o", tmp / "a-folder.jsonl"], "a-folder.jsonl is a folder"),
        (["qc", "s", "--html", tmp / "a-file" / "qc.html"], "a-file is a file, not a folder"),
        (["qc", "s", "--html", tmp / "a-folder.html"], "a-folder.html is a folder"),
    ]
    for args, reason in cases:
        result = cli(*args)
        assert result.code == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: cannot write ") and reason in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "fix: give" in result.stderr
    assert sorted(p.name for p in tmp.iterdir()) == ["a-file", "a-folder.html", "a-folder.jsonl", "pairs.jsonl", "ws"]
    assert list((tmp / "a-folder.jsonl").iterdir()) == []
    # A missing folder is made, as before.
    assert cli("audit", "export", "-o", tmp / "new" / "audit.csv").code == 0 and (tmp / "new" / "audit.csv").exists()
