"""`tether eval ...`."""

from __future__ import annotations

import typer

eval_app = typer.Typer(help="Evaluate reward models and policies.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
