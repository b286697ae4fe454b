"""The QC report of a project or feedback set: the figures, read from the store, as text, JSON and HTML."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tether.errors import TetherError
from tether.qc.agreement import METRICS, Answer, answers_from_judgment, question_agreement
from tether.qc.annotators import QCConfig, annotator_figures, primary_question


def qc_report(answers: Sequence[Answer], *, metrics: dict[str, str] | None = None, config: QCConfig | None = None) -> dict[str, Any]:
    """The QC figures of a set of answers: agreement per question, per-annotator figures and flags."""
    config = config or QCConfig()
    primary = primary_question(a.question for a in answers)
    primary_answers = [a for a in answers if a.question == primary]
    annotators = annotator_figures(primary_answers, config)
    return {
        "n_items": len({a.item_id for a in answers}),
        "n_judgments": len({(a.item_id, a.annotator) for a in answers}),
        "n_annotators": len({a.annotator for a in answers}),
        "primary_question": primary,
        "questions": question_agreement(answers, metrics),
        "annotators": annotators,
        "flagged": [row["annotator"] for row in annotators if row["flags"]],
        "config": asdict(config),
    }


def format_report(report: dict[str, Any]) -> str:
    """A plain-text summary of ``qc_report`` for the terminal."""

    def f(x: Any, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    lines = [
        f"{report['n_items']} items, {report['n_judgments']} judgments, {report['n_annotators']} annotators",
        "",
        f"{'question':<22}{'metric':<10}{'alpha':>8}{'agree':>8}{'overlap':>9}{'units':>7}",
    ]
    for q in report["questions"]:
        lines.append(
            f"{q['question']:<22}{q['metric']:<10}{f(q['alpha']):>8}{f(q['pairwise_agreement']):>8}{q['n_units_overlap']:>9}{q['n_units']:>7}"
        )
    lines += ["", f"annotators (on '{report['primary_question']}'):"]
    with_mace = any(r.get("mace_competence") is not None for r in report["annotators"])  # `tether qc --mace`
    lines.append(f"{'annotator':<20}{'n':>6}{'reliab':>8}{'mace' if with_mace else '':>{6 if with_mace else 0}}{'loo':>7}{'gold':>7}{'first%':>8}{'p':>9}{'med s':>7}  flags")
    for r in report["annotators"]:
        med = None if r["median_time_ms"] is None else r["median_time_ms"] / 1000
        flags = "; ".join(fl["reason"] for fl in r["flags"])
        mace_cell = f"{f(r.get('mace_competence'), '.2f'):>6}" if with_mace else ""
        lines.append(
            f"{r['annotator'][:19]:<20}{r['n_answers']:>6}{f(r['reliability'], '.2f'):>8}{mace_cell}{f(r['loo_agreement'], '.2f'):>7}"
            f"{f(r['gold_accuracy'], '.2f'):>7}{f(r['first_shown_win_rate'], '.2f'):>8}{f(r['position_pvalue'], '.1e'):>9}"
            f"{f(med, '.1f'):>7}  {flags}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Reading the store
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LoadedJudgments:
    """A project's current judgments (superseded ones left out), as QC answers."""

    project_id: int
    project_name: str
    answers: list[Answer] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)


def load_judgments(*, session: Any, project: Any) -> LoadedJudgments:
    """Read a project's current judgments (a ``Project`` row) from the store."""
    from sqlalchemy import select

    from tether.store.tables import Item, Judgment, LabelSchema, User

    superseded = select(Judgment.supersedes_id).where(Judgment.supersedes_id.is_not(None))
    rows = session.execute(
        select(Judgment, User.name, Item.is_gold, Item.gold_value)
        .join(Item, Item.id == Judgment.item_id)
        .join(User, User.id == Judgment.user_id)
        .where(Item.project_id == project.id, Judgment.id.not_in(superseded))
        .order_by(Judgment.id)
    ).all()
    out = LoadedJudgments(project_id=project.id, project_name=project.name)
    # A label schema may state a question's metric: spec {"metrics": {"rating:helpfulness": "interval"}}.
    schema = session.scalars(
        select(LabelSchema).where(LabelSchema.project_id == project.id).order_by(LabelSchema.version.desc())
    ).first()
    if schema is not None and isinstance(schema.spec, dict):
        out.metrics = {str(k): str(v) for k, v in (schema.spec.get("metrics") or {}).items() if v in METRICS}
    for judgment, name, is_gold, gold_value in rows:
        value = judgment.value or {}
        out.answers += answers_from_judgment(
            item_id=judgment.item_id,
            annotator=name,
            kind=judgment.kind,
            value=value,
            shown_order=judgment.shown_order,
            time_spent_ms=judgment.time_spent_ms,
            gold_value=gold_value if is_gold else None,
        )
    return out


def find_project(*, session: Any, name: str) -> Any:
    """A project by name, or the project of the snapshot with that name; a clear error otherwise."""
    from sqlalchemy import select

    from tether.store.tables import Project, Snapshot

    project = session.scalars(select(Project).where(Project.name == name)).first()
    if project is None:
        snapshot = session.scalars(select(Snapshot).where(Snapshot.name == name)).first()
        if snapshot is not None and snapshot.project_id is not None:
            project = session.get(Project, snapshot.project_id)
    if project is None:
        names = session.scalars(select(Project.name).order_by(Project.name)).all()
        raise TetherError(
            f"no project or snapshot named {name!r}",
            fix=f"use one of: {', '.join(names)}" if names else "import feedback first: tether data import FILE --name NAME",
        )
    return project


def parse_metrics(values: Sequence[str]) -> dict[str, str]:
    """``["rating:helpfulness=interval", ...]`` (the ``--metric`` option) as ``{question: metric}``."""
    out = {}
    for value in values:
        question, _, metric = value.partition("=")
        if not question or metric not in METRICS:
            raise TetherError(f"--metric takes QUESTION=METRIC with METRIC one of {', '.join(METRICS)}, got {value!r}",
                              fix="for example --metric rating:helpfulness=interval")
        out[question] = metric
    return out


def project_qc(url: str, name: str, *, config: QCConfig | None = None, metrics: dict[str, str] | None = None) -> dict[str, Any]:
    """``qc_report`` of a project (or of a snapshot's project) in the store at ``url``. ``metrics`` overrides
    the Krippendorff metric of questions (``{"rating:helpfulness": "interval"}``)."""
    from tether.store.db import session_scope

    with session_scope(url) as session:
        project = find_project(session=session, name=name)
        loaded = load_judgments(session=session, project=project)
    if not loaded.answers:
        raise TetherError(f"project {loaded.project_name!r} has no judgments yet", fix="import or collect judgments first")
    report = qc_report(loaded.answers, metrics={**loaded.metrics, **(metrics or {})}, config=config)
    report["project"] = loaded.project_name
    return report


def snapshot_qc_record(report: dict[str, Any], *, method: str, excluded: Sequence[str] = (), min_agreement: float | None = None) -> dict[str, Any]:
    """The QC figures a snapshot records in ``Snapshot.qc`` (flat ``qc/...`` keys; per-question and
    per-annotator figures as small maps): alpha, raw agreement, overlap, reliability, flags and the filters."""
    return {
        "qc/method": method,
        "qc/primary_question": report["primary_question"],
        "qc/alpha": {q["question"]: q["alpha"] for q in report["questions"]},
        "qc/pairwise_agreement": {q["question"]: q["pairwise_agreement"] for q in report["questions"]},
        "qc/n_units_overlap": {q["question"]: q["n_units_overlap"] for q in report["questions"]},
        "qc/reliability": {r["annotator"]: round(r["reliability"], 6) for r in report["annotators"]},
        "qc/flagged": {r["annotator"]: [f["reason"] for f in r["flags"]] for r in report["annotators"] if r["flags"]},
        "qc/excluded_annotators": sorted(excluded),
        "qc/min_agreement": min_agreement,
    }


def snapshot_qc(url: str, set_name: str, *, method: str, exclude_flagged: bool = False,
                min_agreement: float | None = None) -> tuple[dict[str, Any], list[str]]:
    """For ``tether data snapshot``: ``(qc figures to record, annotators to leave out)``. A set without
    judgments (prompts only) records nothing; ``exclude_flagged`` leaves out the annotators QC flags."""
    try:
        report = project_qc(url, set_name)
    except TetherError:
        if exclude_flagged:
            raise
        return {}, []
    excluded = report["flagged"] if exclude_flagged else []
    return snapshot_qc_record(report, method=method, excluded=excluded, min_agreement=min_agreement), excluded


# ---------------------------------------------------------------------------------------------------------------
# The HTML report (matplotlib figures embedded as base64 PNG: one self-contained file)
# ---------------------------------------------------------------------------------------------------------------


def report_figures(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes of the plots a lead looks at: per-annotator reliability, agreement per question, position bias
    and speed (the last two only when the data has shown orders / times)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    figures: dict[str, bytes] = {}
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
    import base64
    import html

    def f(x: Any, spec: str = ".3f") -> str:
        return "–" if x is None else format(x, spec)

    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
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
