"""Production monitoring: ingest logged interactions, measure drift and failure modes per time window, raise
alerts, and sample records for people to review. Modules: thresholds (settings), ingest, detectors (and
embedders), stats, columns (loading records), build (the report), html (text and HTML), review (sampling).

The public functions are re-exported here: ``from tether.lifecycle.monitor import build_report``.
"""

from tether.lifecycle.monitor.build import (
    Alert,
    build_report,
)
from tether.lifecycle.monitor.columns import (
    Columns,
    load_columns,
    load_review_thumbs,
    load_texts,
    review_label,
)
from tether.lifecycle.monitor.detectors import (
    default_rule_fn,
    hash_embedder,
    is_degenerate,
    make_embedder,
    minilm_dir,
    minilm_embedder,
)
from tether.lifecycle.monitor.html import (
    render_html,
    summary_lines,
)
from tether.lifecycle.monitor.ingest import (
    IngestReport,
    ingest_file,
    production_row,
)
from tether.lifecycle.monitor.review import (
    REVIEW_GUIDELINES,
    SAMPLE_STRATEGIES,
    sample_for_review,
)
from tether.lifecycle.monitor.stats import (
    auc_thumbs,
    mmd_permutation_test,
    psi,
    rate_rise_pvalue,
)
from tether.lifecycle.monitor.thresholds import (
    ALERT_EXIT_CODE,
    REVIEW_PROJECT,
    REVIEW_SCHEMA,
    EmbedFn,
    ReportOptions,
    ScoreFn,
    Thresholds,
    parse_duration,
    parse_time,
)

__all__ = ["ALERT_EXIT_CODE", "Alert", "Columns", "EmbedFn", "IngestReport", "REVIEW_GUIDELINES", "REVIEW_PROJECT", "REVIEW_SCHEMA", "ReportOptions", "SAMPLE_STRATEGIES", "ScoreFn", "Thresholds", "auc_thumbs", "build_report", "default_rule_fn", "hash_embedder", "ingest_file", "is_degenerate", "load_columns", "load_review_thumbs", "load_texts", "make_embedder", "minilm_dir", "minilm_embedder", "mmd_permutation_test", "parse_duration", "parse_time", "production_row", "psi", "rate_rise_pvalue", "render_html", "review_label", "sample_for_review", "summary_lines"]
