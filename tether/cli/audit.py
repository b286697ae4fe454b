"""`tether audit export` and `tether data purge`: the governance commands.

``purge`` belongs to the ``tether data`` group; it is defined here (beside the audit log it writes to) and
attached to that group by ``register``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.common import JsonFlag

audit_app = typer.Typer(help="The audit log: who did what to which object, when.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    from tether.cli.data import data_app

    app.add_typer(audit_app, name="audit")
    data_app.command("purge")(purge)


def _time(value: str | None, name: str) -> Any:
    if value is None:
        return None
    from tether.errors import TetherError
    from tether.lifecycle.monitor import parse_time

    try:
        return parse_time(value)
    except ValueError as exc:
        raise TetherError(f"{name}: {exc}", fix=f"write {name} 2025-03-01 or {name} 2025-03-01T12:00:00Z") from None


@audit_app.command("export")
def export(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (.jsonl or .csv); default: standard output.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="jsonl or csv (default: from the -o suffix, else jsonl).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only events at or after this time (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Only events before this time (ISO 8601).")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Only actions starting with this, e.g. data. or data.purge.")] = None,
) -> None:
    """Export the audit log (every write through the CLI, the web app and the API) as JSONL or CSV.

    Each event has id, at (UTC), actor (cli:<login>, user:<name>, api:<name>), action, object_type, object_id
    and detail (JSON).

    Example:  tether audit export --since 2025-03-01 -o audit-march.csv
    """
    from tether.cli.common import workspace_url, writing
    from tether.lifecycle.governance import export_audit
    from tether.store.db import session_scope

    if fmt is None:
        fmt = "csv" if output is not None and output.suffix.lower() == ".csv" else "jsonl"
    since_dt, until_dt = _time(since, "--since"), _time(until, "--until")
    _, url = workspace_url()
    with session_scope(url) as session:
        if output is None:
            export_audit(sys.stdout, session=session, fmt=fmt, since=since_dt, until=until_dt, action=action)
            return
        tmp = output.with_name(output.name + ".tmp")
        with writing(output):
            try:
                output.parent.mkdir(parents=True, exist_ok=True)
                with tmp.open("w", encoding="utf-8", newline="") as fh:
                    count = export_audit(fh, session=session, fmt=fmt, since=since_dt, until=until_dt, action=action)
                tmp.replace(output)
            finally:
                tmp.unlink(missing_ok=True)  # a failed write leaves no partial file behind
    typer.echo(f"wrote {count:,} audit event(s) to {output} ({fmt})", err=True)


def purge(
    annotator: Annotated[str | None, typer.Option("--annotator", help="Delete this annotator's judgments, assignments, tokens and account.")] = None,
    user_ref: Annotated[str | None, typer.Option("--user-ref", help="Delete this end user's production records and the review items made from them.")] = None,
    expired: Annotated[bool, typer.Option("--expired", help="Delete production records older than [governance] retention_days.")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why (a ticket number, say); kept in the audit event.")] = "",
    delete_snapshot_files: Annotated[bool, typer.Option("--delete-snapshot-files", help="Also delete the files of the snapshots that held the data.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete. Without it, print what would be deleted and change nothing.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Delete one annotator's or one end user's data from every table, or what is past retention.

    The snapshots that used the deleted judgments are marked as purged (trainers refuse them; models trained on
    them cannot be approved or promoted). Where earlier audit events, QC figures, registry tags and model cards
    and the demo's run records and reports name the person, the name becomes a pseudonym keyed with the
    workspace's pseudonym.key (or TETHER_PSEUDONYM_KEY), and one data.purge event records the counts and the
    keyed hash of the name. Without --yes nothing changes: the command prints what it would delete.

    Example:  tether data purge --annotator alice --reason "GDPR request 1234" --yes
    """
    from tether.cli.common import emit_json, workspace_url
    from tether.errors import TetherError
    from tether.lifecycle.governance import (
        purge_annotator,
        purge_expired,
        purge_user_ref,
        retention_days,
        scrub_workspace,
    )
    from tether.store.db import session_scope

    chosen = [name for name, on in (("--annotator", annotator is not None), ("--user-ref", user_ref is not None), ("--expired", expired)) if on]
    if len(chosen) != 1:
        raise TetherError("name exactly one of --annotator NAME, --user-ref REF or --expired", fix="tether data purge --annotator alice --yes")
    ws, url = workspace_url()
    days = retention_days(ws.section("governance")) if expired else None
    if expired and days is None:
        raise TetherError("no retention period is set", fix="set retention_days under [governance] in tether.toml, e.g. retention_days = 365")
    common = {"root": ws.root, "dry_run": not yes, "delete_snapshot_files": delete_snapshot_files}
    scrubbed = None
    with session_scope(url) as session:
        if annotator is not None:
            result = purge_annotator(annotator, session=session, reason=reason, key=ws.pseudonym_key(), **common)
            from tether.demo.report import rewrite_report

            # before the store commits: should this fail, the purge is undone and can run again
            scrubbed = scrub_workspace(ws, annotator, result.pseudonym or "", dry_run=not yes, rewrite_report=rewrite_report)
        elif user_ref is not None:
            result = purge_user_ref(user_ref, session=session, reason=reason, key=ws.pseudonym_key(), **common)
        else:
            result = purge_expired(days, session=session, **common)
    models: list[str] = []
    if result.snapshots_marked and (ws.root / "mlflow.db").exists():
        from tether.lifecycle.registry import versions_resting_on

        models = versions_resting_on(ws, result.snapshots_marked)
    if json_out:
        emit_json({**result.to_dict(), "models_flagged": models, **({"workspace": scrubbed.to_dict()} if scrubbed else {})})
        return
    verb = "deleted" if yes else "would delete"
    counts = ", ".join(f"{table} {n:,}" for table, n in result.deleted.items()) or "nothing"
    typer.echo(f"{verb}: {counts}")
    if result.snapshots_marked:
        typer.echo(f"{'marked' if yes else 'would mark'} {len(result.snapshots_marked)} snapshot(s) as purged: {', '.join(result.snapshots_marked)}")
        old = [name for name, n in result.snapshot_judgments.items() if n is None]
        if old:
            typer.echo(f"  ({', '.join(old)}: made before snapshots recorded their judgments, so marked as they may hold them)")
    if models:
        typer.echo(f"{'flagged' if yes else 'would flag'} {len(models)} registered model(s) trained on them, directly or through a parent "
                   f"(they cannot be approved or promoted): {', '.join(models)}")
    if result.snapshot_files_deleted:
        typer.echo(f"deleted snapshot file(s): {', '.join(result.snapshot_files_deleted)}")
    if result.audit_events_pseudonymized:
        typer.echo(
            f"{'pseudonymized' if yes else 'would pseudonymize'} the name as {result.pseudonym} in "
            f"{result.audit_events_pseudonymized} audit event(s) and snapshot/metadata row(s)"
        )
    if scrubbed and (scrubbed.model_versions or scrubbed.files):
        typer.echo(
            f"{'replaced' if yes else 'would replace'} the name in {len(scrubbed.model_versions)} registry version(s) "
            f"(tags, model cards) and {len(scrubbed.files)} run record(s)"
            + (f"; {'regenerated' if yes else 'would regenerate'} {len(scrubbed.reports)} report(s)" if scrubbed.reports else "")
        )
    if scrubbed and scrubbed.left:
        typer.echo(f"still named in: {', '.join(scrubbed.left)} (not Tether's run records: delete or regenerate them)")
    if not yes:
        typer.echo("nothing changed: run again with --yes to delete")
