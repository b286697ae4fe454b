"""`tether data ...`: import, snapshot, export and inspect feedback sets."""

from __future__ import annotations

import typer

data_app = typer.Typer(help="Feedback sets: import files, freeze snapshots, export, inspect.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
