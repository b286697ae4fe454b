"""`tether demo`: the whole loop on the built-in task."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
