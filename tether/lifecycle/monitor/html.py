"""The monitoring report as text (``summary_lines``) and as a self-contained HTML page with plots (``render_html``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from tether.lifecycle.reports.html import figure_png, pyplot


def summary_lines(report: dict[str, Any]) -> Iterator[str]:
    base = report["baseline"]
    yield f"{report['records']:,} records in {len(report['windows'])} window(s) of {report['window']}; baseline {base['spec']} ({base['n']:,} records)"
    yield f"reward: {report['reward_source'] or 'none (no logged reward and no --reward)'}; embeddings: {report['embedder'] or 'off'}"
    yield f"{'window':<22}{'n':>9}{'reward':>9}{'psi':>7}{'p_len':>7}{'mmd p':>8}{'auc':>7}{'viol':>7}{'refus':>7}{'rep':>7}{'len x':>7}"
    for w in report["windows"]:
        m = w["metrics"]

        def f(key: str, fmt: str, m: dict[str, Any] = m) -> str:
            v = m.get(key)
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        tag = " (baseline)" if w["baseline"] else ""
        yield (f"{w['window'][:19]:<22}{w['n']:>9,}{f('reward/mean', '.3f'):>9}{f('reward/psi', '.3f'):>7}"
               f"{f('input/prompt_len_psi', '.3f'):>7}{f('input/embed_pvalue', '.2g'):>8}{f('agreement/auc', '.3f'):>7}"
               f"{f('failure/violation_rate', '.1%'):>7}{f('failure/refusal_rate', '.1%'):>7}{f('failure/repetition_rate', '.1%'):>7}"
               f"{f('length/growth', '.2f'):>7}{tag}")
    if report["alerts"]:
        yield f"ALERTS ({len(report['alerts'])}):"
        for a in report["alerts"]:
            yield f"  [{a['kind']}] {a['window'][:19]}: {a['message']}"
    else:
        yield "no alerts"


def _series(report: dict[str, Any], key: str) -> np.ndarray:
    return np.array([w["metrics"].get(key, np.nan) for w in report["windows"]], dtype=float)


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: summary, alerts, time-series plots (PNG in base64) and the window table."""
    import html

    import matplotlib.ticker

    plt = pyplot()

    times = [datetime.fromisoformat(w["start"].replace("Z", "+00:00")) for w in report["windows"]]
    alert_windows: dict[str, set[str]] = {}
    for a in report["alerts"]:
        alert_windows.setdefault(a["kind"], set()).add(a["window"])
    th = report["thresholds"]
    baseline = [w["baseline"] for w in report["windows"]]

    def panel(ax: Any, key: str, title: str, kinds: Sequence[str] = (), threshold: float | None = None, fmt: str = "-o", rate: bool = False) -> None:
        y = _series(report, key)
        ax.plot(times, y, fmt, ms=3, lw=1.2)
        flagged = [i for i, w in enumerate(report["windows"]) if any(w["window"] in alert_windows.get(k, ()) for k in kinds)]
        if flagged:
            ax.plot([times[i] for i in flagged], y[flagged], "o", color="red", ms=7, label="alert")
            ax.legend(loc="best", fontsize=8)
        if threshold is not None:
            ax.axhline(threshold, color="red", ls="--", lw=0.8)
        for i, is_base in enumerate(baseline):
            if is_base:
                ax.axvspan(times[i], times[i] + (times[1] - times[0] if len(times) > 1 else timedelta(days=1)), color="0.9", zorder=0)
        if rate:
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.grid(alpha=0.3)

    figures = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    p10, p90 = _series(report, "reward/p10"), _series(report, "reward/p90")
    axes[0].fill_between(times, p10, p90, alpha=0.25, label="p10-p90")
    panel(axes[0], "reward/mean", "reward: mean and p10-p90 band", kinds=("reward_drift",))
    panel(axes[1], "reward/psi", "reward PSI vs baseline", kinds=("reward_drift",), threshold=th["max_reward_psi"])
    panel(axes[2], "reward/ks_stat", "reward KS statistic", kinds=("reward_drift",), threshold=th["min_ks_stat"])
    figures.append(("Reward drift", figure_png(fig)))

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    panel(axes[0], "input/prompt_len_mean", "prompt length (chars, mean)", kinds=("input_length_drift",))
    panel(axes[1], "input/prompt_len_psi", "prompt-length PSI", kinds=("input_length_drift",), threshold=th["max_input_psi"])
    panel(axes[2], "input/embed_mmd2", "prompt embedding MMD^2 vs baseline", kinds=("embedding_drift",), threshold=th["min_embed_mmd"])
    figures.append(("Input drift", figure_png(fig)))

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    panel(axes[0], "agreement/auc", "reward-human agreement (AUC)", kinds=("agreement",), threshold=th["min_agreement"])
    panel(axes[1], "length/completion_mean", "completion length (chars, mean)", kinds=("length_growth",))
    panel(axes[2], "length/growth", "length growth vs baseline", kinds=("length_growth",), threshold=th["max_length_growth"])
    figures.append(("Agreement and length", figure_png(fig)))

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    panel(axes[0], "failure/violation_rate", "rule violations (share of sample)", kinds=("violation_rate",), threshold=th["max_violation_rate"], rate=True)
    panel(axes[1], "failure/refusal_rate", "refusal rate", kinds=("refusal_rate",), rate=True)
    panel(axes[2], "failure/repetition_rate", "degenerate repetition rate", kinds=("repetition",), rate=True)
    figures.append(("Failure modes", figure_png(fig)))

    esc = html.escape
    rows = "\n".join(f"<tr><td>{esc(line)}</td></tr>" for line in summary_lines(report))
    alerts = "".join(
        f"<li><b>{esc(a['kind'])}</b> {esc(a['window'])}: {esc(a['message'])}</li>" for a in report["alerts"]
    ) or "<li>none</li>"
    plots = "\n".join(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{png}'>" for title, png in figures)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Tether monitoring report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1500px}} img{{max-width:100%}}
pre,table{{font-family:ui-monospace,monospace;font-size:12px}} .alerts li{{color:#a00}}</style></head>
<body><h1>Monitoring report</h1>
<p>{report['records']:,} production records, windows of {esc(report['window'])}, baseline <code>{esc(report['baseline']['spec'])}</code>
({report['baseline']['n']:,} records, shaded grey). Reward: {esc(str(report['reward_source']))}. Embeddings: {esc(str(report['embedder']))}.
p-values are compared with {report['alpha_per_window']:.2g} per window (Bonferroni).</p>
<h2>Alerts</h2><ul class="alerts">{alerts}</ul>
{plots}
<h2>Windows</h2><table>{rows}</table>
<h2>Data</h2><pre>{esc(json.dumps(report, indent=1, default=str))}</pre>
</body></html>
"""
