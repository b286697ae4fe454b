"""The `tether` command line. Each command parses its options and calls one library function.

Command groups live beside this file (data.py, train.py, ...); heavy imports happen inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tether import __version__
from tether.errors import TetherError

app = typer.Typer(
    name="tether",
    help=(
        "Tether: the whole RLHF loop. Collect human feedback, check its quality, train reward models and "
        "policies, evaluate, govern and monitor.\n\n"
        "Start here:  tether demo    (the whole loop on a built-in task, offline, minutes on a CPU)\n\n"
        "Then:  tether init ws && cd ws && tether data import pairs.jsonl --name prefs"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="The workspace database: schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tether {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    pass


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="The workspace folder (made if missing).")] = Path("."),
) -> None:
    """Make a workspace: tether.toml, the SQLite database (WAL) and artifacts/.

    Safe to run again on an existing workspace: it only adds what is missing and upgrades the schema.

    Example:  tether init my-workspace && cd my-workspace
    """
    from tether.store.workspace import init_workspace

    ws = init_workspace(directory)
    typer.echo(f"workspace ready: {ws.root}")
    typer.echo(f"  database:  {ws.database_url}")
    typer.echo(f"  artifacts: {ws.artifacts}")
    typer.echo(f"use it from inside the folder, or set TETHER_HOME={ws.root}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the database schema to this version of Tether; data is kept.

    Example:  TETHER_DATABASE_URL=postgresql+psycopg://me@db:5432/tether tether db upgrade
    """
    from tether.cli.workspace import open_workspace
    from tether.store.db import current_revision, upgrade

    ws = open_workspace()
    upgrade(ws.database_url)
    typer.echo(f"schema at revision {current_revision(ws.database_url)} ({ws.database_url.split('@')[-1]})")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the workspace database and the one this Tether needs.

    Example:  tether db current
    """
    from tether.cli.workspace import open_workspace
    from tether.store.db import current_revision, head_revision

    ws = open_workspace()
    typer.echo(f"database: {current_revision(ws.database_url) or '(empty)'}  code: {head_revision()}")


def _register_groups() -> None:
    """Attach the command groups. Each module imports only typer at import time."""
    from tether.cli import audit, data, demo, eval, loop, models, monitor, qc, registry, serve, train

    for group in (demo, data, train, loop, eval, qc, serve, registry, monitor, audit, models):
        group.register(app)


_register_groups()


def _click_exceptions() -> tuple[type, ...]:
    """click's usage-error class, and the copy newer typer releases bundle as ``typer._click`` (its errors are not
    instances of click's own, so a missing argument used to end in a traceback)."""
    classes: list[type] = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            classes.append(__import__(module, fromlist=["ClickException"]).ClickException)
        except (ImportError, AttributeError):
            pass
    return tuple(classes)


def main() -> None:
    """Entry point: user mistakes print a clear message, never a traceback."""
    try:
        rc = app(standalone_mode=False)
    except TetherError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.fix:
            sys.stderr.write(f"  fix: {exc.fix}\n")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (work saved so far is kept)\n")
        sys.exit(130)
    except Exception as exc:  # click's usage errors (a missing option, a bad value)
        if isinstance(exc, _click_exceptions()):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
