"""The QC report as one self-contained HTML page (``tether qc --html``): the plots a lead looks at, the question
table and the annotator table, from the report of tether.qc.report.qc_report."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from tether.lifecycle.reports.html import figure_png, pyplot


def report_figures(report: dict[str, Any]) -> dict[str, str]:
    """The plots a lead looks at, as base64 PNG: per-annotator reliability, agreement per question, position bias
    and speed (the last two only when the data has shown orders / times)."""
    plt = pyplot()

    def png(fig: Any) -> str:
        fig.tight_layout()
        return figure_png(fig)

    figures: dict[str, str] = {}
    rows = report["annotators"]
    names = [r["annotator"] for r in rows]
    colors = ["#c0392b" if r["flags"] else "#2c7fb8" for r in rows]
    height = 1.2 + 0.32 * len(rows)

    # Per-annotator reliability (Dawid-Skene), with LOO agreement and gold accuracy as markers.
    fig, ax = plt.subplots(figsize=(7.5, height))
    y = np.arange(len(rows))
    ax.barh(y, [r["reliability"] for r in rows], color=colors, alpha=0.85)
    loo = [(i, r["loo_agreement"]) for i, r in enumerate(rows) if r["loo_agreement"] is not None]
    if loo:
        ax.plot([v for _, v in loo], [i for i, _ in loo], "k|", markersize=14, mew=2, label="agreement with the\nleave-one-out consensus")
    gold = [(i, r["gold_accuracy"]) for i, r in enumerate(rows) if r["gold_accuracy"] is not None]
    if gold:
        ax.plot([v for _, v in gold], [i for i, _ in gold], "D", color="#f39c12", label="gold accuracy")
    ax.axvline(report["config"]["min_reliability"], color="#c0392b", ls="--", lw=1, label="flag threshold")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_title(f"Per-annotator reliability on '{report['primary_question']}' (red: flagged)")
    from matplotlib.patches import Patch

    handles = [Patch(color="#2c7fb8", alpha=0.85, label="Dawid-Skene reliability"), *ax.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    figures["reliability"] = png(fig)

    # Agreement per question: Krippendorff's alpha and raw pairwise agreement.
    questions = report["questions"]
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.5 * len(questions)))
    y = np.arange(len(questions))
    alphas = [q["alpha"] if q["alpha"] is not None else 0.0 for q in questions]
    raw = [q["pairwise_agreement"] if q["pairwise_agreement"] is not None else 0.0 for q in questions]
    ax.barh(y - 0.18, alphas, height=0.36, color="#2c7fb8", label="Krippendorff's alpha")
    ax.barh(y + 0.18, raw, height=0.36, color="#a6bddb", label="raw pairwise agreement")
    for i, q in enumerate(questions):
        ax.text(max(alphas[i], 0) + 0.01, i - 0.18, "n/a" if q["alpha"] is None else f"{q['alpha']:.3f}", va="center", fontsize=8)
        ax.text(raw[i] + 0.01, i + 0.18, f"{raw[i]:.3f}", va="center", fontsize=8)
    ax.axvline(0.667, color="grey", ls=":", lw=1, label="alpha 0.667 (tentative)\nand 0.8 (reliable)")
    ax.axvline(0.8, color="grey", ls=":", lw=1)
    ax.set_yticks(y, [f"{q['question']} ({q['metric']}, {q['n_units_overlap']} units)" for q in questions])
    ax.invert_yaxis()
    ax.set_xlim(min(0.0, min(alphas) - 0.05), 1.1)
    ax.set_title("Agreement per question")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    figures["agreement"] = png(fig)

    # Position bias: first-shown win rate with a 95% interval.
    shown = [(i, r) for i, r in enumerate(rows) if r["first_shown_win_rate"] is not None]
    if shown:
        from scipy.stats import binomtest

        fig, ax = plt.subplots(figsize=(7.5, height))
        for k, (_, r) in enumerate(shown):
            wins = round(r["first_shown_win_rate"] * r["n_position"])
            ci = binomtest(wins, r["n_position"]).proportion_ci(0.95)
            color = "#c0392b" if any(f["flag"] == "position" for f in r["flags"]) else "#2c7fb8"
            ax.errorbar(r["first_shown_win_rate"], k, xerr=[[r["first_shown_win_rate"] - ci.low], [ci.high - r["first_shown_win_rate"]]],
                        fmt="o", color=color, capsize=3)
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        ax.set_yticks(range(len(shown)), [r["annotator"] for _, r in shown])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of non-tie choices won by the answer shown first (95% interval)")
        ax.set_title("Position bias")
        figures["position"] = png(fig)

    timed = [r for r in rows if r["median_time_ms"] is not None]
    if timed:
        fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(timed)))
        ax.barh(range(len(timed)), [r["median_time_ms"] / 1000 for r in timed],
                color=["#c0392b" if any(f["flag"] == "fast" for f in r["flags"]) else "#2c7fb8" for r in timed])
        ax.set_yticks(range(len(timed)), [r["annotator"] for r in timed])
        ax.invert_yaxis()
        ax.set_xlabel("median seconds per judgment")
        ax.set_title("Speed")
        figures["speed"] = png(fig)
    return figures


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page: the figures (base64 PNG), the question table and the annotator table."""
    def f(x: Any, spec: str = ".3f") -> str:
        return "–" if x is None else format(x, spec)

    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}"></figure>'
        for name, data in report_figures(report).items()
    )
    q_rows = "".join(
        f"<tr><td>{html.escape(q['question'])}</td><td>{q['metric']}</td><td>{f(q['alpha'])}</td><td>{f(q['pairwise_agreement'])}</td>"
        f"<td>{q['n_units_overlap']}</td><td>{q['n_units']}</td><td>{q['n_answers']}</td></tr>"
        for q in report["questions"]
    )
    a_rows = "".join(
        f"<tr class=\"{'flagged' if r['flags'] else ''}\"><td>{html.escape(r['annotator'])}</td><td>{r['n_answers']}</td>"
        f"<td>{f(r['reliability'], '.2f')}</td><td>{f(r['loo_agreement'], '.2f')}</td><td>{f(r['gold_accuracy'], '.2f')} ({r['n_gold']})</td>"
        f"<td>{f(r['first_shown_win_rate'], '.2f')}</td><td>{f(r['position_pvalue'], '.1e')}</td>"
        f"<td>{f(None if r['median_time_ms'] is None else r['median_time_ms'] / 1000, '.1f')}</td>"
        f"<td>{html.escape('; '.join(fl['reason'] for fl in r['flags']))}</td></tr>"
        for r in report["annotators"]
    )
    title = f"Annotation quality: {html.escape(str(report.get('project', '')))}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 980px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; }}
tr.flagged td {{ background: #fdecea; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>{title}</h1>
<p>{report['n_items']} items, {report['n_judgments']} judgments, {report['n_annotators']} annotators.
Per-annotator figures are on the question <b>{html.escape(str(report['primary_question']))}</b>.</p>
<h2>Agreement per question</h2>
<table><tr><th>question</th><th>metric</th><th>Krippendorff's alpha</th><th>raw agreement</th><th>units with overlap</th><th>units</th><th>answers</th></tr>{q_rows}</table>
<h2>Annotators</h2>
<table><tr><th>annotator</th><th>answers</th><th>reliability (Dawid-Skene)</th><th>LOO agreement</th><th>gold accuracy (n)</th>
<th>first-shown wins</th><th>binomial p</th><th>median s</th><th>flags</th></tr>{a_rows}</table>
{images}
</body></html>
"""
