"""Self-contained HTML reports: matplotlib figures embedded as base64 PNGs, inline CSS, no scripts, no fonts or
anything else fetched from a network, so a report opens anywhere, offline, and can be mailed as one file.

``policy_report(result, ...)`` renders the output of ``tether.evaluate_policy.evaluate_policy``; the demo adds its own
sections (annotators, style mix) through ``render``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POLICY_COLOR = "#1f77b4"
BASELINE_COLOR = "#9a9a9a"
BAD_COLOR = "#d62728"
GOOD_COLOR = "#2ca02c"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0;
       background: #f6f7f9; color: #1d2125; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 1px solid #dde1e6; padding-bottom: 4px; }
p.sub { color: #5b6570; margin: 0 0 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 12px 16px; min-width: 170px; flex: 1; }
.card .label { font-size: 12px; color: #5b6570; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 26px; font-weight: 600; margin-top: 2px; }
.card .note { font-size: 12px; color: #5b6570; }
.card.good .value { color: #1e7b34; } .card.bad .value { color: #b42318; }
.fig { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 8px; margin: 8px 0; text-align: center; }
.fig img { max-width: 100%; height: auto; }
.row { display: flex; gap: 12px; flex-wrap: wrap; } .row > .fig { flex: 1; min-width: 320px; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #dde1e6; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.viol { background: #fdecea; }
.small { font-size: 12px; color: #5b6570; }
pre { white-space: pre-wrap; background: #fff; border: 1px solid #dde1e6; padding: 8px; border-radius: 6px; font-size: 12px; }
.stage-ok { color: #1e7b34; } .stage-warn { color: #b54708; }
.turn { margin: 0 0 6px; white-space: pre-wrap; } .turn .role { font-size: 11px; color: #5b6570; text-transform: uppercase; }
"""


@dataclass
class Section:
    """One section of a report: a heading and HTML parts (figures, tables, paragraphs)."""

    title: str
    parts: list[str] = field(default_factory=list)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


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
    (see tether.evaluate_policy.kl_reading)."""
    kl = result.get("kl")
    if kl is None:
        return "n/a", result.get("kl_note", "not estimated"), ""
    if not result.get("kl_negative"):
        return num(kl), "nats per reply", ""
    se = result.get("kl_se", float("nan"))
    if result.get("kl_gate") is not None:
        return f"≈ 0 (≤ {num(result['kl_gate'])})", f"negative estimate {num(kl)} ± {num(se, 2)} nats: noise around 0; 95% upper bound shown", ""
    return "invalid", f"negative estimate {num(kl)} ± {num(se, 2)} nats, beyond its noise: not a KL (check sampling settings and tokenizers)", "bad"


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none"})
    return plt


def figure_html(fig: Any, alt: str) -> str:
    """A matplotlib figure as an <img> with a base64 PNG (no metadata: nothing in the file points anywhere)."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<div class="fig"><img alt="{esc(alt)}" src="data:image/png;base64,{data}"></div>'


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
    plt = _pyplot()
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
    plt = _pyplot()
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

    plt = _pyplot()
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


def plot_paired_bars(categories: Sequence[str], policy: Sequence[float], baseline: Sequence[float], title: str, ylabel: str, baseline_name: str = "baseline", percent: bool = True) -> str:
    """Side-by-side bars for the policy and the baseline over categories."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(categories) + 2), 3.2))
    x = np.arange(len(categories))
    ax.bar(x - 0.2, baseline, 0.4, color=BASELINE_COLOR, label=baseline_name)
    ax.bar(x + 0.2, policy, 0.4, color=POLICY_COLOR, label="policy")
    for xi, b, p in zip(x, baseline, policy):
        for dx, v in ((-0.2, b), (0.2, p)):
            ax.text(xi + dx, v, f"{v:.0%}" if percent else f"{v:.2g}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, categories)
    ax.set_ylabel(ylabel)
    if percent:
        top = max([*policy, *baseline, 0.05])
        ax.set_ylim(0, min(1.0, top * 1.3 + 0.02))
        ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.set_title(title, fontsize=11)
    ax.legend(frameon=False, fontsize=9)
    return figure_html(fig, title)


def plot_stacked_mix(mixes: dict[str, dict[str, float]], order: Sequence[str], colors: dict[str, str], title: str) -> str:
    """Horizontal stacked bars: the share of each category per row (e.g. reply styles per model)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.7 + 0.6 * len(mixes)))
    rows = list(mixes)
    for yi, row in enumerate(rows[::-1]):
        left = 0.0
        for cat in order:
            share = mixes[row].get(cat, 0.0)
            if share <= 0:
                continue
            ax.barh(yi, share, left=left, color=colors.get(cat, "#ccc"), height=0.6, label=cat if yi == 0 else None)
            if share >= 0.06:
                ax.text(left + share / 2, yi, f"{share:.0%}", ha="center", va="center", fontsize=8, color="white")
            left += share
    ax.set_yticks(range(len(rows)), rows[::-1])
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    ax.legend([seen[c] for c in order if c in seen], [c for c in order if c in seen], ncol=min(7, len(seen)), frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.set_title(title, fontsize=11)
    return figure_html(fig, title)


def plot_bars(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str, highlight: Sequence[bool] | None = None, percent: bool = True) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(labels) + 2), 3.2))
    colors = [BAD_COLOR if (highlight and highlight[i]) else POLICY_COLOR for i in range(len(labels))]
    ax.bar(range(len(labels)), values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0%}" if percent else f"{v:.2g}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    if percent:
        ax.set_ylim(0, 1.1)
        ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.set_title(title, fontsize=11)
    return figure_html(fig, title)


# ---------------------------------------------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------------------------------------------


def cards_html(cards: Sequence[tuple[str, str, str, str]]) -> str:
    """Headline figures: (label, value, note, tone) with tone "good", "bad" or ""."""
    out = ['<div class="cards">']
    for label, value, note, tone in cards:
        out.append(f'<div class="card {esc(tone)}"><div class="label">{esc(label)}</div><div class="value">{esc(value)}</div><div class="note">{esc(note)}</div></div>')
    out.append("</div>")
    return "".join(out)


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    out = ["<table><tr>", *(f"<th>{esc(h)}</th>" for h in header), "</tr>"]
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            cls = ' class="num"' if i in numeric else ""
            out.append(f"<td{cls}>{esc(cell)}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def samples_html(samples: Sequence[dict[str, Any]], baseline_name: str = "baseline") -> str:
    """Sample pairs side by side; violations shaded."""
    has_gold = any("gold_policy" in s for s in samples)
    out = [f"<table><tr><th style='width:24%'>prompt</th><th>{esc(baseline_name)}</th><th>policy</th></tr>"]
    for s in samples:
        def cell(text: str, reward: float, gold: float | None, violation: bool) -> str:
            scores = f"reward {reward:+.2f}" + (f" · gold {gold:+.2f}" if gold is not None else "")
            cls = ' class="viol"' if violation else ""
            flag = " · rule violation" if violation else ""
            return f"<td{cls}>{esc(text)}<div class='small'>{esc(scores + flag)}</div></td>"

        out.append("<tr>")
        out.append(f"<td>{prompt_html(s['prompt'])}</td>")
        out.append(cell(s["baseline"], s["reward_baseline"], s.get("gold_baseline") if has_gold else None, s.get("violation_baseline", False)))
        out.append(cell(s["policy"], s["reward_policy"], s.get("gold_policy") if has_gold else None, s.get("violation_policy", False)))
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def prompt_html(prompt: Any) -> str:
    """A prompt for a table cell: text as it is; a conversation (a list of messages, or its JSON text) as turns."""
    if isinstance(prompt, str) and prompt.startswith("[{"):
        try:
            prompt = json.loads(prompt)
        except ValueError:
            pass
    if isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt):
        return "".join(f"<div class='turn'><span class='role'>{esc(m.get('role', 'user'))}</span> {esc(m['content'])}</div>" for m in prompt)
    return esc(prompt)


def render(title: str, subtitle: str, cards: Sequence[tuple[str, str, str, str]], sections: Sequence[Section], footer: str = "") -> str:
    """The whole page as one string."""
    body = [f"<h1>{esc(title)}</h1>", f"<p class='sub'>{esc(subtitle)}</p>", cards_html(cards)]
    for section in sections:
        body.append(f"<h2>{esc(section.title)}</h2>")
        body.extend(section.parts)
    if footer:
        body.append(f"<p class='small'>{esc(footer)}</p>")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>" + "\n".join(body) + "</main></body></html>\n"
    )


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (empty when missing)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


# ---------------------------------------------------------------------------------------------------------------
# The policy evaluation report
# ---------------------------------------------------------------------------------------------------------------


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


def write(path: Path, page: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def external_references(page: str) -> list[str]:
    """Anything in an HTML page that would reach a network or another file: URLs (http, https, protocol-relative,
    file), scripts, stylesheet imports, font faces, CSS url(). A self-contained report has none."""
    import re

    found = re.findall(r"(?:https?|ftp|file)://[^\s\"'<>)]*", page)
    found += re.findall(r"""(?:src|href)\s*=\s*["']//[^"']*""", page)
    found += [m for m in ("<script", "@import", "@font-face", "url(", "<link") if m in page.lower()]
    return found
