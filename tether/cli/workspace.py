"""Which workspace a command uses: ``TETHER_HOME``; else the nearest folder at or above the current one that
holds a ``tether.toml``. Only the command line looks at the current folder; library functions take a
``Workspace`` (tether.store.workspace)."""

from __future__ import annotations

import os
from pathlib import Path

from tether.errors import TetherError
from tether.store.workspace import CONFIG_NAME, Workspace, load_workspace


def find_workspace(start: Path | None = None) -> Path | None:
    """The workspace folder in use, or None when there is none."""
    env = os.environ.get("TETHER_HOME")
    if env:
        return Path(env).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    return None


def open_workspace(start: Path | None = None) -> Workspace:
    """The current workspace; a clear error when there is none."""
    root = find_workspace(start)
    if root is None:
        raise TetherError(
            "no Tether workspace here (no tether.toml in this folder or above, and TETHER_HOME is not set)",
            fix="run `tether init` to make one here, or set TETHER_HOME=/path/to/workspace",
        )
    if not (root / CONFIG_NAME).is_file():
        raise TetherError(
            f"TETHER_HOME={root} is not a Tether workspace (no {CONFIG_NAME})",
            fix=f"run `tether init {root}`",
        )
    return load_workspace(root)


def current_workspace() -> Workspace | None:
    """The workspace in use (see ``find_workspace``), or None when there is none."""
    return open_workspace() if find_workspace() is not None else None
