"""What every command shares: output, JSON printing, the workspace, and the common training options.

Heavy libraries (torch, transformers, pandas) are never imported here: `tether --help` must stay instant.
"""

from __future__ import annotations

import json
import sys
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


def workspace_url() -> tuple[Any, str]:
    """The current workspace and its database URL, with the schema checked."""
    from tether.store.db import check_schema
    from tether.workspace import open_workspace

    ws = open_workspace()
    check_schema(ws.database_url)
    return ws, ws.database_url
