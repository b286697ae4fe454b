"""Aggregation, snapshots with a content digest, export and the round trip export -> import -> snapshot."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from sqlalchemy import select

from tether.data.canonical import rows_digest
from tether.data.rows import load_rows
from tether.errors import TetherError
from tether.feedback.aggregation import AggregatedPair, Vote, aggregate_pairs, majority_pairs
from tether.store.db import session_scope
from tether.store.export import export_rows
from tether.store.importer import import_file
from tether.store.snapshots import make_snapshot, training_rows
from tether.store.tables import Judgment, Project, Snapshot, User

PANDALM = "pandalm/testset-v1.json"
QA_FEEDBACK = "qa-feedback/dev_feedback.json"
HH_HELPFUL = "hh-rlhf/helpful-base/test.jsonl.gz"


def _pairwise(item, annotator, choice, margin=None):
    return Vote(item, annotator, "pairwise", {"choice": choice, "strength": None, "margin": margin})


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_majority_by_hand():
    """Item 1: a, a, tie -> a wins 2 of 3. Item 2: a, b -> a 1-1 split, dropped. Item 3: tie, tie, b -> a tie.
    Item 4: the ranking [2, 0, 1] -> 2 over 0, 2 over 1, 0 over 1. Item 5: b with margins 1.0 and 2.0 -> margin 1.5."""
    votes = [
        _pairwise(1, 10, "a"), _pairwise(1, 11, "a"), _pairwise(1, 12, "tie"),
        _pairwise(2, 10, "a"), _pairwise(2, 11, "b"),
        _pairwise(3, 10, "tie"), _pairwise(3, 11, "tie"), _pairwise(3, 12, "b"),
        Vote(4, 10, "ranking", {"ranking": [2, 0, 1]}),
        _pairwise(5, 10, "b", 1.0), _pairwise(5, 11, "b", 2.0), _pairwise(5, 12, "a"),
    ]
    qc: dict = {}
    pairs = aggregate_pairs("majority", votes, qc=qc)
    assert pairs == [
        AggregatedPair(1, 0, 1, tie=False, votes=3, agreement=2 / 3),
        AggregatedPair(3, 0, 1, tie=True, votes=3, agreement=2 / 3),
        AggregatedPair(4, 0, 1), AggregatedPair(4, 2, 0), AggregatedPair(4, 2, 1),
        AggregatedPair(5, 1, 0, votes=3, agreement=2 / 3, margin=1.5),
    ]
    assert qc["aggregate/no_majority"] == 1 and qc["aggregate/compared_pairs"] == 7 and qc["aggregate/unanimous"] == 3
    three_way = [_pairwise(6, 10, "a"), _pairwise(6, 11, "b"), _pairwise(6, 12, "tie")]
    assert majority_pairs(three_way) == []


def test_unknown_aggregation_lists_the_valid_names():
    with pytest.raises(TetherError, match="unknown aggregation method 'vote'") as info:
        aggregate_pairs("vote", [])
    assert "majority" in info.value.fix


def _majority_rows_expected(raw):
    """PandaLM's majority rows computed straight from the file: the strict plurality of votes 1, 2, 0 per record."""
    rows = 0
    ties = 0
    split = 0
    for record in raw:
        counts = sorted(((sum(record[f"annotator{n}"] == v for n in (1, 2, 3)), v) for v in (1, 2, 0)), reverse=True)
        if counts[0][0] == counts[1][0]:
            split += 1
        elif counts[0][1] == 0:
            ties += 1
        else:
            rows += 1
    return rows, ties, split


def test_pandalm_majority_snapshot(any_workspace, cli, shared_data):
    raw = json.loads((shared_data / PANDALM).read_text(encoding="utf-8"))
    expected_rows, expected_ties, expected_split = _majority_rows_expected(raw)
    assert (expected_rows, expected_ties, expected_split) == (894, 105, 0)  # observed
    assert cli("data", "import", shared_data / PANDALM, "--name", "pandalm").code == 0
    result = cli("data", "snapshot", "pandalm", "--aggregate", "majority", "--snapshot-name", "pandalm-maj", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["row_count"] == expected_rows and summary["counts"]["ties_dropped"] == expected_ties
    assert summary["qc"]["aggregate/no_majority"] == expected_split
    path = any_workspace.root / summary["path"]
    content = path.read_text(encoding="utf-8")
    assert content.endswith("\n") and len(content.splitlines()) == expected_rows
    assert summary["digest"] == hashlib.sha256(content[:-1].encode("utf-8")).hexdigest()
    rows = training_rows("snapshot:pandalm-maj", "preference", workspace=any_workspace)
    assert rows_digest(rows) == summary["digest"]
    # The first record: all three annotators voted 2 (response2 better).
    first = raw[0]
    assert rows[0] == {"prompt": first["instruction"] + (f"\n\n{first['input']}" if first["input"] else ""),
                       "chosen": first["response2"], "rejected": first["response1"]}
    assert [first[f"annotator{n}"] for n in (1, 2, 3)] == [2, 2, 2]
    with session_scope(any_workspace.database_url) as session:
        snap = session.scalar(select(Snapshot).where(Snapshot.name == "pandalm-maj"))
        assert (snap.aggregate, snap.row_count, snap.digest) == ("majority", expected_rows, summary["digest"])
        assert snap.filters["row_kind"] == "preference"
    again = cli("data", "snapshot", "pandalm", "--snapshot-name", "pandalm-maj")
    assert again.code == 2 and "already exists" in again.stderr
    bad = cli("data", "snapshot", "pandalm", "--aggregate", "dawid")
    assert bad.code == 2 and "unknown aggregation method 'dawid'" in bad.stderr and "majority" in bad.stderr


@pytest.mark.parametrize(("data", "fmt", "rows"), [(PANDALM, "trl", 894), (PANDALM, "jsonl", 894), (HH_HELPFUL, "hh", 2352)])
def test_export_then_import_then_snapshot_gives_the_same_digest(any_workspace, cli, shared_data, tmp_path, data, fmt, rows):
    assert cli("data", "import", shared_data / data, "--name", "orig").code == 0
    first = json.loads(cli("data", "snapshot", "orig", "--json").stdout)
    assert first["name"] == "orig-v1" and first["row_count"] == rows
    out = tmp_path / f"orig.{fmt}.jsonl"
    result = cli("data", "export", "orig-v1", "--format", fmt, "-o", out)
    assert result.code == 0, result.stderr
    assert f"wrote {rows:,} rows of snapshot 'orig-v1'" in result.stdout
    assert cli("data", "import", out, "--name", "again").code == 0
    second = json.loads(cli("data", "snapshot", "again", "--json").stdout)
    assert second["digest"] == first["digest"] and second["row_count"] == rows


def test_qa_feedback_round_trip_keeps_ties_in_jsonl_and_drops_them_from_trl(any_workspace, cli, shared_data, tmp_path):
    assert cli("data", "import", shared_data / QA_FEEDBACK, "--name", "qa").code == 0
    raw = json.loads((shared_data / QA_FEEDBACK).read_text(encoding="utf-8"))
    zeros = sum(v == 0 for r in raw for v in r["preference"])
    with_ties = json.loads(cli("data", "snapshot", "qa", "--keep-ties", "--snapshot-name", "qa-ties", "--json").stdout)
    without = json.loads(cli("data", "snapshot", "qa", "--json").stdout)
    assert (with_ties["row_count"], without["row_count"], zeros) == (3000, 3000 - zeros, 384)
    jsonl = tmp_path / "qa.jsonl.gz"
    assert cli("data", "export", "qa-ties", "-o", jsonl).code == 0
    assert cli("data", "import", jsonl, "--name", "qa-again").code == 0
    again = json.loads(cli("data", "snapshot", "qa-again", "--keep-ties", "--json").stdout)
    assert again["digest"] == with_ties["digest"]
    trl = cli("data", "export", "qa-ties", "--format", "trl", "-o", tmp_path / "qa.trl.jsonl")
    assert "left out 384 tie rows" in trl.stdout
    with open(tmp_path / "qa.trl.jsonl", encoding="utf-8") as fh:
        assert sum(1 for _ in fh) == 3000 - zeros
    assert cli("data", "export", "qa-ties", "-o", jsonl).code == 2  # exists: needs --force
    with gzip.open(jsonl, "rt", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    # qa-feedback's first question votes 0 on 1v2: a tie row between predictions 1 and 2.
    assert first["tie"] is True and first["chosen"] == raw[0]["prediction 1"] and first["rejected"] == raw[0]["prediction 2"]


def test_rating_unpaired_and_prompt_sets_snapshot_as_their_row_kinds(db_url, tmp_path):
    ratings = _write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "completion": "a", "ratings": {"helpful": 4, "honest": 2}}])
    thumbs = _write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "completion": "a", "label": True}, {"prompt": "q", "completion": "b", "label": False}])
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "z"}, {"prompt": [{"role": "user", "content": "hi"}]}])
    with session_scope(db_url) as session:
        for path, name in ((ratings, "r"), (thumbs, "t"), (prompts, "p")):
            import_file(path, name, session=session)
    with session_scope(db_url) as session:
        # A second rater of the one rating item: each aspect becomes the mean.
        item_id = session.scalar(select(Judgment.item_id).join(User).where(User.name == "r/import"))
        rater = User(name="r/second", role="external")
        session.add(rater)
        session.flush()
        session.add(Judgment(item_id=item_id, user_id=rater.id, kind="rating", value={"ratings": {"helpful": 5, "honest": 3}}, source="import"))
    with session_scope(db_url) as session:
        summaries = {name: make_snapshot(name, session=session, root=tmp_path) for name in ("r", "t", "p")}
    rows = {name: [json.loads(line) for line in (tmp_path / s["path"]).read_text(encoding="utf-8").splitlines()] for name, s in summaries.items()}
    assert rows["r"] == [{"prompt": "p", "completion": "a", "ratings": {"helpful": 4.5, "honest": 2.5}}]
    assert rows["t"] == [{"prompt": "p", "completion": "a", "label": True}, {"prompt": "q", "completion": "b", "label": False}]
    assert rows["p"] == [{"prompt": "z"}, {"prompt": [{"role": "user", "content": "hi"}]}]
    assert [summaries[n]["row_kind"] for n in ("r", "t", "p")] == ["rating", "unpaired", "prompt"]
    with pytest.raises(TetherError, match="have no trl format"):
        export_rows(rows["r"], "rating", "trl")
    with pytest.raises(TetherError, match="have no hh format"):
        export_rows(rows["t"], "unpaired", "hh")


def test_a_correction_supersedes_the_judgment_it_replaces(db_url, tmp_path):
    path = _write_jsonl(tmp_path / "one.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"}])
    with session_scope(db_url) as session:
        import_file(path, "one", session=session)
    with session_scope(db_url) as session:
        old = session.scalar(select(Judgment))
        session.add(Judgment(item_id=old.item_id, user_id=old.user_id, kind="pairwise", value={"choice": "b", "strength": None, "margin": None},
                             source="web", supersedes_id=old.id))
    with session_scope(db_url) as session:
        summary = make_snapshot("one", session=session, root=tmp_path)
    row = json.loads((tmp_path / summary["path"]).read_text(encoding="utf-8"))
    assert (row["chosen"], row["rejected"]) == ("bad", "good")
    assert summary["counts"]["superseded"] == 1 and summary["counts"]["judgments"] == 1


def test_list_and_show(any_workspace, cli, shared_data):
    assert cli("data", "import", shared_data / PANDALM, "--name", "pandalm").code == 0
    assert cli("data", "snapshot", "pandalm").code == 0
    listing = json.loads(cli("data", "list", "--json").stdout)
    assert [(s["name"], s["items"], s["judgments"], s["annotators"]) for s in listing["sets"]] == [("pandalm", 999, 2997, 3)]
    assert [(s["name"], s["set"], s["row_count"]) for s in listing["snapshots"]] == [("pandalm-v1", "pandalm", 894)]
    table = cli("data", "list")
    assert "pandalm-v1" in table.stdout and "2,997" in table.stdout
    shown = cli("data", "show", "pandalm-v1", "--rows", "2")
    assert shown.code == 0 and listing["snapshots"][0]["digest"] in shown.stdout
    assert shown.stdout.count("\n  [") == 2
    as_set = json.loads(cli("data", "show", "pandalm", "--json").stdout)
    assert as_set["source"] == "set" and as_set["digest"] == listing["snapshots"][0]["digest"]
    assert as_set["set_details"]["annotators"] == {f"pandalm/annotator{n}": 999 for n in (1, 2, 3)}
    assert len(as_set["sample_rows"]) == 3
    missing = cli("data", "show", "nothing")
    assert missing.code == 2 and "no snapshot or feedback set named 'nothing'" in missing.stderr


def test_a_changed_snapshot_file_is_refused(workspace, cli, shared_data, tmp_path):
    assert cli("data", "import", shared_data / PANDALM, "--name", "pandalm").code == 0
    summary = json.loads(cli("data", "snapshot", "pandalm", "--json").stdout)
    path = workspace.root / summary["path"]
    path.write_text(path.read_text(encoding="utf-8").replace("a", "b", 1), encoding="utf-8")
    result = cli("data", "export", "pandalm-v1", "-o", tmp_path / "x.jsonl")
    assert result.code == 2 and "digest mismatch" in result.stderr


def test_every_data_command_has_an_example(cli):
    for command in ("import", "snapshot", "export", "list", "show"):
        result = cli("data", command, "--help")
        assert result.code == 0 and "Example:" in result.stdout, command


def test_snapshot_of_an_unknown_set_is_a_clear_error(workspace, cli):
    result = cli("data", "snapshot", "nope")
    assert result.code == 2 and "no feedback set named 'nope'" in result.stderr and "Traceback" not in result.stderr
    with session_scope(workspace.database_url) as session:
        assert session.scalar(select(Project)) is None


def test_load_rows_of_a_judged_file_equals_its_majority_snapshot(workspace, cli, shared_data):
    """Trainers pointed straight at PandaLM's file get the rows an import + majority snapshot would freeze."""
    assert cli("data", "import", shared_data / PANDALM, "--name", "pandalm").code == 0
    summary = json.loads(cli("data", "snapshot", "pandalm", "--json").stdout)
    rows = load_rows(shared_data / PANDALM)
    assert len(rows) == summary["row_count"] == 894
    assert rows_digest(rows) == summary["digest"]
    assert load_rows(shared_data / PANDALM, "sft")[0] == {"prompt": rows[0]["prompt"], "completion": rows[0]["chosen"]}


def test_export_rows_by_format():
    user, answer = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    rows = [
        {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " hello", "rejected": " go away", "margin": 1.0},
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "subset": "math"},
        {"prompt": [user], "chosen": [answer], "rejected": [{"role": "assistant", "content": "no"}]},
        {"prompt": "p", "chosen": "a", "rejected": "b", "tie": True},
    ]
    trl, left_out = export_rows(rows, "preference", "trl")
    assert left_out == 1 and trl[1] == {"prompt": "2+2?", "chosen": "4", "rejected": "5"} and trl[0]["margin"] == 1.0
    hh, left_out = export_rows(rows, "preference", "hh")
    assert left_out == 1
    assert hh[0] == {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    assert hh[1] == {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"}
    assert hh[2] == {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: no"}
    assert export_rows(rows, "preference", "jsonl") == (rows, 0)
    with pytest.raises(TetherError, match="unknown export format 'csv'"):
        export_rows(rows, "preference", "csv")


def test_keep_ties_reports_the_ties_it_kept(any_workspace, cli, shared_data):
    """`--json` says how many ties a snapshot kept and how many it dropped (it said ties_dropped 0 for --keep-ties)."""
    assert cli("data", "import", shared_data / PANDALM, "--name", "pandalm").code == 0
    kept = json.loads(cli("data", "snapshot", "pandalm", "--keep-ties", "--snapshot-name", "with-ties", "--json").stdout)
    dropped = json.loads(cli("data", "snapshot", "pandalm", "--snapshot-name", "without-ties", "--json").stdout)
    assert (kept["counts"]["ties_kept"], kept["counts"]["ties_dropped"], kept["row_count"]) == (105, 0, 999)
    assert (dropped["counts"]["ties_kept"], dropped["counts"]["ties_dropped"], dropped["row_count"]) == (0, 105, 894)
    rows = training_rows("snapshot:with-ties", "preference", workspace=any_workspace)
    assert sum(bool(r.get("tie")) for r in rows) == 105
    shown = cli("data", "snapshot", "pandalm", "--keep-ties", "--snapshot-name", "shown")
    assert "ties_kept 105 · ties_dropped 0" in shown.stdout


def test_a_snapshot_records_the_judgments_it_used(any_workspace, cli, shared_data):
    """The lineage judgments -> snapshot: one snapshot_judgment row per judgment behind the rows."""
    from sqlalchemy import func

    from tether.store.tables import SnapshotJudgment

    assert cli("data", "import", shared_data / PANDALM, "--name", "pandalm").code == 0
    summary = json.loads(cli("data", "snapshot", "pandalm", "--json").stdout)
    with session_scope(any_workspace.database_url) as session:
        snap = session.scalar(select(Snapshot).where(Snapshot.name == summary["name"]))
        linked = set(session.scalars(select(SnapshotJudgment.judgment_id).where(SnapshotJudgment.snapshot_id == snap.id)))
        assert snap.judgments_recorded and len(linked) == summary["counts"]["judgments"] == 2997
        assert linked == set(session.scalars(select(Judgment.id)))
        # one annotator's 999 judgments are the ones a purge of them follows
        mine = session.scalar(
            select(func.count()).select_from(SnapshotJudgment).join(Judgment, Judgment.id == SnapshotJudgment.judgment_id)
            .join(User, User.id == Judgment.user_id).where(User.name == "pandalm/annotator2")
        )
        assert mine == 999


def _campaign(url):
    """A campaign of 12 pairwise items judged by 3 simulated annotators through the store (3 votes each)."""
    from tether.demo.simulate import SimAnnotator, simulate

    crew = [SimAnnotator(f"ann-{n}", accuracy=0.9) for n in (1, 2, 3)]
    simulate(url, name="camp", n_items=12, overlap=3, gold_rate=0.0, annotators=crew, seed=3)
    with session_scope(url) as session:
        votes: dict[int, list[str]] = {}
        for item_id, value in session.execute(select(Judgment.item_id, Judgment.value).order_by(Judgment.id)):
            votes.setdefault(item_id, []).append(value["choice"])
    return votes


def test_gold_answers_and_reviewer_decisions_set_the_labels(any_workspace, cli):
    """A reviewer's decision sets the item's label (it was one more vote, outvoted 3 to 1); a gold item's answer is
    its label over the aggregate; the snapshot counts both."""
    from tether.store import campaigns
    from tether.store.tables import Item, Prompt

    url = any_workspace.database_url
    votes = _campaign(url)
    unanimous = [item_id for item_id, v in sorted(votes.items()) if len(set(v)) == 1 and len(v) == 3]
    decided, gold = unanimous[0], unanimous[1]
    flip = {"a": "b", "b": "a"}
    with session_scope(url) as session:
        reviewer = User(name="rev", role="reviewer")
        session.add(reviewer)
        session.flush()
        # two decisions on one item: the latest counts
        campaigns.adjudicate(session, item_id=decided, reviewer=reviewer, value={"choice": votes[decided][0], "strength": 2})
        campaigns.adjudicate(session, item_id=decided, reviewer=reviewer, value={"choice": flip[votes[decided][0]], "strength": 2})
        campaigns.mark_gold(session, item_id=gold, value={"choice": flip[votes[gold][0]], "strength": 3})
        prompts = dict(session.execute(select(Item.id, Prompt.text).join(Prompt, Prompt.id == Item.prompt_id)).all())
    result = cli("data", "snapshot", "camp", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["labels_from_adjudication"] == 1 and summary["counts"]["labels_from_gold"] == 1
    assert summary["counts"]["judgments"] == 36 + 1  # the votes and the decision that counts
    rows = {row["prompt"]: row for row in training_rows("snapshot:camp-v1", "preference", workspace=any_workspace)}
    assert len(rows) == 12
    for item_id, expected in ((decided, flip[votes[decided][0]]), (gold, flip[votes[gold][0]])):
        i = prompts[item_id].rsplit(" ", 1)[1]
        assert rows[prompts[item_id]]["chosen"] == f"Answer {expected.upper()} to prompt {i}", item_id
    others = [item_id for item_id in unanimous[2:]]
    for item_id in others:  # undecided items keep their aggregate
        i = prompts[item_id].rsplit(" ", 1)[1]
        assert rows[prompts[item_id]]["chosen"] == f"Answer {votes[item_id][0].upper()} to prompt {i}"


# ---------------------------------------------------------------------------------------------------------------
# --votes reliability: one row per vote, weighted by the annotator's Dawid-Skene reliability
# ---------------------------------------------------------------------------------------------------------------

# Six PandaLM-style items judged by three annotators (1: response1 better, 2: response2 better, 0: tie). The
# first two agree; the third always says the opposite (a tie where they say response1, response1 where they tie).
TINY_VOTES = [(1, 1, 2), (2, 2, 1), (1, 1, 2), (2, 2, 1), (0, 0, 1), (1, 1, 2)]


def _tiny_votes_file(path):
    records = [{"idx": i, "instruction": f"q{i}", "input": "", "response1": f"r1-{i}", "response2": f"r2-{i}",
                "annotator1": a, "annotator2": b, "annotator3": c} for i, (a, b, c) in enumerate(TINY_VOTES)]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _snapshot_rows(workspace, summary):
    return [json.loads(line) for line in (workspace.root / summary["path"]).read_text(encoding="utf-8").splitlines()]


def test_vote_rows_carry_their_annotators_reliability(any_workspace, cli, tmp_path):
    """Each vote is a row, in item order and then judgment order, weighted by its annotator's Dawid-Skene
    reliability: the two who agree ~0.99, the adversarial one ~0.005 (EM from the majority start: its confusion
    matrix is the swap, so its expected accuracy is about its smoothing). The weights are `tether qc`'s figures.
    A gold item (q5, made gold with the answer its two good annotators gave) is one row of weight 1."""
    from tether.store.tables import Item

    assert cli("data", "import", _tiny_votes_file(tmp_path / "tiny.json"), "--name", "tiny").code == 0
    with session_scope(any_workspace.database_url) as session:  # as campaigns.mark_gold does (imported sets have no schema)
        gold_item = session.scalar(select(Item).where(Item.external_id == "5"))
        gold_item.is_gold, gold_item.gold_value = True, {"choice": "a", "strength": None, "margin": None}
    result = cli("data", "snapshot", "tiny", "--votes", "reliability", "--keep-ties", "--snapshot-name", "tiny-votes", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    weights = summary["qc"]["votes/weights"]
    good, bad = weights["tiny/annotator1"], weights["tiny/annotator3"]
    assert weights["tiny/annotator2"] == good and good > 0.98 and bad < 0.01
    assert weights == summary["qc"]["qc/reliability"]  # what `tether qc` reports, recorded beside
    assert summary["aggregate"] == "votes:reliability"

    def row(i, chosen, weight, tie=False):
        rejected = "r2" if chosen == "r1" else "r1"
        return {"prompt": f"q{i}", "chosen": f"{chosen}-{i}", "rejected": f"{rejected}-{i}", "weight": weight, **({"tie": True} if tie else {})}

    expected = []
    for i, winner in enumerate(["r1", "r2", "r1", "r2"]):
        loser = "r2" if winner == "r1" else "r1"
        expected += [row(i, winner, good), row(i, winner, good), row(i, loser, bad)]
    expected += [row(4, "r1", good, tie=True), row(4, "r1", good, tie=True), row(4, "r1", bad)]
    expected += [row(5, "r1", 1.0)]  # gold: its one decided row, weight 1
    assert _snapshot_rows(any_workspace, summary) == expected
    assert summary["counts"]["votes"] == 15 and summary["counts"]["ties_kept"] == 2 and summary["counts"]["labels_from_gold"] == 1

    # Without --keep-ties the two tie votes are dropped and counted; the third annotator's vote on q4 stays.
    plain = json.loads(cli("data", "snapshot", "tiny", "--votes", "reliability", "--json").stdout)
    assert _snapshot_rows(any_workspace, plain) == [r for r in expected if not r.get("tie")]
    assert plain["counts"]["ties_dropped"] == 2 and plain["row_count"] == 14
    shown = cli("data", "snapshot", "tiny", "--votes", "reliability")
    assert f"vote weights (Dawid-Skene reliability): tiny/annotator1 {good:.3f}" in shown.stdout

    both = cli("data", "snapshot", "tiny", "--votes", "reliability", "--aggregate", "dawid-skene")
    assert both.code == 2 and "--votes reliability writes every vote" in both.stderr
    filtered = cli("data", "snapshot", "tiny", "--votes", "reliability", "--min-agreement", "0.6")
    assert filtered.code == 2 and "--min-agreement filters aggregated pairs" in filtered.stderr
    unknown = cli("data", "snapshot", "tiny", "--votes", "weighted")
    assert unknown.code == 2 and "aggregate, reliability" in unknown.stderr


def test_weighted_rows_survive_export_import_and_the_digest(any_workspace, cli, tmp_path):
    """A vote snapshot exported as canonical JSONL reads back with its weights (the same digest); imported as a new
    set, each row's weight stays with its item, so a snapshot of that set has the same digest again."""
    assert cli("data", "import", _tiny_votes_file(tmp_path / "tiny.json"), "--name", "tiny").code == 0
    first = json.loads(cli("data", "snapshot", "tiny", "--votes", "reliability", "--keep-ties", "--json").stdout)
    out = tmp_path / "votes.jsonl"
    assert cli("data", "export", first["name"], "-o", out).code == 0
    rows = load_rows(out, "preference")
    assert rows == _snapshot_rows(any_workspace, first) and rows_digest(rows) == first["digest"]
    assert sorted({r["weight"] for r in rows}) == sorted(set(first["qc"]["votes/weights"].values()))
    assert cli("data", "import", out, "--name", "again").code == 0
    again = json.loads(cli("data", "snapshot", "again", "--keep-ties", "--json").stdout)
    assert again["digest"] == first["digest"] and again["row_count"] == 18


def test_weighted_votes_are_refused_as_trl_or_hh_unless_the_weights_are_dropped(any_workspace, cli, tmp_path):
    """TRL and HH files have no row weight: a vote snapshot written as either would count an unreliable annotator's
    votes fully without a word. Refused with the way out; --drop-weights writes them at full weight and says so."""
    assert cli("data", "import", _tiny_votes_file(tmp_path / "tiny.json"), "--name", "tiny").code == 0
    shown = cli("data", "snapshot", "tiny", "--votes", "reliability", "--snapshot-name", "shown")
    assert "--format jsonl -o out.jsonl" in shown.stdout  # the hint it prints works for weighted rows
    votes = json.loads(cli("data", "snapshot", "tiny", "--votes", "reliability", "--json").stdout)
    for fmt in ("trl", "hh"):
        out = tmp_path / f"votes.{fmt}.jsonl"
        refused = cli("data", "export", votes["name"], "--format", fmt, "-o", out)
        assert refused.code == 2 and f"which the {fmt} format cannot hold" in refused.stderr
        assert "--format jsonl" in refused.stderr and "--drop-weights" in refused.stderr and not out.exists()
        dropped = cli("data", "export", votes["name"], "--format", fmt, "-o", out, "--drop-weights")
        assert dropped.code == 0 and "dropped the rows' weights" in dropped.stdout
        written = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(written) == votes["row_count"] and not any("weight" in row for row in written)
    kept = cli("data", "export", votes["name"], "-o", tmp_path / "votes.jsonl", "--drop-weights")  # jsonl keeps them
    assert kept.code == 2 and "--drop-weights is for --format trl or hh" in kept.stderr and not (tmp_path / "votes.jsonl").exists()
    plain = json.loads(cli("data", "snapshot", "tiny", "--json").stdout)  # one aggregated row per pair: no weights
    result = cli("data", "export", plain["name"], "--format", "trl", "-o", tmp_path / "plain.jsonl")
    assert result.code == 0 and "weights" not in result.stdout
    same = [{"prompt": "p", "chosen": "a", "rejected": "b", "weight": 0.5}, {"prompt": "q", "chosen": "c", "rejected": "d", "weight": 0.5}]
    assert export_rows(same, "preference", "trl")[0] == [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in same]
    with pytest.raises(TetherError, match="2 distinct values, 0.5 to 1"):
        export_rows([same[0], {**same[1], "weight": 1.0}], "preference", "hh")


@pytest.mark.parametrize("weight", [-0.5, float("nan"), "0.9", True, [1]])
def test_a_bad_weight_is_a_clear_error_naming_the_row(workspace, cli, tmp_path, weight):
    good = {"prompt": "p", "chosen": "a", "rejected": "b", "weight": 0.5}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "weight": weight}) + "\n", encoding="utf-8")
    with pytest.raises(TetherError, match=r"bad.jsonl: record 2: weight must be a finite number >= 0") as info:
        load_rows(path, "preference")
    assert "leave the field out" in info.value.fix
    result = cli("data", "import", path, "--name", "bad")
    assert result.code == 2 and "bad.jsonl:2: weight " in result.stderr
    if weight == weight:  # a NaN is refused before, as every non-finite number is ("weight is NaN")
        assert "weight must be a finite number >= 0" in result.stderr and "1 counts the row fully" in result.stderr
