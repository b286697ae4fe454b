"""`tether registry ...`."""

from __future__ import annotations

import typer

registry_app = typer.Typer(help="Model registry: versions, aliases (candidate, champion), approvals, lineage.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
