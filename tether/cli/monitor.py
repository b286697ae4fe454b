"""`tether monitor ...`."""

from __future__ import annotations

import typer

monitor_app = typer.Typer(help="Production monitoring: ingest records, drift and failure-mode reports, sampling for review.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")
