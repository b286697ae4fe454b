"""Annotation quality control and active-learning selection (aggregating votes into pairs is
tether.feedback.aggregation's).

Two parts, each pure functions over plain records and numpy arrays (the store is read in ``load_*`` only):

- **Agreement and annotators.** Judgments become ``Answer`` records (one per question per unit). Per question:
  Krippendorff's alpha (the ``krippendorff`` package; nominal for choices, ordinal for strengths, rankings and
  Likert ratings, interval where the label schema says so), raw pairwise agreement and how many units had two or
  more answers. Per annotator: agreement with the leave-one-out consensus, accuracy on gold items, a reliability
  estimate from Dawid-Skene (Dawid & Skene 1979), optionally MACE competence (Hovy et al. 2013), position bias
  (how often the first-shown answer wins, binomial test), speed, and flags with the reason.
- **Active learning.** ``select_candidates`` picks which candidate pairs humans judge next: predicted preference
  nearest 0.5 (uncertainty), the reward ensemble's spread (disagreement) or random, with a per-prompt cap and an
  optional embedding-distance dedupe as the diversity guard.

One module per part, everything re-exported here (``from tether.qc import ...``): ``agreement`` (answers,
Krippendorff's alpha), ``annotators`` (Dawid-Skene reliability, MACE, per-annotator figures and flags), ``select`` (active learning) and ``report`` (the report from the store, as text and JSON; its HTML page is tether.lifecycle.reports.qc).
"""

from tether.qc.agreement import (
    METRICS,
    Answer,
    answers_from_judgment,
    default_metric,
    krippendorff_alpha,
    pairwise_agreement,
    question_agreement,
    reliability_matrix,
)
from tether.qc.annotators import QCConfig, annotator_figures, leave_one_out_agreement, mace, primary_question
from tether.qc.report import (
    LoadedJudgments,
    find_project,
    format_report,
    load_judgments,
    parse_metrics,
    project_qc,
    qc_report,
    snapshot_qc,
    snapshot_qc_record,
)
from tether.qc.select import (
    AUTO_AGREEMENT,
    CLI_STRATEGIES,
    SELECT_STRATEGIES,
    auto_strategy,
    candidate_pairs,
    preference_stats,
    project_agreement,
    select_candidates,
    select_for_labeling,
)

__all__ = [
    "AUTO_AGREEMENT", "CLI_STRATEGIES", "METRICS", "SELECT_STRATEGIES",
    "Answer", "LoadedJudgments", "QCConfig",
    "annotator_figures", "answers_from_judgment", "auto_strategy", "candidate_pairs",
    "default_metric", "find_project", "format_report", "krippendorff_alpha",
    "leave_one_out_agreement", "load_judgments", "mace", "pairwise_agreement", "parse_metrics",
    "preference_stats", "primary_question", "project_agreement", "project_qc", "qc_report", "question_agreement", "reliability_matrix",
    "select_candidates", "select_for_labeling", "snapshot_qc", "snapshot_qc_record",
]
