"""The demo's HTML report: the policy evaluation report with the demo's own sections (annotators, style mix), and
rendering it again from a run's records after a purge rewrote the names in them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def rewrite_report(run_dir: Path, report_path: Path) -> None:
    """Render a run's HTML report again from its ``evaluation.json`` (after a purge rewrote the names in it)."""
    from tether.demo.task import DemoTask
    from tether.lifecycle.reports.html import read_metrics, write

    saved = json.loads((Path(run_dir) / "evaluation.json").read_text(encoding="utf-8"))
    out, result, qc_report = saved["summary"], saved["evaluation"], saved["qc"]
    models = Path(run_dir) / "models"
    policy_dir = Path(out.get("policy_dir") or models / f"policy-{out['algo']}")
    rm_dir = Path(out.get("reward_dir") or models / "reward")
    write(report_path, demo_report(out, result, qc_report, read_metrics(policy_dir), read_metrics(rm_dir), DemoTask(out["seed"])))


STYLE_ORDER = ["good", "verbose", "off_topic", "unhelpful", "rude", "pii_leak", "policy_break", "other"]


STYLE_COLORS = {
    "good": "#2ca02c", "verbose": "#98df8a", "off_topic": "#17becf", "unhelpful": "#bcbd22", "rude": "#ff7f0e",
    "pii_leak": "#d62728", "policy_break": "#9467bd", "other": "#7f7f7f",
}


def demo_report(out: dict[str, Any], result: dict[str, Any], qc_report: dict[str, Any], policy_metrics: list[dict[str, Any]], rm_metrics: list[dict[str, Any]], task: Any) -> str:
    """The HTML report of one demo run."""
    from tether.demo.task import GUIDELINES
    from tether.lifecycle.reports.html import (
        Section,
        esc,
        pct,
        plot_bars,
        plot_stacked_mix,
        render,
        table_html,
    )
    from tether.lifecycle.reports.policy import kl_text, policy_sections, win_rate_note, win_rate_tone

    gwr, (glo, ghi) = out["gold_win_rate"], out["gold_win_rate_ci"]
    cards = [
        ("gold win-rate vs SFT", pct(gwr), f"{win_rate_note(glo, ghi)}, by the hidden guidelines", "good" if gwr >= 0.7 and glo > 0.5 else win_rate_tone(glo, ghi) or "bad"),
        ("rule violations", f"{pct(out['violation_rate_sft'], 0)} → {pct(out['violation_rate_policy'], 0)}", "SFT → policy (personal data, forbidden phrases)", "good" if out["violation_rate_policy"] < out["violation_rate_sft"] else "bad"),
        ("good replies", f"{pct(out['good_style_sft'], 0)} → {pct(out['good_style_policy'], 0)}", "share of replies in the good style", "good" if out["good_style_policy"] > out["good_style_sft"] else "bad"),
        ("reward-model win-rate", pct(out["reward_win_rate"]), "the proxy the policy was trained on", ""),
        ("KL to SFT", *kl_text(out)),
    ]
    sections: list[Section] = []
    stage_rows = [[r["number"], r["title"], f"{r['seconds']:.1f} s", r["detail"], " ".join(r["notes"])] for r in out["stages"]]
    intro = (
        "<p>A tiny language model plays a customer-support agent for a fictional shop. Its first version was fine-tuned on "
        "replies of every kind, good and bad. Simulated annotators then compared pairs of its replies; quality control "
        "caught the one who clicked at random; their judgments, frozen in a snapshot, trained a reward model; and "
        f"{esc(out['algo'].upper())} moved the policy toward what the reward model and the rule checks prefer. The annotators "
        "follow a hidden <em>gold</em> preference written from the guidelines below; it is never shown to the reward model "
        "or the policy, so the gold win-rate measures whether the loop really moved the model toward the guidelines.</p>"
    )
    sections.append(Section("What this run did", [intro, table_html(["#", "stage", "time", "result", "notes"], stage_rows, numeric=(0, 2))]))
    sections.append(Section("The guidelines (what the annotators are asked to judge)", [f"<pre>{esc(GUIDELINES)}</pre>"]))
    policy_parts = policy_sections(result, training=policy_metrics, baseline_name="SFT")
    sections.append(policy_parts[0])
    mix = result["style_mix"]
    sections.append(
        Section(
            "Reply styles before and after",
            [
                plot_stacked_mix({"SFT": mix["SFT"], "policy": mix["policy"]}, STYLE_ORDER, STYLE_COLORS, "reply style mix on held-out requests"),
                "<p class='small'>Styles read from the reply text with the task's own markers (tether.demo.task.DemoTask.style_of): "
                "\"good\" gives the next step of <em>this</em> request; \"off_topic\" is polite and concrete but answers another "
                "kind of request (a policy that collapses onto one safe-looking reply shows here); \"other\" matches no style "
                "(garbled or mixed).</p>",
            ],
        )
    )
    if out.get("rounds"):
        sections.extend(loop_sections(out["rounds"]))
    sections.extend(policy_parts[1:-1])
    rows = []
    truth = out.get("annotators", {})
    for r in qc_report["annotators"]:
        hidden = truth.get(r["annotator"], {})
        rows.append([
            r["annotator"], r["n_answers"], pct(hidden.get("accuracy")), f"{r['reliability']:.2f}",
            pct(r["loo_agreement"]) if r["loo_agreement"] is not None else "n/a",
            pct(r["gold_accuracy"]) if r["gold_accuracy"] is not None else "n/a",
            "; ".join(f["reason"] for f in r["flags"]) or "-",
        ])
    names = [r["annotator"] for r in qc_report["annotators"]]
    qc_parts = [
        plot_bars(names, [r["reliability"] for r in qc_report["annotators"]], "Dawid-Skene reliability per annotator (red: flagged)", "reliability", [bool(r["flags"]) for r in qc_report["annotators"]]),
        table_html(["annotator", "answers", "true accuracy (hidden)", "reliability", "agrees with others", "gold accuracy", "QC flags"], rows, numeric=(1, 2, 3, 4, 5)),
        f"<p class='small'>Snapshot <code>{esc(out['snapshot']['name'])}</code>: {out['snapshot']['row_count']} pairs, aggregate "
        f"{esc(out['snapshot']['aggregate'])}, sha256 <code>{esc(out['snapshot']['digest'])}</code>.</p>",
    ]
    sections.append(Section("Annotators and quality control", qc_parts))
    rmm = out.get("reward_model_metrics", {})
    agreement = result.get("proxy_gold_agreement")
    rm_parts = [
        table_html(
            ["figure", "value"],
            [
                ["held-out accuracy on the snapshot's pairs", pct(rmm.get("eval/accuracy"))],
                ["calibration error (ECE) on them", f"{rmm['eval/ece']:.3f}" if "eval/ece" in rmm else "n/a"],
                ["agrees with the gold on policy-vs-SFT pairs", pct(agreement)],
            ],
            numeric=(1,),
        )
    ]
    sections.append(Section("Reward model", rm_parts))
    sections.append(policy_parts[-1])
    reg = out.get("registry", {})
    sections.append(
        Section(
            "Registry and lineage",
            [
                table_html(
                    ["what", "value"],
                    [
                        ["reward model", reg.get("reward_model", "")],
                        ["policy", reg.get("policy", "")],
                        ["policy promoted to champion", "yes" if reg.get("champion") else "no (see the notes above)"],
                        ["trace it back", f"tether registry lineage {reg.get('policy', '')}"],
                    ],
                )
            ],
        )
    )
    subtitle = f"workspace {out['workspace']} · project {out['project']} · seed {out['seed']} · {'fast' if out['fast'] else 'default'} size · {out['seconds']:.0f} s"
    return render("Tether demo: aligning a support assistant with human feedback", subtitle, cards, sections, footer="Generated by tether demo; self-contained, works offline.")


def audit_points(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every audit of every round, in order: round, step, d, people's and the reward model's win-rates."""
    return [{"round": r["round"], **a} for r in rounds for a in (r.get("watch") or {}).get("audits", [])]


def loop_sections(rounds: list[dict[str, Any]]) -> list[Any]:
    """The on-policy rounds: a table per round and the over-optimization curve (people and proxy against
    d = sqrt(KL), with Gao et al.'s RL form fitted to people's gain)."""
    from tether.lifecycle.reports.html import Section, pct, table_html

    rows = []
    names = {rounds[0].get("policy"): "the first RL run"} if rounds else {}
    for r in rounds:
        watch = r.get("watch") or {}
        policy = r.get("policy")
        if policy not in names:  # a round's own checkpoint: loop/round-R/rl-S
            names[policy] = f"round {r['round']}, {Path(policy).name}" if policy else "-"
        rows.append([
            r["round"], pct(r.get("gold_win_rate")), pct(r.get("off_topic_rate")), pct(r.get("violation_rate")),
            pct(r.get("rm_accuracy_new_pairs")), r.get("judgments_round", "-"), r.get("judgments_total", "-"),
            r.get("snapshot", ""), watch.get("reason", "") if r["round"] else "first RL run", names[policy],
        ])
    table = table_html(["round", "gold win-rate vs SFT", "off-topic", "violations", "reward model on the round's new pairs", "labels spent",
                        "labels in all", "snapshot (all rounds)", "over-optimization watch", "policy handed on"], rows, numeric=(0, 1, 2, 3, 4, 5, 6))
    note = ("<p class='small'>Round 0 is the first reward model and RL run, on the SFT policy's replies. Each later round, the "
            "policy answers fresh requests; the pairs of its replies the reward ensemble's members disagree on most go to the "
            "annotators through the project's queue; the snapshot unions every round's judgments (each once); the ensemble is "
            "refit and RL continues from the policy handed on: the last checkpoint, or the one people's audits judged better "
            "(when the watch stops RL, or when the round's RL fell below an earlier audit). \"On the round's new pairs\": the ensemble that chose them, "
            "scored against the annotators' majority before it was refit on them.</p>")
    parts = [table, note]
    points = audit_points(rounds)
    if points:
        parts.append(plot_overoptimization(points))
    return [Section("On-policy rounds", parts)]


def plot_overoptimization(points: list[dict[str, Any]]) -> str:
    """People's and the reward model's win-rate against SFT versus d = sqrt(KL), and Gao et al.'s RL form
    d (alpha - beta log d) fitted to people's gain."""
    import math

    import numpy as np

    from tether.lifecycle.overoptimization import fit_gao, gao_curve
    from tether.lifecycle.reports.html import esc, figure_html, pyplot

    plt = pyplot()
    d = np.array([p["d"] for p in points])
    human = np.array([p["human"] for p in points])
    proxy = np.array([p["proxy"] for p in points])
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(d, proxy, "s", color="#7f7f7f", label="reward model (proxy)")
    ax.plot(d, human, "o", color="#1f77b4", label="annotators (audits)")
    for p, x, y in zip(points, d, human):
        label = "start" if p.get("step") == 0 else f"r{p['round']} s{p.get('step', '?')}"  # the starting policy's audit, or round and step
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="#1f77b4")
    caption = ""
    try:
        fit = fit_gao(np.concatenate([[0.0], d]), np.concatenate([[0.0], human - 0.5]), "rl")
    except Exception:
        fit = None
    if fit is not None:
        grid = np.linspace(max(1e-3, d.min() / 4), d.max() * 1.3, 100)
        ax.plot(grid, 0.5 + gao_curve(grid, fit.alpha, fit.beta), ":", color="#1f77b4", label="fit: d(α − β log d)")
        peak = f"forecast peak at d* = {fit.peak_d:.2f}" if math.isfinite(fit.peak_d) else "no peak forecast yet (β ≤ 0: people's gain still growing faster than d log d)"
        caption = f"Gao et al.'s RL form fitted to people's gain over SFT (the audits of every round, and 0 at d = 0): α = {fit.alpha:.3f}, β = {fit.beta:.3f}, rmse {fit.rmse:.3f}; {peak}"
    ax.axhline(0.5, color="#cccccc", lw=0.8)
    ax.set_xlabel("d = sqrt(KL(policy || SFT))")
    ax.set_ylabel("win-rate vs SFT")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.set_title("Over-optimization watch: audits during RL", fontsize=11)
    ax.legend(frameon=False, fontsize=8)
    return figure_html(fig, "over-optimization curve") + (f"<p class='small'>{esc(caption)}</p>" if caption else "")
