"""`tether qc` (annotation quality) and `tether collect ...` (active learning)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tether.cli.common import JsonFlag

collect_app = typer.Typer(help="Choose what humans should judge next (active learning).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("qc")(qc_command)
    app.add_typer(collect_app, name="collect")


def qc_command(
    name: Annotated[str, typer.Argument(help="A feedback set or project name (or a snapshot name: its set is checked).")],
    json_out: JsonFlag = False,
    html_out: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report (plots embedded) to this file.")] = None,
    mace: Annotated[bool, typer.Option("--mace", help="Also estimate each annotator's MACE competence.")] = False,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="A question's Krippendorff metric: QUESTION=nominal|ordinal|interval (repeatable), e.g. rating:helpfulness=interval.")] = None,
) -> None:
    """Annotation quality: agreement per question and per-annotator reliability, bias, speed and flags.

    Per question: Krippendorff's alpha (nominal for choices, ordinal for strengths, rankings and ratings;
    --metric makes a question interval), raw pairwise agreement and how many units had two or more answers. Per annotator: agreement with the
    leave-one-out consensus, gold accuracy, Dawid-Skene reliability, how often the first-shown answer wins
    (binomial test), median time, and flags with their reasons.

    Example:  tether qc pandalm --html qc-pandalm.html
    """
    from tether.cli.common import emit_json, workspace_url, writing
    from tether.lifecycle.reports.qc import render_html
    from tether.qc import QCConfig, format_report, parse_metrics, project_qc

    _, url = workspace_url()
    report = project_qc(url, name, config=QCConfig(mace=mace), metrics=parse_metrics(metric or []))
    if html_out is not None:
        with writing(html_out, "--html"):
            html_out.parent.mkdir(parents=True, exist_ok=True)
            html_out.write_text(render_html(report), encoding="utf-8")
    if json_out:
        emit_json(report)
        return
    typer.echo(f"set {report['project']!r}: " + format_report(report))
    if html_out is not None:
        typer.echo(f"report: {html_out}")


@collect_app.command("select")
def select_command(
    project: Annotated[str, typer.Option("--project", help="The annotation project whose unjudged pairs are candidates.")],
    strategy: Annotated[str, typer.Option("--strategy", help="auto (certainty when the project's annotators agree less than 70% of the time, else disagreement), certainty (predicted preference farthest from 0.5), uncertainty (nearest 0.5), disagreement (ensemble spread) or random. See docs/benchmarks.md, Active learning.")] = "auto",
    n: Annotated[int, typer.Option("--n", help="How many pairs to queue.")] = 100,
    reward_model: Annotated[str | None, typer.Option("--reward-model", help="A reward model folder from `tether train reward` (an ensemble for disagreement).")] = None,
    candidates: Annotated[Path | None, typer.Option("--candidates", help="More candidates: JSONL of {\"prompt\", \"completions\": [...]} (e.g. a policy's samples).")] = None,
    max_per_prompt: Annotated[int, typer.Option("--max-per-prompt", help="Diversity guard: at most this many pairs of one prompt (0: no cap).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random strategy.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the picks without queueing them.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Choose which prompt/completion pairs humans judge next and queue them as items of the project.

    Candidates are the pairs of completions of one prompt (in the project, or in --candidates) that are not
    items yet. The reward model scores both sides; certainty picks the pairs whose predicted preference is
    farthest from 0.5, uncertainty those nearest 0.5, disagreement those where the ensemble's members disagree
    most; the diversity guard takes at most --max-per-prompt pairs per prompt. The picks become new items at the
    end of the project's queue. Which strategy pays depends on label noise (docs/benchmarks.md, Active
    learning): with noisy labels (HH-RLHF's) certainty reached a set reward-model accuracy with fewer labels than
    random while uncertainty and disagreement needed more (the pairs nearest 0.5 are mostly coin flips); with
    clean labels disagreement and uncertainty led and certainty lost. auto (the default) picks by the project's
    measured agreement (items judged by two or more annotators), disagreement when it is not measured yet.

    Example:  tether collect select --project helpfulness --reward-model artifacts/models/rm-1 --n 200
    """
    from tether.cli.common import emit_json, require_file, workspace_url
    from tether.qc import select_for_labeling

    if candidates is not None:
        require_file(candidates, "candidates file")
    _, url = workspace_url()
    summary = select_for_labeling(
        url, project_name=project, reward_model=reward_model, strategy=strategy, n=n,
        candidates_file=None if candidates is None else str(candidates), max_per_prompt=max_per_prompt or None,
        seed=seed, dry_run=dry_run,
    )
    if json_out:
        emit_json(summary)
        return
    verb = "would queue" if dry_run else "queued"
    how = summary["strategy"]
    if summary["requested"] == "auto":
        measured = "not measured" if summary["agreement"] is None else f"{summary['agreement']:.2f}"
        how += f" (auto: annotator agreement {measured})"
    typer.echo(f"{verb} {summary['selected'] if dry_run else summary['queued']} of {summary['candidates']} candidate pairs "
               f"in project {project!r} by {how}")
    for pick in summary["picks"][:10]:
        extra = "" if pick["p_pref"] is None else f"p(a>b)={pick['p_pref']:.3f} spread={pick['p_spread']:.3f}  "
        typer.echo(f"  {extra}{pick['prompt']!r}: {pick['a']!r} vs {pick['b']!r}")
    if len(summary["picks"]) > 10:
        typer.echo(f"  ... and {len(summary['picks']) - 10} more")
