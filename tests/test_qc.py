"""Annotation QC: agreement, per-annotator figures, Dawid-Skene, aggregation, and `tether qc` on PandaLM."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from tether import qc
from tether.errors import TetherError
from tether.feedback.aggregation import Vote, bradley_terry_pairs, dawid_skene_pairs
from tether.feedback.dawid_skene import dawid_skene

nan = np.nan


def _pairwise(item_id, annotator, choice, shown_order=None, time_ms=None, gold=None):
    return qc.answers_from_judgment(
        item_id=item_id, annotator=annotator, kind="pairwise", value={"choice": choice}, shown_order=shown_order,
        time_spent_ms=time_ms, gold_value=None if gold is None else {"choice": gold},
    )


# ---------------------------------------------------------------------------------------------------------------
# Agreement


def test_alpha_of_a_hand_computed_nominal_example():
    """Two coders, four units: A says a a b b, B says a b b b.

    Coincidences (each pair of values within a unit counts once each way, divided by m - 1 = 1):
    o_aa = 2 (unit 1), o_ab = o_ba = 1 (unit 2), o_bb = 2 + 2 (units 3, 4); n_a = 3, n_b = 5, n = 8.
    D_o = (o_ab + o_ba) / n = 2/8;  D_e = (n_a n_b + n_b n_a) / (n (n - 1)) = 30/56;
    alpha = 1 - D_o / D_e = 1 - (2 * 56) / (8 * 30) = 8/15. Raw agreement: units agree 1, 0, 1, 1 -> 0.75.
    """
    answers = []
    for unit, (a, b) in enumerate([("a", "a"), ("a", "b"), ("b", "b"), ("b", "b")]):
        answers += _pairwise(unit, "A", a) + _pairwise(unit, "B", b)
    (row,) = qc.question_agreement(answers)
    assert row["question"] == "choice" and row["metric"] == "nominal"
    assert row["alpha"] == pytest.approx(8 / 15)
    assert row["pairwise_agreement"] == pytest.approx(0.75)
    assert row["n_units"] == row["n_units_overlap"] == 4 and row["n_answers"] == 8


def test_alpha_matches_krippendorffs_published_example():
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 observers x 12 units with gaps:
    alpha = 0.743 nominal, 0.815 ordinal, 0.849 interval."""
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]
    answers = [
        qc.Answer(unit=str(u), item_id=u, annotator=f"obs{o}", question="rating:x", value=v)
        for o, row in enumerate(data)
        for u, v in enumerate(row)
        if not math.isnan(v)
    ]
    for metric, expected in (("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)):
        (row,) = qc.question_agreement(answers, {"rating:x": metric})
        assert row["alpha"] == pytest.approx(expected, abs=5e-4)
    (row,) = qc.question_agreement(answers)
    assert row["metric"] == "ordinal"  # ratings default to ordinal
    assert row["n_units"] == 12 and row["n_units_overlap"] == 11  # unit 12 has one value


def test_questions_of_each_judgment_kind():
    pair = qc.answers_from_judgment(item_id=1, annotator="u", kind="pairwise", value={"choice": "b", "strength": 2})
    assert {(a.question, a.unit, a.value) for a in pair} == {("choice", "1", "b"), ("preference", "1", -2)}
    ranking = qc.answers_from_judgment(item_id=2, annotator="u", kind="ranking", value={"ranking": [2, 0, 1]})
    assert {(a.unit, a.value) for a in ranking} == {("2/2", 0), ("2/0", 1), ("2/1", 2)}
    comparisons = qc.answers_from_judgment(
        item_id=4, annotator="u", kind="ranking", value={"comparisons": [{"a": 2, "b": 0, "choice": "a"}, {"a": 1, "b": 2, "choice": "tie"}]}
    )
    assert {(a.question, a.unit, a.value) for a in comparisons} == {("comparison", "4/0/2", "second"), ("comparison", "4/1/2", "tie")}
    rating = qc.answers_from_judgment(item_id=3, annotator="u", kind="rating", value={"ratings": {"help": 4, "safe": 5}})
    assert {(a.question, a.value) for a in rating} == {("rating:help", 4), ("rating:safe", 5)}
    assert qc.default_metric("preference") == "ordinal" and qc.default_metric("thumbs") == "nominal"


def test_first_shown_win_follows_the_shown_order():
    # shown_order [1, 0]: completion "b" (position 1) was shown first.
    assert _pairwise(1, "u", "b", shown_order=[1, 0])[0].first_shown_won is True
    assert _pairwise(1, "u", "a", shown_order=[1, 0])[0].first_shown_won is False
    assert _pairwise(1, "u", "a", shown_order=[0, 1])[0].first_shown_won is True
    assert _pairwise(1, "u", "tie", shown_order=[0, 1])[0].first_shown_won is None
    assert _pairwise(1, "u", "a")[0].first_shown_won is None  # imported: order unknown


def test_leave_one_out_agreement_by_hand():
    """Unit 1: A=a, B=a, C=b. Unit 2: A=a, B=b, C=b. Unit 3: A=a, B=b (two annotators only).
    A: unit 1 others (a, b) tie -> skipped; unit 2 others (b, b) -> b, A disagrees; unit 3 other b -> disagrees.
    B: unit 1 others (a, b) skipped; unit 2 others (a, b) skipped; unit 3 other a -> disagrees.
    C: unit 1 others (a, a) -> a, disagrees; unit 2 others (a, b) skipped."""
    answers = []
    for unit, votes in enumerate([("a", "a", "b"), ("a", "b", "b"), ("a", "b", None)], start=1):
        for name, choice in zip("ABC", votes):
            if choice:
                answers += _pairwise(unit, name, choice)
    assert qc.leave_one_out_agreement(answers) == {"A": (0, 2), "B": (0, 1), "C": (0, 1)}


def test_position_bias_binomial_p_value_by_hand():
    """15 first-shown wins of 20: two-sided p = 2 * P(X >= 15 | n=20, 1/2) = 2 * 21700 / 2**20 = 0.041389."""
    answers = []
    for i in range(20):
        first = 0 if i % 2 else 1
        winner = first if i < 15 else 1 - first
        answers += _pairwise(i, "u", "ab"[winner], shown_order=[first, 1 - first], time_ms=1000)
        answers += _pairwise(i, "v", "ab"[winner], shown_order=[0, 1], time_ms=1000)
    row = next(r for r in qc.annotator_figures([a for a in answers if a.question == "choice"]) if r["annotator"] == "u")
    assert row["first_shown_win_rate"] == 0.75 and row["n_position"] == 20
    assert row["position_pvalue"] == pytest.approx(2 * 21700 / 2**20)
    assert row["flags"] == []  # p = 0.041 is above the 0.01 flag level


# ---------------------------------------------------------------------------------------------------------------
# Dawid-Skene, MACE


def test_dawid_skene_recovers_a_spammer_and_beats_majority():
    """Three accurate annotators (0.9) and two that answer at random: majority is dragged down, Dawid-Skene
    weighs the random ones out, and their estimated reliability sits near chance."""
    rng = np.random.default_rng(0)
    n, accuracy = 400, [0.9, 0.9, 0.9, 0.5, 0.5]
    truth = rng.integers(0, 2, n)
    unit, ann, lab = [], [], []
    for i in range(n):
        for w, acc in enumerate(accuracy):
            unit.append(i)
            ann.append(w)
            lab.append(truth[i] if rng.random() < acc else 1 - truth[i])
    unit, ann, lab = map(np.array, (unit, ann, lab))
    ds = dawid_skene(unit, ann, lab, n, 5, 2)
    assert ds.reliability[:3].min() > 0.85 and ds.reliability[3:].max() < 0.6
    assert np.allclose(ds.posteriors.sum(1), 1) and ds.priors.sum() == pytest.approx(1)
    votes = np.zeros((n, 2))
    np.add.at(votes, (unit, lab), 1)
    majority = votes.argmax(1)
    assert (ds.posteriors.argmax(1) == truth).mean() > (majority == truth).mean()
    _, competence = qc.mace(unit, ann, lab, n, 5, 2)
    assert competence[:3].min() > 0.7 and competence[3:].max() < 0.3


def test_mace_competence_is_twice_accuracy_minus_one_and_catches_a_constant_spammer():
    """MACE: P(label = truth) = competence + (1 - competence) * spam[truth]. With two classes and a spam
    distribution near uniform, an annotator right with probability q has competence 2q - 1: 0.9 -> 0.8. One that
    always answers class 0 knows nothing: its answers are all explained by its spam distribution (competence ~0)."""
    rng = np.random.default_rng(1)
    n = 600
    truth = rng.integers(0, 2, n)
    unit, ann, lab = [], [], []
    for i in range(n):
        for w in range(3):
            unit.append(i)
            ann.append(w)
            lab.append(truth[i] if rng.random() < 0.9 else 1 - truth[i])
        unit.append(i)
        ann.append(3)
        lab.append(0)  # the constant spammer
    posteriors, competence = qc.mace(np.array(unit), np.array(ann), np.array(lab), n, 4, 2)
    assert competence[:3] == pytest.approx([0.8] * 3, abs=0.06)
    assert competence[3] < 0.05
    assert np.allclose(posteriors.sum(1), 1) and (posteriors.argmax(1) == truth).mean() > 0.95


def test_mace_option_adds_competence_to_each_annotator():
    """`tether qc --mace` (QCConfig(mace=True)): each annotator row gets ``mace_competence``; off by default.
    Two careful annotators (always right) and a random one on 200 pairs: the careful ones near 1, the random one
    near 0, in the same order as the Dawid-Skene reliability."""
    rng = np.random.default_rng(0)
    answers = []
    for item in range(200):
        truth = "ab"[rng.integers(0, 2)]
        answers += _pairwise(item, "careful1", truth) + _pairwise(item, "careful2", truth)
        answers += _pairwise(item, "random", "ab"[rng.integers(0, 2)])
    default = qc.annotator_figures(answers)
    assert all(row["mace_competence"] is None for row in default)
    rows = {row["annotator"]: row for row in qc.annotator_figures(answers, qc.QCConfig(mace=True))}
    assert rows["careful1"]["mace_competence"] > 0.95 and rows["careful2"]["mace_competence"] > 0.95
    assert rows["random"]["mace_competence"] < 0.15
    assert rows["random"]["reliability"] < min(rows["careful1"]["reliability"], rows["careful2"]["reliability"])
    report = qc.qc_report(answers, config=qc.QCConfig(mace=True))
    assert "mace" in qc.format_report(report)


def test_unanimous_answers_give_full_reliability():
    unit = np.repeat(np.arange(6), 2)
    ann = np.tile([0, 1], 6)
    lab = np.repeat([0, 1, 2, 0, 1, 2], 2)
    ds = dawid_skene(unit, ann, lab, 6, 2, 3)
    assert np.array_equal(ds.posteriors.argmax(1), [0, 1, 2, 0, 1, 2])
    assert ds.reliability == pytest.approx([1.0, 1.0], abs=0.01)


# ---------------------------------------------------------------------------------------------------------------
# Aggregation


def test_bradley_terry_two_completions_is_the_smoothed_win_ratio():
    """For two completions the MM fixed point is p_a / p_b = W_a / W_b: 3 wins to 1, plus 0.5 virtual wins
    each way, gives a margin of ln(3.5 / 1.5) = 0.847298."""
    votes = [Vote(1, u, "pairwise", {"choice": c}) for u, c in enumerate("aaab")]
    (pair,) = bradley_terry_pairs(votes)
    assert (pair.chosen, pair.rejected, pair.tie) == (0, 1, False)
    assert pair.margin == pytest.approx(math.log(3.5 / 1.5), abs=1e-6)
    assert pair.confidence == pytest.approx(0.7, abs=1e-6)  # 3.5 / (3.5 + 1.5)
    assert pair.agreement == 0.75 and pair.votes == 4


def test_bradley_terry_splits_are_ties_and_rankings_become_all_pairs():
    figures = {}
    split = [Vote(1, 0, "pairwise", {"choice": "a"}), Vote(1, 1, "pairwise", {"choice": "b"})]
    ranking = [Vote(2, 0, "ranking", {"ranking": [2, 0, 1]}), Vote(2, 1, "ranking", {"ranking": [2, 0, 1]})]
    pairs = bradley_terry_pairs(split + ranking, qc=figures)
    tie = pairs[0]
    assert tie.tie and tie.margin == 0.0 and tie.agreement == 0.0
    ranked = {(p.chosen, p.rejected): p.margin for p in pairs[1:]}
    assert set(ranked) == {(2, 0), (2, 1), (0, 1)}
    assert ranked[(2, 1)] > ranked[(2, 0)] == pytest.approx(ranked[(0, 1)])  # the rank gap of 2 has the largest margin
    assert figures["aggregate/method"] == "bradley-terry" and figures["aggregate/compared_pairs"] == 4 and figures["aggregate/ties"] == 1


def test_dawid_skene_pairs_follow_the_reliable_annotators():
    """Annotators 0-2 always agree with each other; annotator 3 always says the opposite. On an item only
    annotators 0 and 3 judged (a 1-1 split majority cannot decide), Dawid-Skene follows annotator 0."""
    votes = []
    for item in range(30):
        truth = "ab"[item % 2]
        wrong = "ba"[item % 2]
        votes += [Vote(item, w, "pairwise", {"choice": truth}) for w in range(3)] + [Vote(item, 3, "pairwise", {"choice": wrong})]
    votes += [Vote(99, 0, "pairwise", {"choice": "b"}), Vote(99, 3, "pairwise", {"choice": "a"})]
    figures = {}
    pairs = {p.item_id: p for p in dawid_skene_pairs(votes, qc=figures)}
    assert pairs[99].chosen == 1 and not pairs[99].tie and pairs[99].agreement == 0.5
    assert all(pairs[i].chosen == i % 2 for i in range(30))
    assert figures["aggregate/method"] == "dawid-skene" and figures["aggregate/compared_pairs"] == 31


# ---------------------------------------------------------------------------------------------------------------
# PandaLM: the figures against an independent computation


PANDALM_CODES = {1: "a", 2: "b", 0: "tie"}


@pytest.fixture(scope="module")
def pandalm_records(shared_data):
    return json.loads((shared_data / "pandalm" / "testset-v1.json").read_text())


@pytest.fixture
def pandalm_workspace(workspace, shared_data, cli):
    result = cli("data", "import", shared_data / "pandalm" / "testset-v1.json", "--name", "pandalm")
    assert result.code == 0, result.stderr
    return workspace


def test_pandalm_qc_matches_an_independent_computation(pandalm_workspace, pandalm_records, cli, tmp_path):
    import krippendorff

    result = cli("qc", "pandalm", "--json", "--html", tmp_path / "qc.html")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n_items"] == 999 and report["n_judgments"] == 2997 and report["n_annotators"] == 3

    # Independently: the raw file's votes as a 3 x 999 matrix (codes 0/1/2 as they are in the file).
    names = ("annotator1", "annotator2", "annotator3")
    matrix = np.array([[r[k] for r in pandalm_records] for k in names], dtype=float)
    (choice,) = [q for q in report["questions"] if q["question"] == "choice"]
    assert choice["metric"] == "nominal" and choice["n_units_overlap"] == 999
    assert choice["alpha"] == pytest.approx(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"), abs=1e-12)
    assert choice["alpha"] == pytest.approx(0.8642, abs=1e-4)
    agree = np.mean([sum(r[x] == r[y] for x, y in ((names[0], names[1]), (names[0], names[2]), (names[1], names[2]))) / 3 for r in pandalm_records])
    assert choice["pairwise_agreement"] == pytest.approx(agree)

    by_name = {row["annotator"]: row for row in report["annotators"]}
    for k, name in enumerate(names):
        others = [names[j] for j in range(3) if j != k]
        # The two others agree -> that is the consensus; they split -> the item is not compared.
        compared = [r for r in pandalm_records if r[others[0]] == r[others[1]]]
        row = by_name[f"pandalm/{name}"]
        assert row["n_loo"] == len(compared)
        assert row["loo_agreement"] == pytest.approx(sum(r[name] == r[others[0]] for r in compared) / len(compared))
        assert row["reliability"] > 0.9 and row["flags"] == []
        assert row["first_shown_win_rate"] is None and row["median_time_ms"] is None  # imported: not recorded
    html = (tmp_path / "qc.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "pandalm/annotator1" in html


def test_dawid_skene_on_pandalm_matches_crowd_kit(pandalm_records):
    """Our EM against crowd-kit's DawidSkene on the same answers (crowd-kit is optional: skipped without it)."""
    pd = pytest.importorskip("pandas")
    aggregation = pytest.importorskip("crowdkit.aggregation")
    names = ("annotator1", "annotator2", "annotator3")
    rows = [{"task": r["idx"], "worker": k, "label": PANDALM_CODES[r[k]]} for r in pandalm_records for k in names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = aggregation.DawidSkene(n_iter=100).fit(pd.DataFrame(rows))
    answers = [a for r in pandalm_records for k in names for a in _pairwise(r["idx"], k, PANDALM_CODES[r[k]])]
    ours = {row["annotator"]: row["reliability"] for row in qc.annotator_figures(answers)}
    errors = theirs.errors_  # rows (worker, label), columns: true class
    for k in names:
        expected = sum(theirs.priors_[c] * errors.loc[(k, c), c] for c in ("a", "b", "tie"))
        assert ours[k] == pytest.approx(expected, abs=0.01)
    votes = [Vote(r["idx"], k, "pairwise", {"choice": PANDALM_CODES[r[k]]}) for r in pandalm_records for k in names]
    ds_labels = {p.item_id: ("tie" if p.tie else "ab"[p.chosen]) for p in dawid_skene_pairs(votes)}
    same = np.mean([ds_labels[i] == label for i, label in theirs.labels_.items()])
    assert same > 0.99


def test_qc_of_a_missing_set_is_a_clear_error(workspace, cli):
    result = cli("qc", "nope")
    assert result.code == 2 and "no project or snapshot named 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_metric_option_is_checked():
    assert qc.parse_metrics(["rating:help=interval", "preference=nominal"]) == {"rating:help": "interval", "preference": "nominal"}
    with pytest.raises(TetherError, match="QUESTION=METRIC"):
        qc.parse_metrics(["rating:help=ratio"])
    with pytest.raises(TetherError, match="cannot be interval"):
        qc.question_agreement(_pairwise(1, "u", "a") + _pairwise(1, "v", "b"), {"choice": "interval"})


# ---------------------------------------------------------------------------------------------------------------
# Snapshots: --aggregate dawid-skene | bradley-terry, --min-agreement, --exclude-flagged, QC recorded


def test_pandalm_snapshot_bradley_terry_keeps_unanimous_pairs(pandalm_workspace, pandalm_records, cli):
    result = cli("data", "snapshot", "pandalm", "--aggregate", "bradley-terry", "--min-agreement", "1", "--snapshot-name", "bt", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    # Independently: items where all three annotators agree on a winner (not a tie).
    unanimous = [r for r in pandalm_records if r["annotator1"] == r["annotator2"] == r["annotator3"] != 0]
    assert summary["row_count"] == len(unanimous)
    assert summary["aggregate"] == "bradley-terry" and summary["qc"]["aggregate/method"] == "bradley-terry"
    assert summary["qc"]["qc/alpha"]["choice"] == pytest.approx(0.8642, abs=1e-4)
    assert summary["qc"]["qc/min_agreement"] == 1.0 and summary["counts"]["low_agreement"] > 0
    rows = [json.loads(line) for line in (pandalm_workspace.root / summary["path"]).read_text().splitlines()]
    assert {round(r["margin"], 5) for r in rows} == {round(math.log(3.5 / 0.5), 5)}  # 3 wins to 0, plus the prior


def test_snapshot_leaves_out_flagged_annotators(workspace, cli, tmp_path):
    """annotator1 and annotator2 always give the truth; annotator3 gets every other item wrong: QC flags it and
    --exclude-flagged drops its judgments; Dawid-Skene and majority then agree on every item."""
    records = []
    for i in range(40):
        truth = 1 + i % 2
        wrong = 3 - truth
        records.append({"idx": i, "instruction": f"question {i}", "input": "", "response1": f"one {i}", "response2": f"two {i}",
                        "annotator1": truth, "annotator2": truth, "annotator3": truth if i % 4 < 2 else wrong})
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(records))
    assert cli("data", "import", path, "--name", "toy").code == 0
    result = cli("data", "snapshot", "toy", "--aggregate", "dawid-skene", "--exclude-flagged", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["qc"]["qc/excluded_annotators"] == ["toy/annotator3"]
    assert "toy/annotator3" in summary["qc"]["qc/flagged"] and summary["counts"]["excluded_judgments"] == 40
    assert summary["qc"]["aggregate/method"] == "dawid-skene" and summary["qc"]["aggregate/unanimous"] == 40
    assert summary["row_count"] == 40
    result = cli("data", "snapshot", "toy", "--aggregate", "majority", "--min-agreement", "0.9", "--json")
    summary = json.loads(result.stdout)
    assert summary["row_count"] == 20 and summary["counts"]["low_agreement"] == 20  # the 2-1 items
    assert summary["qc"]["qc/excluded_annotators"] == []
    bad = cli("data", "snapshot", "toy", "--min-agreement", "1.5")
    assert bad.code == 2 and "--min-agreement" in bad.stderr
