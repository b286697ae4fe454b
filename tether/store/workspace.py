"""The workspace: a folder with ``tether.toml``, the SQLite database and ``artifacts/``.

``TETHER_DATABASE_URL`` points the store at another database (PostgreSQL for a team) while artifacts stay in the
workspace folder. Which workspace a command uses (``TETHER_HOME``, else the current folder and its parents) is the
command line's business: ``tether.cli.workspace``. Library code is handed a ``Workspace``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.errors import TetherError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "tether.toml"
DB_NAME = "tether.db"
PSEUDONYM_KEY_FILE = "pseudonym.key"

DEFAULT_TOML = """\
# Tether workspace. Every key is optional; these are the defaults.

[database]
# Leave empty for the SQLite file in this folder, or set TETHER_DATABASE_URL, for example
#   postgresql+psycopg://user@host:5432/tether
url = ""

[gates]
# Promotion to `champion` requires every gate to pass (tether registry promote).
min_win_rate = 0.55
max_violation_rate = 0.05
max_kl = 10.0

[monitor]
# Alerts raised by `tether monitor report` (exit status 3). p-values are compared with ks_pvalue divided by
# the number of windows compared (Bonferroni).
max_reward_psi = 0.2       # reward population stability index vs the baseline
ks_pvalue = 0.01           # family-wise alpha of the KS, MMD, agreement and rate tests
min_ks_stat = 0.1          # ... and the KS statistic a significant reward shift must also reach
max_input_psi = 0.2        # prompt-length PSI
min_embed_mmd = 0.01       # prompt-embedding MMD^2 a significant topic shift must also reach
min_agreement = 0.6        # reward-human AUC on records with thumbs / review ratings
max_agreement_drop = 0.1   # significant drop of that AUC from the baseline
min_feedback = 20          # fewer thumbs-up or -down in a window: no agreement check
max_violation_rate = 0.05  # share of completions with PII or a failed --rules check
max_rate_rise = 0.05       # refusal / repetition / violation rate rise over the baseline
max_length_growth = 1.5    # mean completion length over the baseline's
min_window_records = 30    # smaller windows are shown but not tested
# rules = "rules.yaml"     # a tether.checks.rules file whose failed checks count as violations

[governance]
# `tether data purge --expired` deletes production records older than this many days (0 keeps them).
retention_days = 0
"""


@dataclass
class Workspace:
    """A resolved workspace: its folder and its parsed ``tether.toml``."""

    root: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def snapshots_dir(self) -> Path:
        return self.artifacts / "snapshots"

    @property
    def models_dir(self) -> Path:
        return self.artifacts / "models"

    @property
    def reports_dir(self) -> Path:
        return self.artifacts / "reports"

    @property
    def database_url(self) -> str:
        url = os.environ.get("TETHER_DATABASE_URL") or self.config.get("database", {}).get("url") or ""
        return url or f"sqlite:///{self.root / DB_NAME}"

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.config.get(name, {}))

    def pseudonym_key(self) -> bytes:
        """The key of purge pseudonyms (tether.lifecycle.governance): ``TETHER_PSEUDONYM_KEY``, else the workspace's
        ``pseudonym.key`` file, made on first use (readable by its owner only). Teams that share a database share
        the key too (copy the file or set the variable), so that one person gets one pseudonym."""
        env = os.environ.get("TETHER_PSEUDONYM_KEY")
        if env is not None:
            if len(env) < 16:
                raise TetherError("TETHER_PSEUDONYM_KEY is shorter than 16 characters", fix="set it to a long random string (openssl rand -hex 32)")
            return env.encode("utf-8")
        return read_or_make_secret(self.root / PSEUDONYM_KEY_FILE).encode("utf-8")


def read_or_make_secret(path: Path) -> str:
    """A secret kept in ``path``: made once (64 hex digits, mode 0600) and read back afterwards."""
    import secrets

    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    secret = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secret + "\n")
    return secret


def read_config(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TetherError(f"{path} is not valid TOML: {exc}", fix=f"correct the file or remove it and run `tether init {path.parent}`") from None


def load_workspace(root: Path) -> Workspace:
    """The workspace in the folder ``root`` (no search): a clear error when it holds no ``tether.toml``."""
    root = Path(root).expanduser().resolve()
    if not (root / CONFIG_NAME).is_file():
        raise TetherError(f"{root} is not a Tether workspace (no {CONFIG_NAME})", fix=f"run `tether init {root}`")
    return Workspace(root=root, config=read_config(root / CONFIG_NAME))


def init_workspace(root: Path) -> Workspace:
    """Create (or complete) a workspace in ``root`` and bring its database schema up to date."""
    from tether.store.db import upgrade

    root = root.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise TetherError(f"{root} exists and is not a folder", fix="choose another path for the workspace")
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / CONFIG_NAME
    if not config_path.exists():
        config_path.write_text(DEFAULT_TOML, encoding="utf-8")
    ws = Workspace(root=root, config=read_config(config_path))
    for folder in (ws.artifacts, ws.snapshots_dir, ws.models_dir, ws.reports_dir):
        folder.mkdir(parents=True, exist_ok=True)
    upgrade(ws.database_url)
    return ws


def configure_mlflow(root: Path) -> Any:
    """Point MLflow at the workspace's store (SQLite ``mlflow.db``, artifacts under ``artifacts/mlruns``).

    Returns the ``mlflow`` module with the experiment "tether" selected. Importing MLflow takes a second or two, so
    only commands that track or register call this.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import logging

    import mlflow

    # MLflow announces its own table migrations at INFO on every first use; keep the CLI's output to our messages.
    logging.getLogger("mlflow").setLevel(logging.WARNING)

    mlflow.set_tracking_uri(f"sqlite:///{Path(root) / 'mlflow.db'}")
    if mlflow.get_experiment_by_name("tether") is None:
        mlflow.create_experiment("tether", artifact_location=(Path(root) / "artifacts" / "mlruns").as_uri())
    mlflow.set_experiment("tether")
    return mlflow
