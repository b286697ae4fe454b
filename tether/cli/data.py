"""`tether data ...`: import, snapshot, export and inspect feedback sets."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.common import JsonFlag

data_app = typer.Typer(help="Feedback sets: import files, freeze snapshots, export, inspect.", no_args_is_help=True)

IMPORT_FORMAT_CHOICES = ("auto", "trl", "hh", "pandalm", "ranking", "ratings", "unpaired", "prompts")
# Files at least this big get a progress bar (on a terminal).
PROGRESS_MIN_BYTES = 4_000_000


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@contextlib.contextmanager
def _progress(path: Path, quiet: bool) -> Iterator[Callable[[float], None] | None]:
    """A rich progress bar on stderr for big files read on a terminal; yields the callback (or None)."""
    try:
        big = path.stat().st_size >= PROGRESS_MIN_BYTES
    except OSError:
        big = False
    if quiet or not big or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from tether.cli.common import err_console

    with Progress(TextColumn("importing {task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=err_console(), transient=True) as bar:
        task = bar.add_task(path.name, total=1.0)
        yield lambda fraction: bar.update(task, completed=fraction)


def _n(value: int) -> str:
    return f"{value:,}"


@data_app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="A .jsonl, .json or .parquet file, optionally .gz.")],
    name: Annotated[str, typer.Option("--name", help="Name of the new feedback set (letters, digits, . _ -).")],
    fmt: Annotated[str, typer.Option("--format", help="auto (recognised by keys), trl, hh, pandalm, ranking, ratings, unpaired or prompts.")] = "auto",
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip bad records (counted per reason) instead of stopping.")] = False,
    redact: Annotated[str | None, typer.Option("--redact", help="pii: replace emails, phones, card numbers, IBANs, SSNs and addresses by [EMAIL], [PHONE], ... before storing.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Import a feedback file as a new set: prompts, completions, items, annotators and judgments.

    The whole file imports in one transaction or not at all; a bad record stops it with the file, line and
    reason (or is skipped and counted with --skip-invalid). Identical chosen/rejected pairs are skipped and
    counted. See the README's "Data formats" for each format's keys.

    Example:  tether data import ../shared/data/hh-rlhf/helpful-base/test.jsonl.gz --name hh-helpful
    """
    from tether.checks.redact import check_redact
    from tether.cli.common import emit_json, require_file, workspace_url
    from tether.errors import TetherError
    from tether.store.db import session_scope
    from tether.store.importer import import_file

    if fmt not in IMPORT_FORMAT_CHOICES:
        raise TetherError(f"unknown format {fmt!r}", fix=f"use one of: {', '.join(IMPORT_FORMAT_CHOICES)}")
    require_file(path)
    _, url = workspace_url()
    with _progress(path, quiet=False) as on_progress:
        with session_scope(url) as session:
            result = import_file(path, name, session=session, fmt=fmt, skip_invalid=skip_invalid, on_progress=on_progress,
                                 redact_pii=check_redact(redact))
    if json_out:
        emit_json(result.to_dict())
        return
    rate = result.judgments / result.seconds if result.seconds else 0.0
    typer.echo(
        f"imported {_n(result.imported)} of {_n(result.records)} records from {path.name} into set {name!r} "
        f"(format {result.format}) in {result.seconds:.2f} s"
    )
    typer.echo(
        f"  prompts {_n(result.prompts)} · completions {_n(result.completions)} · items {_n(result.items)} · "
        f"judgments {_n(result.judgments)} ({_n(result.comparisons)} comparisons) by {result.annotators} annotator(s)"
        + (f" · {rate:,.0f} judgments/s" if rate else "")
    )
    for label, counts in (("skipped", result.skip_reasons), ("coerced", result.coerced)):
        if counts:
            typer.echo(f"  {label} {_n(sum(counts.values()))}:")
            for reason, count in counts.items():
                typer.echo(f"    {_n(count):>7}  {reason}")
    if redact:
        found = ", ".join(f"{kind} {_n(n)}" for kind, n in sorted(result.redacted.items())) or "none found"
        typer.echo(f"  redacted PII: {found}")
    typer.echo(f"next: tether data snapshot {name}")


@data_app.command("snapshot")
def snapshot(
    name: Annotated[str, typer.Argument(help="The feedback set to freeze.")],
    aggregate: Annotated[str | None, typer.Option("--aggregate", help="How several judgments of a pair become one row: majority (default), dawid-skene or bradley-terry.")] = None,
    votes: Annotated[str, typer.Option("--votes", help="aggregate (default): one row per pair, as --aggregate decides; reliability: one row per annotator vote, its \"weight\" the annotator's Dawid-Skene reliability (preference sets).")] = "aggregate",
    snapshot_name: Annotated[str | None, typer.Option("--snapshot-name", help="Name of the snapshot (default: <set>-v<N>).")] = None,
    keep_ties: Annotated[bool, typer.Option("--keep-ties", help="Keep pairs judged a tie, as rows with \"tie\": true.")] = False,
    min_agreement: Annotated[float | None, typer.Option("--min-agreement", help="Leave out pairs whose share of agreeing votes is below this (0..1).")] = None,
    exclude_flagged: Annotated[bool, typer.Option("--exclude-flagged", help="Leave out the judgments of the annotators `tether qc` flags.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Freeze a set's training rows into a JSONL snapshot with a sha256 digest of its canonical content.

    Preference pairs are aggregated (majority: the outcome with the most votes; split votes and ties are left
    out and counted; dawid-skene: weighted by each annotator's estimated reliability; bradley-terry: strengths
    per item, rankings become all pairs with margins); ratings are averaged per aspect; thumbs take the
    majority label. A gold item's answer, else a reviewer's decision (adjudication), is the item's label over
    the aggregate (counted as labels_from_gold and labels_from_adjudication). The QC figures (tether qc), the
    method and the judgments used are recorded with the snapshot. Trainers read the snapshot as snapshot:NAME.

    --votes reliability keeps every annotator's vote instead of the aggregate: one row per vote on each pair,
    with "weight" = the annotator's Dawid-Skene reliability (estimated from all the set's votes), so a reward
    model counts an unreliable annotator's votes less (its loss is the weighted mean). Gold and decided items
    give one row, weight 1; tie votes follow --keep-ties; the weights are printed and recorded. (On PandaLM, whose
    annotators are about equally reliable, it did no better than the aggregate trained as long: docs/benchmarks.md.)

    Example:  tether data snapshot pandalm --aggregate majority --snapshot-name pandalm-maj

    Example:  tether data snapshot pandalm --votes reliability --snapshot-name pandalm-votes
    """
    from tether.cli.common import emit_json, workspace_url
    from tether.errors import TetherError
    from tether.qc import snapshot_qc
    from tether.store.db import session_scope
    from tether.store.snapshots import VOTES, make_snapshot

    if votes not in VOTES:
        raise TetherError(f"unknown --votes {votes!r}", fix=f"use one of: {', '.join(VOTES)}")
    if votes != "aggregate" and aggregate is not None:
        raise TetherError(f"--aggregate {aggregate} decides one row per pair, and --votes {votes} writes every vote as its own row",
                          fix="give one of them")
    method = aggregate or "majority"
    ws, url = workspace_url()
    qc, excluded = snapshot_qc(url, name, method=method if votes == "aggregate" else f"votes:{votes}", exclude_flagged=exclude_flagged,
                               min_agreement=min_agreement)
    with session_scope(url) as session:
        summary = make_snapshot(
            name, session=session, root=ws.root, aggregate=method, snapshot_name=snapshot_name, keep_ties=keep_ties,
            qc=qc, min_agreement=min_agreement, exclude_annotators=excluded, votes=votes,
        )
    if json_out:
        emit_json(summary)
        return
    counts = summary["counts"]
    typer.echo(f"snapshot {summary['name']!r}: {_n(summary['row_count'])} {summary['row_kind']} rows from set {name!r} ({summary['aggregate']})")
    typer.echo(f"  sha256 {summary['digest']}")
    typer.echo(f"  file   {ws.root / summary['path']}")
    detail = {k: v for k, v in counts.items() if k not in ("row_kind", "rows") and v is not None}
    typer.echo("  " + " · ".join(f"{k} {_n(v) if isinstance(v, int) else v}" for k, v in detail.items()))
    alphas = {q: a for q, a in (qc.get("qc/alpha") or {}).items() if a is not None}
    if alphas:
        typer.echo("  Krippendorff's alpha: " + " · ".join(f"{q} {a:.3f}" for q, a in alphas.items()))
    weights = summary["qc"].get("votes/weights") or {}
    if weights:
        typer.echo("  vote weights (Dawid-Skene reliability): " + " · ".join(f"{who} {w:.3f}" for who, w in weights.items()))
    if excluded:
        typer.echo(f"  left out the judgments of {len(excluded)} flagged annotator(s): {', '.join(excluded)}")
    export_as = "jsonl" if weights else "trl"  # TRL's format has no row weight (export refuses weighted rows as trl)
    typer.echo(f"use it: --data snapshot:{summary['name']}   or   tether data export {summary['name']} --format {export_as} -o out.jsonl")


@data_app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="A snapshot name, or else a set name (its rows aggregated now by majority).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .jsonl or .jsonl.gz file to write.")],
    fmt: Annotated[str, typer.Option("--format", help="trl (prompt/chosen/rejected), hh (two whole dialogues) or jsonl (canonical rows, ties, subsets and weights kept).")] = "jsonl",
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output file if it exists.")] = False,
    drop_weights: Annotated[bool, typer.Option("--drop-weights", help="trl/hh: write weighted rows (a --votes reliability snapshot) at full weight; refused without it.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Write a snapshot (or a set) out as TRL, HH-RLHF or canonical JSONL rows.

    NAME is looked up as a snapshot first, then as a set. TRL and HH have no ties: tie rows are left out of
    them (and counted). Neither has row weights: a snapshot of weighted votes is refused as trl or hh unless
    --drop-weights. Exporting, importing the file again and snapshotting it gives the same digest.

    Example:  tether data export hh-helpful-v1 --format trl -o hh-helpful.trl.jsonl
    """
    from tether.cli.common import emit_json, workspace_url, writing
    from tether.store.db import session_scope
    from tether.store.export import export as export_rows

    ws, url = workspace_url()
    with writing(output), session_scope(url) as session:
        summary = export_rows(name, fmt, output, session=session, root=ws.root, force=force, drop_weights=drop_weights)
    if json_out:
        emit_json(summary)
        return
    typer.echo(f"wrote {_n(summary['rows'])} rows of {summary['source']} {name!r} as {fmt} to {output}")
    if summary["left_out_ties"]:
        typer.echo(f"  left out {_n(summary['left_out_ties'])} tie rows ({fmt} has no ties; use --format jsonl to keep them)")
    if summary["weights_dropped"]:
        typer.echo(f"  dropped the rows' weights (--drop-weights): every row counts fully in {fmt}")


@data_app.command("list")
def list_(json_out: JsonFlag = False) -> None:
    """List the feedback sets and snapshots of the workspace with their counts, and what purges touched.

    Example:  tether data list
    """
    from tether.cli.common import emit_json, workspace_url
    from tether.store.db import session_scope
    from tether.store.snapshots import list_sets, list_snapshots

    _, url = workspace_url()
    with session_scope(url, readonly=True) as session:
        sets, snapshots = list_sets(session), list_snapshots(session)
    if json_out:
        emit_json({"sets": sets, "snapshots": snapshots})
        return
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    if not sets:
        out.print("no feedback sets yet: tether data import FILE --name NAME")
        return
    table = Table(title="feedback sets", title_justify="left")
    for column in ("name", "source", "prompts", "items", "judgments", "annotators", "created", "purged"):
        table.add_column(column, justify="right" if column in ("prompts", "items", "judgments", "annotators") else "left", no_wrap=True)
    for s in sets:
        purged = f"{_n(s['purged_judgments'])} judgments" if s["purged_judgments"] else ""
        table.add_row(s["name"], s["source"], _n(s["prompts"]), _n(s["items"]), _n(s["judgments"]), str(s["annotators"]), f"{s['created_at']:%Y-%m-%d %H:%M}", purged)
    out.print(table)
    if snapshots:
        table = Table(title="snapshots", title_justify="left")
        for column in ("name", "set", "kind", "rows", "aggregate", "sha256", "created", "purged"):
            table.add_column(column, justify="right" if column == "rows" else "left", no_wrap=True)
        for s in snapshots:
            purged = f"{s['purged_at']:%Y-%m-%d}" if s["purged_at"] else ""
            table.add_row(s["name"], s["set"] or "-", s["row_kind"], _n(s["row_count"]), s["aggregate"], s["digest"][:16], f"{s['created_at']:%Y-%m-%d %H:%M}", purged)
        out.print(table)
        if any(s["purged_at"] for s in snapshots):
            out.print("purged: built from data since purged; trainers refuse them (`tether data show NAME` gives the note)")


@data_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A snapshot name, or else a set name.")],
    rows: Annotated[int, typer.Option("--rows", help="How many sample rows to print.")] = 3,
    json_out: JsonFlag = False,
) -> None:
    """Show a snapshot or a set: counts, digest and sample rows (long texts shortened).

    For a set, the rows and digest are those a fresh majority snapshot would have.

    Example:  tether data show hh-helpful-v1 --rows 2
    """
    from tether.cli.common import emit_json, workspace_url
    from tether.store.db import session_scope
    from tether.store.snapshots import dumps_preview, preview, resolve, set_details

    ws, url = workspace_url()
    with session_scope(url, readonly=True) as session:
        resolved = resolve(name, session=session, root=ws.root, allow_purged=True)
        details: dict[str, Any] = set_details(session, name) if resolved["source"] == "set" else {}
    sample = resolved.pop("rows")[: max(rows, 0)]
    if json_out:
        emit_json({**resolved, **({"set_details": details} if details else {}), "sample_rows": [preview(r) for r in sample]})
        return
    if resolved["source"] == "snapshot":
        typer.echo(f"snapshot {name!r} of set {resolved['set']!r} ({resolved['aggregate']}), made {resolved['created_at']:%Y-%m-%d %H:%M}")
        if resolved["purged_at"]:
            typer.echo(f"  PURGED  {resolved['purged_at']:%Y-%m-%d %H:%M}: {resolved['purge_note']} (trainers refuse it)")
        typer.echo(f"  file    {ws.root / resolved['path']}")
    else:
        typer.echo(f"set {name!r} ({details['source']}), made {details['created_at']:%Y-%m-%d %H:%M}")
        typer.echo(
            f"  prompts {_n(details['prompts'])} · completions {_n(details['completions'])} · items {_n(details['items'])} "
            f"{details['item_kinds']} · judgments {_n(details['judgments'])}"
        )
        typer.echo("  annotators " + ", ".join(f"{a} ({_n(c)})" for a, c in details["annotators"].items()))
        imported = details.get("import") or {}
        if imported.get("skip_reasons"):
            typer.echo(f"  skipped at import: {imported['skip_reasons']}")
        if imported.get("coerced"):
            typer.echo(f"  coerced at import: {imported['coerced']}")
        typer.echo(f"  snapshots: {', '.join(details['snapshots']) or 'none yet'}")
    typer.echo(f"  rows    {_n(resolved['row_count'])} {resolved['row_kind']}")
    typer.echo(f"  sha256  {resolved['digest']}" + ("  (of a majority snapshot made now)" if resolved["source"] == "set" else ""))
    counts = {k: v for k, v in resolved["counts"].items() if k not in ("row_kind", "rows") and v is not None}
    typer.echo("  counts  " + " · ".join(f"{k} {v}" for k, v in counts.items()))
    for index, row in enumerate(sample, start=1):
        typer.echo(f"  [{index}] {dumps_preview(row)}")
