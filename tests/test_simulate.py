"""The annotator simulation: answers go through the store's queue, and QC finds what was planted."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import func, select

from tether import qc
from tether.demo import simulate
from tether.feedback.aggregation import Vote, dawid_skene_pairs, majority_pairs
from tether.store.db import session_scope, upgrade
from tether.store.tables import Assignment, AuditEvent, Item, Judgment, User


def _run(tmp_path_factory, n_items, seed):
    url = f"sqlite:///{tmp_path_factory.mktemp('sim') / 'tether.db'}"
    upgrade(url)
    result = simulate.simulate(url, name="sim", n_items=n_items, overlap=4, gold_rate=0.05, seed=seed)
    return url, result, qc.project_qc(url, "sim")


@pytest.fixture(scope="module")
def small_sim(tmp_path_factory):
    """60 pairwise items, each judged by 4 of the default crew through the store's queue."""
    return _run(tmp_path_factory, 60, seed=3)


@pytest.fixture(scope="module")
def full_sim(tmp_path_factory):
    """The same with 250 items (a minute on a busy 2-core machine): enough answers to rank five annotators."""
    return _run(tmp_path_factory, 250, seed=3)


def _offline(n_items=250, seed=3):
    judgments, truth = simulate.simulate_offline(n_items=n_items, overlap=4, seed=seed)
    answers = [
        a for j in judgments for a in qc.answers_from_judgment(
            item_id=j.item_id, annotator=j.annotator, kind=j.kind, value=j.value, shown_order=j.shown_order, time_spent_ms=j.time_spent_ms
        )
    ]
    votes = [Vote(j.item_id, j.annotator, j.kind, j.value) for j in judgments]
    return qc.qc_report(answers), votes, truth


def test_answers_go_through_the_queue(small_sim):
    url, result, _ = small_sim
    with session_scope(url) as session:
        judgments = session.scalars(select(Judgment)).all()
        assert len(judgments) == sum(result.judgments.values())
        assert {j.source for j in judgments} == {"sim"}
        assert all(j.assignment_id is not None and sorted(j.shown_order) == [0, 1] for j in judgments)
        assert all(j.time_spent_ms and j.time_spent_ms > 0 for j in judgments)
        # Never the same item twice to one annotator; every ordinary item filled to the overlap.
        pairs = session.execute(select(Judgment.item_id, Judgment.user_id)).all()
        assert len(pairs) == len(set(pairs))
        per_item = session.execute(
            select(Item.id, func.count(Judgment.id)).join(Judgment, Judgment.item_id == Item.id).where(Item.is_gold.is_(False)).group_by(Item.id)
        ).all()
        assert {n for _, n in per_item} == {4}
        assert session.scalar(select(func.count()).select_from(Assignment).where(Assignment.state == "done")) == len(judgments)
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "judgment.create")) == len(judgments)
        simulated = set(session.scalars(select(User.name).where(User.role == "annotator")))
        gold_answers = session.scalar(select(func.count()).select_from(Judgment).join(Item, Item.id == Judgment.item_id).where(Item.is_gold.is_(True)))
    assert simulated == {a.name for a in simulate.default_crew()}
    assert len(result.truth) == 60 and len(per_item) >= 50 and gold_answers > 0


def _check_flags(report, full=True):
    flags = {row["annotator"]: {f["flag"] for f in row["flags"]} for row in report["annotators"]}
    assert "position" in flags["sim-biased"]
    assert "fast" in flags["sim-spammer"]
    if full:
        assert "unreliable" in flags["sim-spammer"]
        assert flags["sim-expert"] == flags["sim-good"] == flags["sim-fair"] == set()
    biased = next(row for row in report["annotators"] if row["annotator"] == "sim-biased")
    assert biased["first_shown_win_rate"] > 0.7


def _check_ranking(report):
    reliability = {row["annotator"]: row["reliability"] for row in report["annotators"]}
    crew = simulate.default_crew()
    assert [a.true_accuracy for a in crew] == sorted((a.true_accuracy for a in crew), reverse=True)
    assert sorted(reliability, key=lambda name: -reliability[name]) == [a.name for a in crew]


def _check_dawid_skene_beats_majority(votes, truth):
    def right(pairs):
        return sum(not p.tie and "ab"[p.chosen] == truth[p.item_id] for p in pairs) / len(truth)

    majority, dawid_skene = right(majority_pairs(votes)), right(dawid_skene_pairs(votes))
    assert dawid_skene > majority + 0.03 and dawid_skene > 0.8


def test_spammer_and_position_biased_annotator_are_flagged_through_the_store(small_sim):
    _check_flags(small_sim[2], full=False)  # ~50 answers each: too few to rate everyone


@pytest.mark.slow
def test_store_simulation_ranks_annotators_and_dawid_skene_beats_majority(full_sim):
    url, result, report = full_sim
    _check_ranking(report)
    _check_flags(report)
    with session_scope(url) as session:
        votes = [Vote(j.item_id, j.user_id, j.kind, j.value) for j in session.scalars(select(Judgment))]
    _check_dawid_skene_beats_majority(votes, result.truth)


@pytest.mark.parametrize("seed", [3, 4])
def test_reliability_ranks_annotators_by_true_accuracy(seed):
    report, _, _ = _offline(seed=seed)
    _check_ranking(report)
    _check_flags(report)


@pytest.mark.parametrize("seed", [3, 4])
def test_dawid_skene_beats_majority_against_the_hidden_truth(seed):
    _, votes, truth = _offline(seed=seed)
    _check_dawid_skene_beats_majority(votes, truth)


def test_sim_annotators_answer_as_specified():
    rng = random.Random(0)
    spammer, biased, honest = simulate.SimAnnotator("s", spam=True), simulate.SimAnnotator("b", accuracy=1.0, position_bias=1.0), simulate.SimAnnotator("h", accuracy=1.0)
    assert honest.answer("b", [0, 1], rng)[0]["choice"] == "b"
    assert biased.answer("a", [1, 0], rng)[0]["choice"] == "b"  # always the first shown
    choices = [spammer.answer("a", [0, 1], rng)[0]["choice"] for _ in range(400)]
    assert 150 < choices.count("a") < 250
    assert simulate.SimAnnotator("x", accuracy=0.9, position_bias=0.5).true_accuracy == pytest.approx(0.7)
