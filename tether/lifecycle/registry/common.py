"""What the registry's modules share: version references, the MLflow client of a workspace, audit events, the
evaluation figures of a version's tags, the lookup of versions by fingerprint or folder."""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tether.errors import TetherError

KINDS = ("reward", "policy")


# The registry kind of each tether.json kind (what the trainers write).
KIND_OF_META = {"reward": "reward", "policy": "policy", "sft": "policy", "dpo": "policy", "ipo": "policy", "cdpo": "policy", "kto": "policy"}


ALIASES = ("candidate", "champion")


_REF = re.compile(r"^(?:models:/)?(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:(?:/|:)(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_\-]+))?$")


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME/N`` -> (name, "N", None); ``NAME@alias`` -> (name, None, alias); ``NAME`` -> (name, None, None)."""
    match = _REF.match(ref.strip())
    if not match:
        raise TetherError(f"not a model version: {ref!r}", fix="write NAME/VERSION (support-policy/2), NAME@ALIAS (support-policy@champion) or NAME")
    return match["name"], match["version"], match["alias"]


def _client(root: Path) -> Any:
    from tether.store.workspace import configure_mlflow

    configure_mlflow(root)
    from mlflow import MlflowClient

    return MlflowClient()


def _resolve(client: Any, ref: str) -> Any:
    """The ModelVersion that ``ref`` names; a clear error when it does not exist."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_ref(ref)
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none yet"
        raise TetherError(f"no registered model named {name!r} (registered: {known})", fix="see `tether registry list`") from None
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version:
            return client.get_model_version(name, version)
    except MlflowException:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise TetherError(f"{name} has no {what}", fix=f"see `tether registry show {name}`") from None
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise TetherError(f"{name} has no versions", fix="register one first")
    return max(versions, key=lambda v: int(v.version))


def _ref(mv: Any) -> str:
    return f"{mv.name}/{mv.version}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _audit(ws: Any, action: str, object_id: str, **detail: Any) -> None:
    from tether.store.db import audit, session_scope

    with session_scope(ws.database_url) as session:
        audit(session, action, "model_version", object_id, **detail)


def _figures(tags: dict[str, str]) -> dict[str, float]:
    out = {}
    for key, value in tags.items():
        if key.startswith("eval."):
            try:
                out[key[5:]] = float(value)
            except ValueError:
                continue
    return out


def _flat(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _actor() -> str:
    from tether.store.db import actor

    return actor()


def password_from_env() -> str | None:
    return os.environ.get("TETHER_PASSWORD")


def _versions_by_fingerprint(client: Any) -> dict[str, str]:
    """``{tether.fingerprint: "NAME/N"}`` over every registered version (the oldest with a fingerprint wins)."""
    out: dict[str, str] = {}
    for mv in sorted(client.search_model_versions(), key=lambda v: (v.name, int(v.version))):
        fp = mv.tags.get("tether.fingerprint")
        if fp and fp not in out:
            out[fp] = _ref(mv)
    return out


def _version_by_source(client: Any, path: str | None) -> str | None:
    if not path:
        return None
    for mv in client.search_model_versions():
        if mv.tags.get("tether.source_dir") == path:
            return _ref(mv)
    return None
