"""Governance: PII redaction on import, purging an annotator or an end user from every table, retention, and the
audit log export. Run through the CLI as a user would, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, inspect, select, text

from tests.monitor_data import make_records, write_jsonl
from tether.checks.redact import redact_record
from tether.store.db import get_engine, session_scope
from tether.store.tables import (
    ApiToken,
    Assignment,
    AuditEvent,
    Item,
    Judgment,
    ProductionRecord,
    Snapshot,
    User,
)


def everything(url: str) -> str:
    """The text of every row of every table (to prove that something is gone from all of them)."""
    engine = get_engine(url)
    chunks = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            quoted = engine.dialect.identifier_preparer.quote(table)
            chunks.extend(str(tuple(row)) for row in conn.execute(text(f"SELECT * FROM {quoted}")))
    return "\n".join(chunks)


def panda_file(tmp_path, n=6, prefix="Question"):
    """A PandaLM-style file: three annotators per item."""
    records = [
        {"idx": i, "instruction": f"{prefix} {i}: what is {i} + {i}?", "input": "", "response1": f"{2 * i}", "response2": f"{2 * i + 1}",
         "annotator1": 1, "annotator2": 2 if i % 2 else 1, "annotator3": 1}
        for i in range(n)
    ]
    path = tmp_path / f"{prefix.lower()}.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_redact_record_walks_nested_values():
    record = {"prompt": [{"role": "user", "content": "I am ann@example.com"}], "chosen": "call 415-555-0132", "n": 3,
              "meta": {"card": "4111 1111 1111 1111", "ok": True}}
    out, counts = redact_record(record)
    assert out == {"prompt": [{"role": "user", "content": "I am [EMAIL]"}], "chosen": "call [PHONE]", "n": 3,
                   "meta": {"card": "[CARD]", "ok": True}}
    assert counts == {"email": 1, "phone": 1, "card": 1}


def test_import_with_redaction(cli, workspace, tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": "My email is bob@example.com and my card 4111-1111-1111-1111", "chosen": "Noted, bob@example.com.", "rejected": "No."},
        {"prompt": "Ship to 221B Baker Street, London NW1 6XE", "chosen": "Done.", "rejected": "Call (415) 555-0132."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    result = cli("data", "import", path, "--name", "prefs", "--redact", "pii")
    assert result.code == 0, result.stderr
    assert "redacted PII: address 1, card 1, email 2, phone 1" in result.stdout
    dump = everything(workspace.database_url)
    for secret in ("bob@example.com", "4111-1111-1111-1111", "Baker Street", "555-0132"):
        assert secret not in dump
    assert "[EMAIL]" in dump and "[ADDRESS]" in dump
    result = cli("data", "import", path, "--name", "prefs2", "--redact", "names")
    assert result.code == 2 and "--redact pii" in result.stderr


def test_purge_annotator_from_every_table(cli, any_workspace, tmp_path):
    url = any_workspace.database_url
    assert cli("data", "import", panda_file(tmp_path, prefix="Other"), "--name", "other").code == 0
    assert cli("data", "snapshot", "other").code == 0  # made before the purged annotator judged anything in it
    assert cli("data", "import", panda_file(tmp_path), "--name", "panda").code == 0
    assert cli("data", "snapshot", "panda").code == 0
    name = "panda/annotator2"
    with session_scope(url) as session:  # a token, an assignment and an audit trail of the annotator's own
        user = session.scalar(select(User).where(User.name == name))
        item_id = session.scalar(select(Item.id).join(Judgment, Judgment.item_id == Item.id).where(Judgment.user_id == user.id).limit(1))
        session.add(ApiToken(user_id=user.id, token_hash="f" * 64, label="laptop"))
        session.add(Assignment(item_id=item_id, user_id=user.id, state="done"))
        item = session.get(Item, item_id)
        slots_before = item.open_slots
        item.open_slots -= 1  # as the queue counts a taken slot
        session.add(AuditEvent(actor=f"user:{name}", action="judgment.create", object_type="judgment", object_id="1", detail={"item_id": item_id}))
        before = session.scalar(select(func.count()).select_from(Judgment))
        mine = session.scalar(select(func.count()).select_from(Judgment).where(Judgment.user_id == user.id))
    assert mine == 6

    # without --yes: a preview, nothing changes
    result = cli("data", "purge", "--annotator", name)
    assert result.code == 0 and "would delete: judgment 6, assignment 1, api_token 1, user 1" in result.stdout
    assert "nothing changed" in result.stdout and name in everything(url)

    result = cli("data", "purge", "--annotator", name, "--reason", "GDPR request 17", "--yes")
    assert result.code == 0, result.stderr
    assert "marked 1 snapshot(s) as purged: panda-v1" in result.stdout
    assert name not in everything(url)  # gone from every table, the audit log included
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(Judgment)) == before - 6
        assert session.scalar(select(func.count()).select_from(User).where(User.name.like("panda/%"))) == 2
        snaps = {s.name: s for s in session.scalars(select(Snapshot))}
        assert snaps["panda-v1"].purged_at is not None and "GDPR request 17" in snaps["panda-v1"].purge_note
        assert snaps["other-v1"].purged_at is None
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "data.purge"))
        key = any_workspace.pseudonym_key()
        assert event.detail["subject_key"] == hmac.new(key, name.encode(), hashlib.sha256).hexdigest()
        assert event.object_id == f"purged-{event.detail['subject_key'][:12]}"
        assert event.detail["deleted"] == {"judgment": 6, "assignment": 1, "api_token": 1, "user": 1}
        assert event.detail["audit_events_pseudonymized"] == 2  # our audit event and the QC figures of panda-v1
        assert session.get(Item, item_id).open_slots == slots_before  # the purged assignment's slot is free again
    # a purged snapshot cannot be trained on; a new one can be made from what is left
    from tether.errors import TetherError
    from tether.store.snapshots import snapshot_file

    with pytest.raises(TetherError, match="purged"):
        snapshot_file(any_workspace, "panda-v1")
    assert cli("data", "snapshot", "panda").code == 0
    result = cli("data", "purge", "--annotator", name, "--yes")
    assert result.code == 2 and "no annotator named" in result.stderr


def test_purge_user_ref_with_review_items(cli, any_workspace, tmp_path):
    url = any_workspace.database_url
    records = make_records(400, days=2, seed=3)
    for i, r in enumerate(records[:40]):
        r["user_ref"] = "customer-123"
        r["prompt"] = f"customer-123 private question number {i}"
        r["reward"] = -10.0 - i  # the lowest rewards, so `sample --strategy low-reward` queues them
    assert cli("monitor", "ingest", write_jsonl(records, tmp_path / "prod.jsonl")).code == 0
    sampled = json.loads(cli("monitor", "sample", "--n", "30", "--strategy", "low-reward", "--json").stdout)
    assert sampled["queued"] == 30
    with session_scope(url) as session:  # a reviewer rates them, and the review set is snapshotted
        reviewer = User(name="rev", role="reviewer")
        session.add(reviewer)
        session.flush()
        for item_id in session.scalars(select(Item.id).where(Item.external_id.like("prod:%"))):
            session.add(Judgment(item_id=item_id, user_id=reviewer.id, kind="rating", value={"ratings": {"overall": 2}, "scale": [1, 5]}))
    assert cli("data", "snapshot", "production-review").code == 0

    result = cli("data", "purge", "--user-ref", "customer-123", "--yes", "--json")
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["deleted"]["production_record"] == 40 and out["deleted"]["review_item"] == 30 and out["deleted"]["judgment"] == 30
    assert out["snapshots_marked"] == ["production-review-v1"]
    dump = everything(url)
    assert "customer-123" not in dump  # records, review prompts, item metadata: all gone
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(ProductionRecord)) == 360
        assert session.scalar(select(Snapshot.purged_at).where(Snapshot.name == "production-review-v1")) is not None
    result = cli("data", "purge", "--user-ref", "customer-123", "--yes")
    assert result.code == 2 and "no production records" in result.stderr


def test_retention_purges_expired_records(cli, workspace, tmp_path):
    now = datetime.now(timezone.utc)
    records = make_records(300, days=90, seed=4, start=now - timedelta(days=90))
    assert cli("monitor", "ingest", write_jsonl(records, tmp_path / "prod.jsonl")).code == 0
    result = cli("data", "purge", "--expired", "--yes")
    assert result.code == 2 and "retention_days" in result.stderr
    toml = workspace.root / "tether.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace("retention_days = 0", "retention_days = 30"), encoding="utf-8")
    expected = sum(1 for r in records if datetime.fromisoformat(r["ts"]) < now - timedelta(days=30))
    result = cli("data", "purge", "--expired", "--yes", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["deleted"]["production_record"] == expected
    with session_scope(workspace.database_url) as session:
        oldest = session.scalar(select(func.min(ProductionRecord.ts)))
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=timezone.utc)
        assert oldest >= now - timedelta(days=30, seconds=60)
        assert session.scalar(select(func.count()).select_from(ProductionRecord)) == 300 - expected


def test_audit_export_jsonl_and_csv(cli, workspace, tmp_path):
    assert cli("data", "import", panda_file(tmp_path), "--name", "panda").code == 0
    assert cli("data", "snapshot", "panda").code == 0
    assert cli("monitor", "ingest", write_jsonl(make_records(100, days=1, seed=1), tmp_path / "p.jsonl")).code == 0
    assert cli("monitor", "sample", "--n", "3").code == 0
    assert cli("data", "purge", "--annotator", "panda/annotator1", "--yes").code == 0
    result = cli("audit", "export")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    actions = [e["action"] for e in events]
    for action in ("data.import", "data.snapshot", "monitor.ingest", "project.create", "items.add", "monitor.sample", "data.purge"):
        assert action in actions, actions
    assert all(e["actor"].startswith("cli:") for e in events)
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)

    out = tmp_path / "audit.csv"
    result = cli("audit", "export", "-o", out, "--action", "data.")
    assert result.code == 0 and "audit event(s)" in result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert {r["action"] for r in rows} == {"data.import", "data.snapshot", "data.purge"}
    assert json.loads(rows[0]["detail"])["name"] == "panda"
    future = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    assert cli("audit", "export", "--since", future).stdout == ""
    result = cli("audit", "export", "--since", "last tuesday")
    assert result.code == 2 and "--since" in result.stderr


def _aware(dt):
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def test_purge_follows_lineage_not_timestamps(cli, any_workspace):
    """Simulated annotators stamp their judgments with their own clock, ahead of the wall clock (as in the demo's
    workspace), so a snapshot made at once is older than the judgments it holds: marking by timestamps missed it.
    A snapshot that left the annotator out is not marked."""
    from tether.demo.simulate import SimAnnotator, simulate
    from tether.store.snapshots import make_snapshot

    url = any_workspace.database_url
    simulate(url, name="camp", n_items=10, overlap=3, gold_rate=0.0, seed=1,
             annotators=[SimAnnotator(f"ann-{n}", median_time_s=120.0) for n in (1, 2, 3)])
    assert cli("data", "snapshot", "camp").code == 0
    with session_scope(url) as session:
        make_snapshot("camp", session=session, root=any_workspace.root, snapshot_name="camp-without-2", exclude_annotators=["ann-2"])
        made = session.scalar(select(Snapshot.created_at).where(Snapshot.name == "camp-v1"))
        first = session.scalar(select(func.min(Judgment.created_at)).join(User).where(User.name == "ann-2"))
    assert _aware(first) > _aware(made)  # the premise: the judgments are stamped after the snapshot

    preview = json.loads(cli("data", "purge", "--annotator", "ann-2", "--json").stdout)
    assert preview["dry_run"] and preview["snapshots_marked"] == ["camp-v1"]
    result = cli("data", "purge", "--annotator", "ann-2", "--yes", "--json")
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["snapshots_marked"] == ["camp-v1"] and out["snapshot_judgments"] == {"camp-v1": 10}
    with session_scope(url) as session:
        purged = {s.name: s.purged_at is not None for s in session.scalars(select(Snapshot))}
    assert purged == {"camp-v1": True, "camp-without-2": False}


def test_a_snapshot_made_before_lineage_was_recorded_is_marked(cli, any_workspace, tmp_path):
    """Snapshots from before migration 0003 have no judgment record: any purge of their set marks them."""
    url = any_workspace.database_url
    assert cli("data", "import", panda_file(tmp_path), "--name", "panda").code == 0
    assert cli("data", "snapshot", "panda").code == 0
    with session_scope(url) as session:  # as migration 0003 leaves an older snapshot
        snap = session.scalar(select(Snapshot))
        snap.judgments_recorded = False
        session.execute(text("DELETE FROM snapshot_judgment"))
    result = cli("data", "purge", "--annotator", "panda/annotator3", "--yes")
    assert result.code == 0, result.stderr
    assert "marked 1 snapshot(s) as purged: panda-v1" in result.stdout and "made before snapshots recorded" in result.stdout


def test_pseudonyms_are_keyed_and_rewrite_only_person_fields(cli, workspace):
    """Purging user `annotator` leaves other users' role "annotator" alone; purging user `a` leaves a gold choice
    "a" alone. The pseudonym is keyed with the workspace's secret, not sha256(name) that anyone can recompute."""
    from tether.demo.simulate import SimAnnotator, simulate
    from tether.store import accounts, campaigns

    url = workspace.database_url
    simulate(url, name="camp", n_items=4, overlap=1, gold_rate=0.0, seed=2, annotators=[SimAnnotator("a")])
    with session_scope(url) as session:
        boss = accounts.create_user(session, name="boss", role="admin", password="a-long-password-1", password_profile="cheapest", actor="cli:root")
        for name in ("annotator", "carol", "dave"):
            accounts.create_user(session, name=name, role="annotator", password="a-long-password-1", password_profile="cheapest", actor="user:boss")
        item_id = session.scalar(select(Item.id).order_by(Item.id))
        campaigns.mark_gold(session, item_id=item_id, value={"choice": "a", "strength": 2}, actor=f"user:{boss.name}")

    def events():
        with session_scope(url) as session:
            return [(e.actor, e.action, e.object_id, e.detail) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]

    before = events()
    assert cli("data", "purge", "--annotator", "annotator", "--yes").code == 0
    assert cli("data", "purge", "--annotator", "a", "--yes").code == 0
    after = events()[: len(before)]
    changed = [(b, a) for b, a in zip(before, after) if b != a]
    key = workspace.pseudonym_key()
    alias = {n: "purged-" + hmac.new(key, n.encode(), hashlib.sha256).hexdigest()[:12] for n in ("annotator", "a")}
    assert alias["a"] != "purged-" + hashlib.sha256(b"a").hexdigest()[:12]
    # what changed: the two users' own creation events (their subject) and the actor of `a`'s judgments
    assert {a[3]["name"] for b, a in changed if b[1] == "user.create"} == {alias["annotator"], alias["a"]}
    assert {a[0] for b, a in changed if b[1] != "user.create"} == {f"sim:{alias['a']}"}
    assert all(b[3].get("role") == a[3].get("role") for b, a in changed)
    # what did not: the other users' role "annotator", the gold choice "a"
    roles = [e[3]["role"] for e in events() if e[1] == "user.create"]
    assert roles == ["annotator", "admin", "annotator", "annotator", "annotator"]
    gold = [e[3] for e in events() if e[1] == "item.gold"]
    assert gold == [{"value": {"choice": "a", "strength": 2, "flags": []}}]
    dump = everything(url)
    assert "sim:a'" not in dump and alias["a"] in dump and alias["annotator"] in dump


def test_purge_scrubs_the_registry_and_the_run_records(cli, workspace, tmp_path):
    """The purged name leaves the registry (tags, description, model_card.md) and the demo's run records
    (evaluation.json, summary.jsonl); where it is data, not a person field (a prompt that happens to read like a
    name), it stays. A report Tether did not write is listed, not rewritten."""
    from tether.demo.simulate import SimAnnotator, simulate
    from tether.lifecycle.registry import register_model, show

    name = "ann-2"
    simulate(workspace.database_url, name="camp", n_items=4, overlap=3, gold_rate=0.0, seed=4,
             annotators=[SimAnnotator(f"ann-{n}") for n in (1, 2, 3)])
    folder = tmp_path / "rm"
    folder.mkdir()
    (folder / "tether.json").write_text(json.dumps({"kind": "reward", "config": {}}))
    register_model(workspace, folder, name="scrub-reward", data_summary={"annotators": {"ann-1": 4, name: 4}, "flagged_by_qc": [name]})
    run_dir = workspace.artifacts / "demo" / "camp"
    run_dir.mkdir(parents=True)
    summary = {"annotators": {name: {"judgments": 4}, "ann-1": {"judgments": 4}}, "qc": {"flagged": [name]},
               "stages": [{"number": 3, "detail": f"ann-1: 4, {name}: 4", "notes": [f"{name} answered fast"]}]}
    (run_dir / "evaluation.json").write_text(json.dumps({"summary": summary, "evaluation": {"prompts": [name]},
                                                         "qc": {"annotators": [{"annotator": name, "role": name}]}}))
    (run_dir / "summary.jsonl").write_text(json.dumps(summary) + "\n")
    other = workspace.reports_dir / "notes.html"
    other.write_text(f"<html><body><td>{name}</td></body></html>")

    result = cli("data", "purge", "--annotator", name, "--yes", "--json")
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    alias = out["pseudonym"]
    assert out["workspace"] == {"model_versions": ["scrub-reward/1"], "files": ["artifacts/demo/camp/evaluation.json", "artifacts/demo/camp/summary.jsonl"],
                                "reports": [], "left": ["artifacts/reports/notes.html"]}
    info = show(workspace, "scrub-reward/1")
    assert json.loads(info["tags"]["tether.data"]) == {"annotators": {"ann-1": 4, alias: 4}, "flagged_by_qc": [alias]}
    assert f"{alias} (4)" in info["card"] and name not in info["card"]
    cards = list((workspace.artifacts / "mlruns").rglob("model_card.md"))
    assert cards and all(name not in c.read_text() for c in cards)
    assert name not in everything(f"sqlite:///{workspace.root / 'mlflow.db'}")
    saved = json.loads((run_dir / "evaluation.json").read_text())
    assert saved["evaluation"] == {"prompts": [name]}  # data, not a person field
    assert saved["qc"]["annotators"] == [{"annotator": alias, "role": name}]
    assert saved["summary"]["stages"][0] == {"number": 3, "detail": f"ann-1: 4, {alias}: 4", "notes": [f"{alias} answered fast"]}
    assert name not in (run_dir / "summary.jsonl").read_text() and name in other.read_text()
    preview = cli("data", "purge", "--annotator", "ann-1").stdout  # a preview says what it would rewrite, and does not
    assert "would replace the name in 1 registry version(s) (tags, model cards) and 2 run record(s)" in preview
    assert "ann-1" in (run_dir / "summary.jsonl").read_text() and "ann-1" in show(workspace, "scrub-reward/1")["card"]
