"""The over-optimization watch: Gao et al.'s forms fitted by hand-checkable numbers, the stop rule on a synthetic
curve, and the audit batch through the store functions of the web app."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tether.lifecycle.overoptimization import (
    AuditPoint,
    bon_kl,
    fit_gao,
    gao_curve,
    kept_at_end,
    watch_decision,
)


def test_best_of_n_kl_by_hand():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl(64) == pytest.approx(math.log(64) - 63 / 64)


def test_the_fits_recover_known_alpha_and_beta_and_their_peaks():
    d = np.linspace(0.2, 3.0, 12)
    rl = fit_gao(d, gao_curve(d, 1.0, 0.5, "rl"), "rl")
    assert (rl.alpha, rl.beta) == (pytest.approx(1.0, abs=1e-6), pytest.approx(0.5, abs=1e-6)) and rl.rmse < 1e-8
    assert rl.peak_d == pytest.approx(math.e)  # exp(alpha / beta - 1) = exp(1)
    bon = fit_gao(d, gao_curve(d, 1.0, 0.25, "bon"), "bon")
    assert (bon.alpha, bon.beta) == (pytest.approx(1.0, abs=1e-6), pytest.approx(0.25, abs=1e-6))
    assert bon.peak_d == pytest.approx(2.0)  # alpha / (2 beta)
    assert gao_curve([0.0, 1.0], 1.0, 0.5).tolist() == [0.0, 1.0]  # d (alpha - beta log d): 0 at 0, alpha at 1


def _points(ds, human_of, proxy_of=lambda d: 0.5 + 0.1 * d):
    return [AuditPoint(step=10 * (i + 1), d=d, human=human_of(d), proxy=proxy_of(d), checkpoint=f"ckpt-{i}") for i, d in enumerate(ds)]


def test_the_stop_rule_stops_at_the_forecast_peak_and_not_before():
    """gold gain d (1 - 0.5 log d) peaks at d* = e = 2.718: audits at d = 0.5, 1, ..., 3.5 must go on through
    d = 2.5 and stop at d = 3 (the first audit past the peak), keeping the best audit's checkpoint."""
    ds = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    points = _points(ds, lambda d: 0.5 + 0.1 * float(gao_curve([d], 1.0, 0.5)[0]))
    decisions = [watch_decision(points[: i + 1]) for i in range(len(points))]
    stops = [d.stop for d in decisions]
    assert stops == [False, False, False, False, False, True, True]
    stopped = decisions[5]
    assert "forecast peak" in stopped.reason and stopped.fit.peak_d == pytest.approx(math.e, rel=1e-4)
    # the best checkpoint is the audit nearest the peak that was measured: d = 2.5 (2.5 and 3 straddle e)
    human = [p.human for p in points[:6]]
    assert stopped.best == int(np.argmax(human)) and points[stopped.best].checkpoint in ("ckpt-4", "ckpt-5")
    assert not watch_decision(points[:2]).stop  # too few audits to fit: never stops on the forecast


def test_the_stop_rule_stops_when_the_proxy_rises_while_people_fall():
    points = [AuditPoint(10, 1.0, human=0.70, proxy=0.70), AuditPoint(20, 1.2, human=0.60, proxy=0.80)]
    decision = watch_decision(points)
    assert decision.stop and "rose" in decision.reason and decision.best == 0
    noisy = [AuditPoint(10, 1.0, human=0.70, proxy=0.70), AuditPoint(20, 1.2, human=0.68, proxy=0.80)]
    assert not watch_decision(noisy).stop  # people within the tolerance


def test_the_checkpoint_kept_at_a_stop_is_the_fits_best_not_one_noisy_audits():
    """Audits of 12 prompts: a win-rate's standard error is about 0.1. Seed 1 of the demo (audits at d = 2.45, 3.01,
    2.48 with people at 0.65, 0.67, 0.86): the fit's peak d* = 1.4 is passed, and the checkpoint kept is the one
    the fit puts highest (nearest the peak, d = 2.45), not the 0.86 of one audit at almost the same d."""
    points = [AuditPoint(0, 2.45, 0.65, 0.67, "start"), AuditPoint(20, 3.01, 0.67, 0.62, "rl-0"), AuditPoint(40, 2.48, 0.86, 0.92, "rl-1")]
    decision = watch_decision(points)
    assert decision.stop and decision.fit.peak_d < 2.45
    assert points[decision.best].checkpoint == "start"
    rising = [AuditPoint(10 * i, d, 0.5 + 0.05 * d, 0.6) for i, d in enumerate([0.5, 1.0, 1.5, 2.0])]  # no peak: by win-rate
    assert watch_decision(rising).best == 3


def test_a_round_that_ran_to_its_end_keeps_the_latest_checkpoint_unless_people_judged_an_earlier_one_better():
    at = lambda *humans: [AuditPoint(step=10 * i, d=1.0 + i, human=h, proxy=0.8) for i, h in enumerate(humans)]  # noqa: E731
    assert kept_at_end(at(0.60, 0.70, 0.72)) == 2  # rising: the latest
    assert kept_at_end(at(0.75, 0.72)) == 1  # an earlier one better by 0.03, within the tolerance: still the latest
    assert kept_at_end(at(0.58, 0.75, 0.60, 0.54)) == 1  # 0.75 against 0.54 now: the best
    assert kept_at_end(at(0.80, 0.70, 0.80, 0.60)) == 0  # equals: the first of them
    assert kept_at_end(at(0.80, 0.60), tolerance=0.25) == 1
    assert kept_at_end([]) == -1


def test_an_audit_batch_goes_through_the_web_apps_store_functions(tmp_path, monkeypatch):
    from sqlalchemy import select

    from tether.demo.simulate import SimAnnotator, run_annotators
    from tether.lifecycle import overoptimization as oo
    from tether.store import campaigns
    from tether.store.db import session_scope, upgrade
    from tether.store.tables import Item, Judgment

    url = f"sqlite:///{tmp_path / 'tether.db'}"
    upgrade(url)
    calls = {"add_items": 0, "next_assignment": 0, "submit_judgment": 0, "list_judgments": 0}
    for name in calls:  # the web app's own store path: count each call
        original = getattr(campaigns, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(campaigns, name, counted)
    oo.ensure_project(url, "audit", guidelines="Pick the better reply.", overlap=2, actor="test")
    crew = [SimAnnotator("a1", accuracy=1.0), SimAnnotator("a2", accuracy=1.0)]
    prompts = [f"prompt {i}" for i in range(6)]
    policy = ["good"] * 4 + ["bad", "same"]
    reference = ["bad"] * 4 + ["good", "same"]
    figures = oo.audit_batch(
        url, "audit", step=40, prompts=prompts, policy_texts=policy, reference_texts=reference,
        proxy_policy=[1, 1, 1, 1, 1, 0], proxy_reference=[0, 0, 0, 0, 0, 0], kl=4.0,
        judge=lambda u, p: run_annotators(u, p, crew, seed=0),
        item_meta=lambda prompt, a, b: {"sim_truth": "a" if a == "good" else "b"},
    )
    # 5 items (the identical pair is a tie, not queued), 2 judgments each; perfect annotators: 4 wins, 1 loss, 1 tie
    assert figures["audit/items"] == 5 and figures["audit/judgments"] == 10
    assert figures["audit/human_win_rate"] == pytest.approx(4.5 / 6)
    assert figures["audit/proxy_win_rate"] == pytest.approx(5.5 / 6)  # the identical pair: a tie for the proxy too
    assert figures["audit/d"] == 2.0 and figures["audit/step"] == 40
    assert calls["add_items"] == 1 and calls["next_assignment"] >= 10 and calls["submit_judgment"] == 10 and calls["list_judgments"] >= 1
    with session_scope(url) as session:
        judgments = session.scalars(select(Judgment)).all()
        assert len(judgments) == 10 and all(j.assignment_id is not None for j in judgments)
        assert {m["audit_step"] for m in session.scalars(select(Item.meta))} == {40}
