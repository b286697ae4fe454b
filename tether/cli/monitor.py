"""`tether monitor ...`: ingest production records, drift and failure-mode reports, sampling for review."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.common import JsonFlag

monitor_app = typer.Typer(help="Production monitoring: ingest records, drift and failure-mode reports, sampling for review.", no_args_is_help=True)

# Exit status of `tether monitor report` when an alert is raised (same value as tether.lifecycle.monitor.ALERT_EXIT_CODE;
# kept here so that `--help` needs no numpy).
ALERT_EXIT_CODE = 3


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")


def _time_option(value: str | None, name: str) -> Any:
    if value is None:
        return None
    from tether.errors import TetherError
    from tether.lifecycle.monitor import parse_time

    try:
        return parse_time(value)
    except ValueError as exc:
        raise TetherError(f"{name}: {exc}", fix=f"write {name} 2025-03-01 or {name} 2025-03-01T12:00:00Z") from None


def _reward_scorer(reward_dir: Path | None) -> tuple[Any, str | None]:
    """``score_fn(prompts, completions)`` from a saved reward model folder (tether train reward), or None."""
    if reward_dir is None:
        return None, None
    from tether.models.reward_model import RewardModel

    model = RewardModel.load(reward_dir)

    def score(prompts: Any, completions: Any) -> Any:
        return model.score(list(prompts), list(completions))

    return score, f"reward model {reward_dir}"


def _require_records(url: str) -> None:
    from sqlalchemy import select

    from tether.errors import TetherError
    from tether.store.db import session_scope
    from tether.store.tables import ProductionRecord

    with session_scope(url) as session:
        if session.scalar(select(ProductionRecord.id).limit(1)) is None:
            raise TetherError("no production records in the store", fix="load some first: tether monitor ingest FILE")


def _rules_option(rules: Path | None, ws: Any) -> Path | None:
    if rules is not None:
        return rules
    configured = ws.section("monitor").get("rules")
    if configured:
        path = Path(configured)
        return path if path.is_absolute() else ws.root / path
    return None


@monitor_app.command("ingest")
def ingest(
    path: Annotated[Path, typer.Argument(help="Production records: .jsonl, .json or .parquet (optionally .gz).")],
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip bad records (counted) instead of stopping.")] = False,
    redact: Annotated[str | None, typer.Option("--redact", help="pii: replace PII in prompts and completions by [EMAIL], [PHONE], ... before storing.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Bulk-load logged production interactions into the store.

    Each record needs "prompt", "completion" (text or chat messages) and a timestamp ("ts", "timestamp" or
    "time": ISO 8601 or epoch seconds); optional "model_version", "user_ref", "reward", and user feedback as
    "feedback": {"thumbs": true} or top-level "thumbs" / "rating". Other keys are kept as metadata. The file loads
    in one transaction: a bad record stops it with the line and the reason, unless --skip-invalid.

    Example:  tether monitor ingest logs/2025-03.jsonl --redact pii
    """
    from tether.checks.redact import check_redact
    from tether.cli.common import emit_json, require_file, workspace_url
    from tether.lifecycle.monitor import ingest_file
    from tether.store.db import session_scope

    require_file(path)
    redact_pii = check_redact(redact)
    _, url = workspace_url()
    with session_scope(url) as session:
        report = ingest_file(path, session=session, skip_invalid=skip_invalid, redact_pii=redact_pii)
    if json_out:
        from dataclasses import asdict

        emit_json(asdict(report))
        return
    rate = report.inserted / report.seconds if report.seconds else 0.0
    typer.echo(f"ingested {report.inserted:,} production records from {path.name} in {report.seconds:.1f} s ({rate:,.0f}/s)")
    if report.first_ts:
        typer.echo(f"  from {report.first_ts} to {report.last_ts}")
    if report.skipped:
        typer.echo(f"  skipped {report.skipped:,} invalid record(s), for example:")
        for problem in report.problems:
            typer.echo(f"    {problem}")
    if redact_pii:
        found = ", ".join(f"{kind} {n:,}" for kind, n in sorted(report.redacted.items())) or "none found"
        typer.echo(f"  redacted PII: {found}")
    typer.echo("next: tether monitor report --window 1d --html report.html")


@monitor_app.command("report")
def report(
    reward: Annotated[Path | None, typer.Option("--reward", help="A reward model folder (tether train reward) to score a sample of each window; default: the rewards logged with the records.")] = None,
    baseline: Annotated[str, typer.Option("--baseline", help="Reference window: 'first' (the first window), a duration from the start (7d), or START..END (ISO dates).")] = "first",
    window: Annotated[str, typer.Option("--window", help="Window length: 30m, 6h, 1d, 1w.")] = "1d",
    since: Annotated[str | None, typer.Option("--since", help="Only records at or after this time (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Only records before this time (ISO 8601).")] = None,
    model_version: Annotated[str | None, typer.Option("--model-version", help="Only records of this model version.")] = None,
    embedder: Annotated[str, typer.Option("--embedder", help="Prompt embeddings for input drift: auto (MiniLM when installed, else hash), minilm, hash or none.")] = "auto",
    rules: Annotated[Path | None, typer.Option("--rules", help="A tether.checks.rules YAML file whose failed checks count as violations (default: [monitor] rules in tether.toml).")] = None,
    sample_per_window: Annotated[int, typer.Option("--sample-per-window", min=10, help="Records per window for text checks and reward-model scoring.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the per-window samples and permutation tests.")] = 0,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report with time-series plots here.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Drift and failure modes of production traffic, window by window against a baseline; alerts exit with 3.

    Per window: reward drift (PSI, KS test), input drift (prompt length PSI; prompt embeddings by MMD with a
    permutation p-value), reward-human agreement (AUC on records with thumbs), rule violations (PII, --rules),
    refusal rate, degenerate repetition and completion-length growth. Thresholds come from [monitor] in
    tether.toml. Exit status: 0 no alert, 3 at least one alert (for cron and CI), 2 a usage error.

    Example:  tether monitor report --window 1d --baseline 7d --html artifacts/reports/monitor.html
    """
    from tether.cli.common import emit_json, workspace_url
    from tether.lifecycle.monitor import (
        ReportOptions,
        Thresholds,
        build_report,
        default_rule_fn,
        make_embedder,
        parse_duration,
        render_html,
        summary_lines,
    )

    ws, url = workspace_url()
    section = ws.section("monitor")
    thresholds = Thresholds.from_section({k: v for k, v in section.items() if k != "rules"})
    parse_duration(window)  # fail on a bad --window before loading models
    options = ReportOptions(
        window=window, baseline=baseline, since=_time_option(since, "--since"), until=_time_option(until, "--until"),
        model_version=model_version, sample_per_window=sample_per_window, seed=seed,
    )
    _require_records(url)  # before loading any model
    rule_set = None
    rules_path = _rules_option(rules, ws)
    if rules_path is not None:
        from tether.checks.rules import load_rules

        rule_set = load_rules(rules_path)
    score_fn, source = _reward_scorer(reward)
    embed_fn = make_embedder(embedder)
    result = build_report(url, options=options, thresholds=thresholds, score_fn=score_fn, embed_fn=embed_fn,
                          rule_fn=default_rule_fn(rule_set), reward_source=source)
    if html_out is not None:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(render_html(result), encoding="utf-8")
    if json_out:
        emit_json(result)
    else:
        for line in summary_lines(result):
            typer.echo(line)
        if html_out is not None:
            typer.echo(f"HTML report: {html_out}")
    if result["alerts"]:
        raise typer.Exit(ALERT_EXIT_CODE)


@monitor_app.command("sample")
def sample(
    n: Annotated[int, typer.Option("--n", min=1, help="How many production records to queue.")],
    strategy: Annotated[str, typer.Option("--strategy", help="low-reward (lowest rewards), uncertain (rewards nearest the median, or the widest ensemble spread), random.")] = "random",
    reward: Annotated[Path | None, typer.Option("--reward", help="A reward model folder to score a pool of records; default: the logged rewards.")] = None,
    project: Annotated[str, typer.Option("--project", help="The review project the items go to (made if missing).")] = "production-review",
    since: Annotated[str | None, typer.Option("--since", help="Only records at or after this time (ISO 8601).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    json_out: JsonFlag = False,
) -> None:
    """Queue production records for human review as thumbs items of a review project.

    Reviewers judge them in the web app like any other item; their thumbs feed the report's reward-human
    agreement, so fresh human labels keep measuring the reward model. Records already queued are skipped.

    Example:  tether monitor sample --n 200 --strategy low-reward
    """
    from tether.cli.common import emit_json, workspace_url
    from tether.lifecycle.monitor import SAMPLE_STRATEGIES, sample_for_review
    from tether.store.db import session_scope

    if strategy not in SAMPLE_STRATEGIES:
        from tether.errors import TetherError

        raise TetherError(f"unknown strategy {strategy!r}", fix=f"use one of: {', '.join(SAMPLE_STRATEGIES)}")
    _, url = workspace_url()
    score_fn = None
    if reward is not None and strategy != "random":
        from tether.models.reward_model import RewardModel

        model = RewardModel.load(reward)
        score_fn = model.score_with_spread if model.ensemble > 1 else model.score
    with session_scope(url) as session:
        result = sample_for_review(url, session=session, n=n, strategy=strategy, project=project,
                                   since=_time_option(since, "--since"), score_fn=score_fn, seed=seed)
    if json_out:
        emit_json(result)
        return
    typer.echo(f"queued {result['queued']:,} production record(s) ({strategy}) in review project {project!r}")
    typer.echo("reviewers rate them in `tether serve`; their ratings count in `tether monitor report` (reward-human agreement)")
