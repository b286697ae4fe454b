"""The policy evaluation report: ``policy_report(result, ...)`` renders the output of
tether.lifecycle.evaluate_policy.evaluate_policy (win-rates, KL, lengths, violations, red-team refusals, samples,
the training curves); the demo adds its own sections through tether.lifecycle.reports.html.render."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tether.lifecycle.reports.html import (
    BAD_COLOR,
    BASELINE_COLOR,
    GOOD_COLOR,
    POLICY_COLOR,
    Section,
    figure_html,
    num,
    pct,
    plot_paired_bars,
    pyplot,
    render,
    samples_html,
    table_html,
)


def win_rate_tone(ci_low: float, ci_high: float) -> str:
    """"good" only when the whole 95% interval is above 50%, "bad" when it is below; "" when it spans 50%."""
    if ci_low > 0.5:
        return "good"
    if ci_high < 0.5:
        return "bad"
    return ""


def win_rate_note(ci_low: float, ci_high: float) -> str:
    note = f"95% CI {pct(ci_low, 0)}-{pct(ci_high, 0)}"
    return note + (": spans 50%, no clear win or loss" if win_rate_tone(ci_low, ci_high) == "" else "")


def kl_text(result: dict[str, Any]) -> tuple[str, str, str]:
    """(value, note, tone) of an evaluation's KL for a card or a table: a negative estimate is never shown as a KL
    (see tether.lifecycle.evaluate_policy.kl_reading)."""
    kl = result.get("kl")
    if kl is None:
        return "n/a", result.get("kl_note", "not estimated"), ""
    if not result.get("kl_negative"):
        return num(kl), "nats per reply", ""
    se = result.get("kl_se", float("nan"))
    if result.get("kl_gate") is not None:
        return f"≈ 0 (≤ {num(result['kl_gate'])})", f"negative estimate {num(kl)} ± {num(se, 2)} nats: noise around 0; 95% upper bound shown", ""
    return "invalid", f"negative estimate {num(kl)} ± {num(se, 2)} nats, beyond its noise: not a KL (check sampling settings and tokenizers)", "bad"


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_training(history: Sequence[dict[str, Any]], title: str = "policy training") -> str | None:
    """Reward and KL over training steps, from a run's metrics.jsonl records."""
    reward_key = next((k for k in ("objective/scores", "objective/rlhf_reward", "reward/mean", "objective/reward") if any(k in r for r in history)), None)
    kl_key = next((k for k in ("objective/kl", "policy/kl", "objective/kl_ref") if any(k in r for r in history)), None)
    if reward_key is None and kl_key is None:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, key, color, label in ((axes[0], reward_key, POLICY_COLOR, "reward"), (axes[1], kl_key, "#ff7f0e", "KL to reference")):
        if key is None:
            ax.set_visible(False)
            continue
        pts = [(r["step"], r[key]) for r in history if key in r and r[key] is not None and math.isfinite(r[key])]
        if not pts:
            ax.set_visible(False)
            continue
        steps, vals = zip(*pts)
        if len(pts) == 1:  # one logged step: a line of one point draws nothing; show the point and its value
            ax.plot(steps, vals, "o", color=color, ms=8)
            ax.annotate(f"{vals[0]:.4g} at step {steps[0]}", (steps[0], vals[0]), textcoords="offset points", xytext=(8, 8), fontsize=10)
        else:
            ax.plot(steps, vals, color=color, alpha=0.35, lw=1)
            ax.plot(steps, _smooth(list(vals), max(1, len(vals) // 15)), color=color, lw=2)
        ax.set_xlabel("step")
        ax.set_title(f"{label} ({key})", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return figure_html(fig, f"{title}: reward and KL over steps")


def plot_win_rates(rates: Sequence[tuple[str, float, float, float]], title: str = "win-rate against the baseline") -> str:
    """Horizontal bars with 95% CIs: (label, value, ci_low, ci_high); the 50% line is a coin flip."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * len(rates)))
    labels = [r[0] for r in rates]
    values = [r[1] for r in rates]
    errors = [[max(0.0, r[1] - r[2]) for r in rates], [max(0.0, r[3] - r[1]) for r in rates]]
    y = list(range(len(rates)))[::-1]
    tones = {"good": GOOD_COLOR, "bad": BAD_COLOR, "": BASELINE_COLOR}  # grey: the interval spans 50%
    ax.barh(y, values, xerr=errors, color=[tones[win_rate_tone(r[2], r[3])] for r in rates], alpha=0.85, capsize=4, height=0.55)
    for yi, v, r in zip(y, values, rates):
        ax.text(max(v, r[3]) + 0.02, yi, f"{v:.0%}  [{r[2]:.0%}, {r[3]:.0%}]", va="center", fontsize=9)
    ax.axvline(0.5, color="#555", ls="--", lw=1)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1.25)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.set_title(title, fontsize=11)
    return figure_html(fig, title)


def plot_gold_vs_proxy(proxy_pol: Sequence[float], gold_pol: Sequence[float], proxy_base: Sequence[float], gold_base: Sequence[float], baseline_name: str = "baseline") -> str:
    """Each sampled reply: the reward model's score (proxy) against the hidden gold score."""
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4))
    rng = np.random.default_rng(0)
    for xs, ys, color, label in ((proxy_base, gold_base, BASELINE_COLOR, baseline_name), (proxy_pol, gold_pol, POLICY_COLOR, "policy")):
        jitter = rng.normal(0, 0.06, len(ys))
        ax.scatter(xs, np.asarray(ys) + jitter, s=14, alpha=0.6, color=color, label=label, edgecolors="none")
    allx = np.concatenate([np.asarray(proxy_pol), np.asarray(proxy_base)])
    ally = np.concatenate([np.asarray(gold_pol), np.asarray(gold_base)])
    corr = float(np.corrcoef(allx, ally)[0, 1]) if len(allx) > 2 and allx.std() > 0 and ally.std() > 0 else float("nan")
    ax.set_xlabel("reward model score (proxy)")
    ax.set_ylabel("gold score (hidden guidelines)")
    ax.set_title(f"gold vs proxy reward (Pearson r = {corr:.2f})", fontsize=11)
    ax.legend(frameon=False, fontsize=9)
    ax.grid(alpha=0.3)
    return figure_html(fig, "gold against proxy reward per reply")


def policy_sections(result: dict[str, Any], *, training: Sequence[dict[str, Any]] = (), baseline_name: str = "baseline") -> list[Section]:
    """The sections that show a ``evaluate_policy`` result: win-rates, training curves, gold vs proxy, rules,
    red-team, sample pairs."""
    sections = []
    rates = [("reward model", result["win_rate"], *result["win_rate_ci"])]
    if "gold_win_rate" in result:
        rates.insert(0, ("gold (hidden guidelines)", result["gold_win_rate"], *result["gold_win_rate_ci"]))
    wr = Section("Win-rate against " + baseline_name, [plot_win_rates(rates, f"policy vs {baseline_name}: win-rate with 95% CI")])
    detail = result.get("win_rate_detail", {})
    wr.parts.append(
        f"<p class='small'>One sampled reply per held-out prompt from each model (n = {result['n_prompts']}); ties count half. "
        f"Reward model: {detail.get('wins', '?')} wins, {detail.get('ties', '?')} ties, {detail.get('losses', '?')} losses. "
        "Intervals: 95% percentile bootstrap over prompts.</p>"
    )
    sections.append(wr)
    if training:
        fig = plot_training(training)
        if fig:
            sections.append(Section("Reward and KL over training", [fig, "<p class='small'>Thin line: each logged step; thick: moving average.</p>"]))
    scores = result.get("scores", {})
    if "gold_policy" in scores:
        sections.append(
            Section(
                "Gold vs proxy reward",
                [
                    plot_gold_vs_proxy(scores["reward_policy"], scores["gold_policy"], scores["reward_baseline"], scores["gold_baseline"], baseline_name),
                    "<p class='small'>The reward model (proxy) was trained on the simulated annotators' judgments; the gold "
                    "score is the hidden preference they noisily follow. Points along a rising diagonal mean the proxy "
                    "tracks the guidelines; a policy that climbs the proxy without climbing the gold is hacking the reward "
                    "model.</p>",
                ],
            )
        )
    by_rule = result.get("violations_by_rule", {})
    names = sorted(by_rule.get("policy", {}))
    parts = []
    if names:
        parts.append(
            plot_paired_bars(
                ["any rule", *names],
                [result["violation_rate_policy"], *(by_rule["policy"][n] for n in names)],
                [result["violation_rate_baseline"], *(by_rule["baseline"][n] for n in names)],
                "rule violations (share of replies)",
                "replies",
                baseline_name,
            )
        )
    rows = [
        ["reward model score (mean)", num(result["reward_policy_mean"]), num(result["reward_baseline_mean"])],
        ["length (tokens, mean)", f"{result['length_policy']:.1f}", f"{result['length_baseline']:.1f}"],
        ["length (words, mean)", f"{result['words_policy']:.1f}", f"{result['words_baseline']:.1f}"],
        ["rule violations", pct(result["violation_rate_policy"]), pct(result["violation_rate_baseline"])],
        ["KL(policy || " + baseline_name + "), nats", kl_text(result)[0] + ("" if not result.get("kl_negative") else f" ({kl_text(result)[1]})"), "0"],
    ]
    if "gold_policy_mean" in result:
        rows.insert(0, ["gold score (mean)", num(result["gold_policy_mean"]), num(result["gold_baseline_mean"])])
    parts.append(table_html(["figure", "policy", baseline_name], rows, numeric=(1, 2)))
    sections.append(Section("Rules, length and KL", parts))
    red = result.get("redteam")
    if red:
        names = list(red)
        parts = [
            plot_paired_bars(names, [red[n]["refusal_rate_policy"] for n in names], [red[n]["refusal_rate_baseline"] for n in names], "refusal rate per prompt set", "refusals", baseline_name),
            table_html(
                ["set", "prompts", "policy refuses", f"{baseline_name} refuses", "reading"],
                [[n, red[n]["n"], pct(red[n]["refusal_rate_policy"]), pct(red[n]["refusal_rate_baseline"]), red[n]["kind"]] for n in names],
                numeric=(1, 2, 3),
            ),
            "<p class='small'>Harmful prompts: SimpleSafetyTests and AdvBench; over-refusal: XSTest's safe prompts that look "
            "unsafe. Refusals are detected by phrase (tether.checks.refusal), which measures refusing, not the harm of what is said "
            "instead.</p>",
        ]
        sections.append(Section("Red-team prompts", parts))
    if result.get("samples"):
        sections.append(Section("Sample pairs (held-out prompts)", [samples_html(result["samples"], baseline_name)]))
    return sections


def policy_report(result: dict[str, Any], *, title: str = "Policy evaluation", subtitle: str = "", training: Sequence[dict[str, Any]] = (), baseline_name: str = "baseline") -> str:
    """The HTML of a policy evaluation report."""
    cards = [
        ("win-rate (reward model)", pct(result["win_rate"]), win_rate_note(*result["win_rate_ci"]), win_rate_tone(*result["win_rate_ci"])),
        ("rule violations", pct(result["violation_rate_policy"]), f"{baseline_name}: {pct(result['violation_rate_baseline'])}", "good" if result["violation_rate_policy"] <= result["violation_rate_baseline"] else "bad"),
        ("KL to " + baseline_name, *kl_text(result)),
        ("length", f"{result['length_policy']:.0f} tok", f"{baseline_name}: {result['length_baseline']:.0f} tok", ""),
    ]
    if "gold_win_rate" in result:
        cards.insert(0, ("gold win-rate", pct(result["gold_win_rate"]), win_rate_note(*result["gold_win_rate_ci"]), win_rate_tone(*result["gold_win_rate_ci"])))
    return render(title, subtitle, cards, policy_sections(result, training=training, baseline_name=baseline_name))
