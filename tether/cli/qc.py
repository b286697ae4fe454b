"""`tether qc` (annotation quality) and `tether collect ...` (active learning)."""

from __future__ import annotations

import typer

collect_app = typer.Typer(help="Choose what humans should judge next (active learning).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(collect_app, name="collect")
