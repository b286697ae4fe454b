"""`tether registry ...`: versions, aliases (candidate, champion), approvals, promotion gates and lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tether.cli.common import JsonFlag, emit_json

registry_app = typer.Typer(help="Model registry: versions, aliases (candidate, champion), approvals, lineage.", no_args_is_help=True)

# The figures `registry list` shows (show VERSION has them all).
LISTED_FIGURES = ("win_rate", "gold_win_rate", "violation_rate", "kl", "accuracy", "ece")
VersionArg = Annotated[str, typer.Argument(help="NAME/N (support-policy/2), NAME@ALIAS (support-policy@champion) or NAME (latest).")]


def _ws():
    from tether.cli.common import workspace_url

    ws, _ = workspace_url()
    return ws


@registry_app.command("list")
def list_cmd(as_json: JsonFlag = False) -> None:
    """List every registered version with its kind, aliases and evaluation figures; flags those trained on purged data.

    Example:  tether registry list
    """
    from tether.lifecycle.registry import list_versions

    rows = list_versions(_ws())
    if as_json:
        emit_json({"versions": rows})
        return
    from rich.table import Table

    from tether.cli.common import console

    if not rows:
        typer.echo("no registered models yet (`tether demo` registers two; or `tether registry register DIR --name N`)")
        return
    purged = any(r["purged_data"] for r in rows)
    table = Table(show_edge=False)
    for col in ("version", "kind", "aliases", "approved by", *(["data"] if purged else []), "figures"):
        table.add_column(col, no_wrap=col != "figures")
    for r in rows:
        figures = "  ".join(f"{k}={v:.3g}" for k, v in sorted(r["figures"].items()) if k in LISTED_FIGURES)
        data = ["PURGED" if r["purged_data"] else ""] if purged else []
        table.add_row(r["version"], r["kind"], ", ".join(r["aliases"]), r["approved_by"] or "", *data, figures)
    console().print(table)
    if purged:
        typer.echo("PURGED: trained on a snapshot built from purged data (`tether registry lineage VERSION` says which): cannot be approved or promoted")


@registry_app.command("show")
def show_cmd(version: VersionArg, as_json: JsonFlag = False) -> None:
    """Show one version: aliases, tags, gates and its model card.

    Example:  tether registry show support-policy@candidate
    """
    from tether.lifecycle.registry import show

    info = show(_ws(), version)
    if as_json:
        emit_json(info)
        return
    for line in info["purged_data"]:
        typer.echo(f"PURGED DATA: {line}: it cannot be approved or promoted")
    typer.echo(info["card"])
    typer.echo(f"aliases: {', '.join(info['aliases']) or '(none)'}")
    typer.echo(f"source:  {info['source']}")
    if info["gates"]:
        typer.echo("gates for champion:")
        for g in info["gates"]:
            value = "missing" if g["value"] is None else f"{g['value']:.4g}"
            typer.echo(f"  [{'pass' if g['passed'] else 'FAIL'}] {g['figure']} {g['op']} {g['threshold']:g} (is {value})")


@registry_app.command("register")
def register_cmd(
    model_dir: Annotated[Path, typer.Argument(help="The model folder (output of a `tether train` command).")],
    name: Annotated[str, typer.Option("--name", help="Registered model name, e.g. support-policy. One name holds one kind.")],
    kind: Annotated[str | None, typer.Option("--kind", help="reward or policy; default: what the folder's tether.json says (needed without one).")] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="The version it was trained against; default: the registered models its tether.json records.")] = None,
    snapshot: Annotated[str | None, typer.Option("--snapshot", help="The snapshot it was trained on; default: the one its tether.json records.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a trained model folder as a new version (alias candidate), with lineage tags and a model card.

    The kind, the snapshot and the parents come from the folder's own tether.json; a --kind, --snapshot or
    --parent that contradicts it is refused (they state the lineage of a folder without tether.json).

    Example:  tether registry register runs/rm --name support-reward
    """
    from tether.lifecycle.registry import register_model

    info = register_model(_ws(), model_dir, name=name, kind=kind, parent=parent, snapshot_name=snapshot)
    if as_json:
        emit_json(info)
        return
    tags = info["tags"]
    typer.echo(f"registered {info['version']} ({info['kind']}), alias candidate")
    parts = [f"{what} {tags[key]}" for what, key in (("snapshot", "tether.snapshot"), ("parent", "tether.parent")) if tags.get(key)]
    if parts:
        typer.echo(f"  lineage (from {tags.get('tether.lineage_from')}): {', '.join(parts)}")
    for line in info["purged_data"]:
        typer.echo(f"  warning: {line}: it cannot be approved or promoted")


@registry_app.command("approve")
def approve_cmd(
    version: VersionArg,
    admin: Annotated[str, typer.Option("--admin", help="The approving user; must have role admin in the store.")],
    password: Annotated[str | None, typer.Option("--password", envvar="TETHER_PASSWORD", help="The admin's password when they have one (or TETHER_PASSWORD).")] = None,
    note: Annotated[str, typer.Option("--note", help="Why it is approved (kept in the audit log).")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Record an admin's approval of a version (needed, with the gates, for promotion to champion).

    Example:  tether registry approve support-policy/2 --admin alice --note "reviewed the report"
    """
    from tether.lifecycle.registry import approve

    info = approve(_ws(), version, admin=admin, password=password, note=note)
    if as_json:
        emit_json(info)
    else:
        typer.echo(f"{info['version']} approved by {info['approved_by']} at {info['approved_at']}")


@registry_app.command("promote")
def promote_cmd(
    version: VersionArg,
    to: Annotated[str, typer.Option("--to", help="The alias to move: champion (gated) or candidate.")] = "champion",
    as_json: JsonFlag = False,
) -> None:
    """Move an alias to a version. champion requires the tether.toml [gates] to pass and an admin's approval.

    Example:  tether registry promote support-policy/2 --to champion
    """
    from tether.lifecycle.registry import promote

    info = promote(_ws(), version, alias=to)
    if as_json:
        emit_json(info)
    else:
        typer.echo(f"{info['version']} is now {to} (aliases: {', '.join(info['aliases'])})")


@registry_app.command("lineage")
def lineage_cmd(version: VersionArg, as_json: JsonFlag = False) -> None:
    """Walk from a version to the judgments behind it: policy -> reward model -> snapshot (digest) -> judgments.

    Models trained on a snapshot built from purged data (directly or through the models they came from) are
    flagged; they cannot be approved or promoted.

    Example:  tether registry lineage support-policy@champion
    """
    from tether.lifecycle.registry import lineage

    info = lineage(_ws(), version)
    if as_json:
        emit_json(info)
        return
    for p in info["purges"]:
        through = f" (through {', '.join(p['via'])})" if p["via"] else ""
        typer.echo(f"PURGED DATA: {info['version']} rests{through} on snapshot {p['snapshot']}, marked purged {str(p['purged_at'])[:10]}: {p['note']}")
    if info["purges"]:
        typer.echo("  it cannot be approved or promoted: retrain on a new snapshot\n")
    for step in info["chain"]:
        depth = step["depth"]
        indent = "   " * (depth - 1) + "└─ " if depth else ""
        pad = " " * len(indent)
        flag = "  [trained on purged data]" if step.get("purged_data") else ""
        if step["type"] == "model_version":
            extra = f"  base={step['base_model']}" if step.get("base_model") else ""
            typer.echo(f"{indent}{step['version']}  ({step['kind']}){extra}{flag}")
        elif step["type"] == "model_dir":
            typer.echo(f"{indent}{step['path']}  ({step['kind']}, {step['role']}; not registered){flag}")
        elif step["type"] == "missing":
            typer.echo(f"{indent}{step['version']}  (not in this registry)")
        elif step["type"] == "snapshot":
            if step.get("found"):
                purged = f"  PURGED {step['purged_at'][:10]}: {step['purge_note']}" if step.get("purged") else ""
                typer.echo(f"{indent}snapshot {step['name']}  sha256 {step['digest']}  {step['rows']} rows, aggregate={step['aggregate']}{purged}")
            else:
                typer.echo(f"{indent}snapshot {step.get('name') or ''} sha256 {step['digest']}  (not in this workspace's store)")
        elif step["type"] == "judgments":
            who = ", ".join(f"{k} ({v})" for k, v in step["annotators"].items())
            if step["recorded"]:
                gone = f"; {step['purged']} purged since" if step.get("purged") else ""
                typer.echo(f"{indent}{step['used']} judgments used, in project {step['project']}{gone}")
                typer.echo(f"{pad}{step['count']} remain, by {len(step['annotators'])} annotators: {who}")
            else:
                typer.echo(f"{indent}{step['count']} judgments in project {step['project']} now, by {len(step['annotators'])} annotators: {who}")
                typer.echo(f"{pad}(the snapshot predates the record of the judgments it used; it counted {step['used']})")
            if step["flagged"]:
                typer.echo(f"{pad}flagged by QC: {', '.join(step['flagged'])}")
            if step["excluded"]:
                typer.echo(f"{pad}left out of the snapshot: {', '.join(step['excluded'])} ({step.get('excluded_judgments') or 0} judgments)")


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
