"""The QC report of a project or feedback set: the figures, read from the store, as text, JSON and HTML."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

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


