"""What every command shares: output, JSON printing, the workspace, and the common training options.

Heavy libraries (torch, transformers, pandas) are never imported here: `tether --help` must stay instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.errors import TetherError

# Shared typer option aliases, so every command spells the same thing the same way.
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")]

# The common options of every `tether train` command (same names everywhere).
Epochs = Annotated[float | None, typer.Option("--epochs", help="Passes over the training data.")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps (overrides --epochs).")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Examples per optimizer step, over all processes.")]
LearningRate = Annotated[float | None, typer.Option("--learning-rate", help="Peak learning rate (AdamW).")]
MaxLength = Annotated[int | None, typer.Option("--max-length", help="Max tokens of prompt+completion; the prompt's start is cut first.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Random seed (data order, initialization, sampling).")]
OutputDir = Annotated[
    Path | None,
    typer.Option("--output-dir", "-o", help="Where the trained model, its metadata, metrics and checkpoints go. Required (here or in --config). A folder that holds an earlier run needs --resume or --overwrite."),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="A YAML file of config fields, one `field: value` per line, model/data/output_dir included (list them: tether train fields NAME). Flags and --set override it."),
]
SetValues = Annotated[list[str] | None, typer.Option("--set", help="Set one config field: --set key=value (repeatable); refused when a flag sets the same field to another value.")]
Resume = Annotated[
    bool | None,
    typer.Option("--resume", help="Continue from the last checkpoint in --output-dir (--set save_steps=N writes them); refused if it is another run's (model, data, settings)."),
]
Overwrite = Annotated[bool | None, typer.Option("--overwrite", help="Replace an earlier run in --output-dir: deletes its model, metrics and checkpoints first.")]


def emit_json(obj: Any) -> None:
    """Print one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def console() -> Any:
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def err_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def require_file(path: Path, what: str = "file") -> Path:
    if not path.exists():
        raise TetherError(f"{what} not found: {path}", fix="check the path (relative paths are from the current folder)")
    if path.is_dir():
        raise TetherError(f"{path} is a folder, expected a {what}", fix="name the file inside it")
    return path


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written as a file (None when it looks writable): checked before any work is done."""
    if path.is_dir():
        return f"{path} is a folder"
    for parent in path.parents:  # the nearest folder that exists must be a writable folder (the rest is made)
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            if not os.access(parent, os.W_OK):
                return f"the folder {parent} is not writable"
            return None
    return None


@contextlib.contextmanager
def writing(path: Path, flag: str = "-o") -> Iterator[None]:
    """Around code that writes the file ``path``: a path that cannot be written (a folder, a file where a folder
    should be, no permission), or an OSError while writing it (a full disk), is a one-line TetherError instead of
    a traceback, and no temporary ``<path>.tmp`` is left behind. Other OSErrors pass through."""
    fix = f"give {flag} a file path in a folder you can write to"
    problem = _unwritable(path)
    if problem is not None:
        raise TetherError(f"cannot write {path}: {problem}", fix=fix)
    try:
        yield
    except OSError as exc:
        where = Path(str(exc.filename)) if exc.filename is not None else None
        if where is None or not (where in (path, *path.parents) or str(where).startswith(str(path))):
            raise
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)
        raise TetherError(f"cannot write {path}: {exc.strerror or exc}", fix=fix) from None


def data_workspace(*specs: Any) -> Any:
    """The workspace the rows of ``specs`` are read from: the current one, opened with its schema checked when a spec
    names a snapshot (``snapshot:NAME``; no workspace then is an error), else the current one if any (or None)."""
    from tether.cli.workspace import current_workspace

    if any(str(spec).startswith("snapshot:") for spec in specs if spec is not None):
        return workspace_url()[0]
    return current_workspace()


def workspace_url() -> tuple[Any, str]:
    """The current workspace and its database URL, with the schema checked."""
    from tether.cli.workspace import open_workspace
    from tether.store.db import check_schema

    ws = open_workspace()
    check_schema(ws.database_url)
    return ws, ws.database_url
