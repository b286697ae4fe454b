"""Lineage in a model's own metadata: the snapshot a run read and the Tether models it came from, written into the
``tether.json`` of every model a trainer saves (tether.recipes.runtime.save_model_dir), and read back by the
registry (tether.lifecycle.registry) to walk a model back to the human judgments behind it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tether.errors import TetherError
from tether.models.hf import TETHER_META, read_tether_meta

# The models a training run starts from or is trained against: (role, config field).
INPUT_FIELDS = (("base", "model"), ("reference", "reference_model"), ("reward", "reward"))


def fingerprint(model_dir: Path) -> str | None:
    """sha256 of a model folder's tether.json (config, metrics, lineage: one run's), or None without one."""
    path = Path(model_dir) / TETHER_META
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def model_lineage(config: dict[str, Any], *, workspace: Any = None, _seen: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The ``lineage`` a trainer writes into tether.json, from its config: ``{"snapshot": {"name", "digest"} | None,
    "inputs": [{"role", "path", "fingerprint", "kind", "snapshot", "inputs"}]}``.

    ``snapshot``: the snapshot its data (or prompts) came from, with the digest ``workspace``'s store holds for it
    (None without a workspace). ``inputs``: the Tether models (folders with a tether.json) it started from
    (``base``), kept near (``reference``) or was trained against (``reward``), each with the lineage written in it
    (computed from its config when it has none).
    """
    source = config.get("data") or config.get("prompts")
    snapshot = None
    if isinstance(source, str) and source.startswith("snapshot:"):
        name = source.split(":", 1)[1]
        snapshot = {"name": name, "digest": _digest_now(name, workspace)}
    inputs = []
    for role, key in INPUT_FIELDS:
        values = config.get(key)
        values = values if isinstance(values, list) else [values]
        if role == "reward":  # SPECs: DIR, DIR@W, DIR:ASPECT=W,..., ensemble:DIRS (rules: and py: are no models)
            values = [folder for value in values if isinstance(value, str) for folder in _reward_folders(value)]
        for value in values:
            if not isinstance(value, str) or value.startswith("rules:") or not (Path(value) / TETHER_META).is_file():
                continue
            path = str(Path(value).resolve())
            if path in _seen:  # trained into its own starting folder: the old run's metadata, no deeper
                continue
            meta = read_tether_meta(value)
            upstream = meta.get("lineage") or model_lineage(meta.get("config") or {}, workspace=workspace, _seen=_seen | {path})
            inputs.append({"role": role, "path": path, "fingerprint": fingerprint(Path(value)), "kind": meta.get("kind"),
                           "snapshot": upstream.get("snapshot"), "inputs": upstream.get("inputs") or []})
    return {"snapshot": snapshot, "inputs": inputs}


def _reward_folders(spec: str) -> list[str]:
    """The reward-model folders a ``--reward`` SPEC names: one, an ensemble's members, or none (rules, Python
    functions, a SPEC that does not parse)."""
    from tether.recipes.reward_specs import member_folders, parse_spec

    try:
        parsed = parse_spec(spec)
    except TetherError:
        return []
    if parsed.kind == "ensemble":
        return [str(m) for folder in parsed.members for m in member_folders(folder)]
    return [str(parsed.path)] if parsed.kind == "model" else []


def _digest_now(name: str, workspace: Any) -> str | None:
    """The digest ``workspace``'s store holds for snapshot ``name`` (None without a workspace or such a snapshot)."""
    if workspace is None:
        return None
    from tether.store.snapshots import snapshot_digest

    try:
        return snapshot_digest(workspace.database_url, name)
    except Exception:  # metadata is best effort: a model is saved even when the store cannot be read
        return None
