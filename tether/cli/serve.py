"""`tether serve` (the web app) and `tether user ...` (accounts)."""

from __future__ import annotations

import typer

user_app = typer.Typer(help="Web app accounts: add users, set roles, issue API tokens.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user")
