"""What every self-contained HTML report shares: matplotlib figures embedded as base64 PNGs (``figure_png``, the one
figure helper of every report: policy evaluation, QC, monitoring, the demo), inline CSS, no scripts, no fonts or
anything else fetched from a network, so a report opens anywhere, offline, and can be mailed as one file; cards,
tables, sample replies, and ``render`` for a page of sections.
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


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none"})
    return plt


def figure_png(fig: Any) -> str:
    """A matplotlib figure as base64 PNG data, for ``<img src="data:image/png;base64,...">``; the figure is closed. No
    metadata: nothing in the file points anywhere."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure_html(fig: Any, alt: str) -> str:
    """A matplotlib figure as a report's ``<div class="fig"><img></div>``."""
    return f'<div class="fig"><img alt="{esc(alt)}" src="data:image/png;base64,{figure_png(fig)}"></div>'


def plot_paired_bars(categories: Sequence[str], policy: Sequence[float], baseline: Sequence[float], title: str, ylabel: str, baseline_name: str = "baseline", percent: bool = True) -> str:
    """Side-by-side bars for the policy and the baseline over categories."""
    import numpy as np

    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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
