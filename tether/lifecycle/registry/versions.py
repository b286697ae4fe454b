"""Registering a model folder as a version (kind, snapshot and parents from its own tether.json), evaluation
figures, listing and showing versions, and rewriting their tags after a purge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tether.errors import TetherError
from tether.lifecycle.registry.card import model_card
from tether.lifecycle.registry.common import (
    KIND_OF_META,
    KINDS,
    _audit,
    _client,
    _figures,
    _finite,
    _flat,
    _now,
    _ref,
    _resolve,
    _version_by_source,
    _versions_by_fingerprint,
    parse_ref,
)
from tether.lifecycle.registry.gates import check_gates, gates_for
from tether.lifecycle.registry.walk import _lineage_of, purge_problems
from tether.models.hf import read_tether_meta
from tether.recipes.lineage import fingerprint, model_lineage
from tether.store.snapshots import snapshot_digest, snapshot_with_digest


def register_model(
    ws: Any,
    model_dir: Path,
    *,
    name: str,
    kind: str | None = None,
    snapshot_name: str | None = None,
    snapshot_digest: str | None = None,
    parent: str | None = None,
    base_model: str | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    data_summary: dict[str, Any] | None = None,
    method: str = "",
    alias: str = "candidate",
) -> dict[str, Any]:
    """Register the model folder ``model_dir`` as a new version of ``name``; returns ``show()`` of it.

    The kind, the snapshot and the parents come from the folder's tether.json (see the module doc); ``kind``,
    ``snapshot_name`` / ``snapshot_digest`` and ``parent`` may only confirm them (a contradiction is a TetherError)
    or, for a folder without tether.json, state them. The folder is copied into the MLflow artifact store (the
    version's ``source``) so later changes to ``model_dir`` never alter a registered version. ``metrics`` become
    ``eval.*`` tags; a model card is generated from the rest and stored beside the model (``model_card.md``) and as
    the version's description.
    """
    from mlflow.exceptions import MlflowException

    if kind is not None and kind not in KINDS:
        raise TetherError(f"--kind {kind!r} is not one of {', '.join(KINDS)}", fix="use --kind reward or --kind policy")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TetherError(f"model folder not found: {model_dir}", fix="pass the output folder of a `tether train` command")
    parse_ref(name)
    meta = read_tether_meta(model_dir)
    kind = _checked_kind(model_dir, meta, kind)
    lineage_meta = (meta.get("lineage") or model_lineage(meta.get("config") or {}, workspace=ws)) if meta else None
    snapshot_name, snapshot_digest = _checked_snapshot(ws, model_dir, meta, lineage_meta, snapshot_name, snapshot_digest)
    config = config if config is not None else meta.get("config", {})
    base_model = base_model or meta.get("base_model")
    client = _client(ws.root)
    parents = _checked_parents(client, model_dir, lineage_meta, parent)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"tether.kind": kind})
    else:
        held = registered.tags.get("tether.kind") or next(
            (v.tags.get("tether.kind") for v in client.search_model_versions(f"name='{name}'") if v.tags.get("tether.kind")), None
        )
        if held and held != kind:
            raise TetherError(
                f"{name} holds {held} models; {model_dir} is a {kind} model",
                fix=f"register it under another name (one registered name holds one kind), e.g. --name {name}-{kind}",
            )
    experiment = client.get_experiment_by_name("tether")
    run = client.create_run(experiment.experiment_id, run_name=f"register {name}", tags={"tether.kind": kind})
    run_id = run.info.run_id
    client.log_artifacts(run_id, str(model_dir), "model")
    for key, value in _flat(config).items():
        client.log_param(run_id, key[:250], str(value)[:500])
    for key, value in (metrics or {}).items():
        if _finite(value):
            client.log_metric(run_id, f"eval/{key}", float(value))
    tags = {
        "tether.kind": kind,
        "tether.source_dir": str(model_dir.resolve()),
        "tether.registered_at": _now(),
        "tether.config": json.dumps(config, sort_keys=True, default=str)[:20000],
        "tether.lineage_from": "tether.json" if meta else "flags",
    }
    parent = parent or next((p["version"] for p in parents if p["role"] == "reward"), None)
    for key, value in (("tether.base_model", base_model), ("tether.parent", parent), ("tether.snapshot", snapshot_name), ("tether.snapshot_digest", snapshot_digest)):
        if value:
            tags[key] = str(value)
    if parents:
        tags["tether.parents"] = json.dumps(parents, sort_keys=True)
    if lineage_meta:
        tags["tether.lineage"] = json.dumps(lineage_meta, sort_keys=True, default=str)[:20000]
    fp = fingerprint(model_dir)
    if fp:
        tags["tether.fingerprint"] = fp
    if meta.get("data_digest"):
        tags["tether.data_digest"] = str(meta["data_digest"])
    if data_summary:
        tags["tether.data"] = json.dumps(data_summary, sort_keys=True, default=str)[:20000]
    if method:
        tags["tether.method"] = method
    for key, value in (metrics or {}).items():
        if _finite(value):
            tags[f"eval.{key}"] = repr(float(value))
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags)
    card = model_card(_ref(mv), tags)
    client.log_text(run_id, card, "model_card.md")
    client.update_model_version(name, mv.version, description=card[:4900])
    client.set_terminated(run_id)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    _audit(ws, "registry.register", _ref(mv), kind=kind, snapshot_digest=snapshot_digest, parent=parent, alias=alias)
    return show(ws, _ref(mv))


def _checked_kind(model_dir: Path, meta: dict[str, Any], kind: str | None) -> str:
    """The registry kind of a folder: its tether.json's; ``kind`` may confirm it (or state it without tether.json)."""
    written = meta.get("kind")
    declared = KIND_OF_META.get(written) if written else None
    if written and declared is None:
        raise TetherError(f"{model_dir}/tether.json has an unknown kind {written!r}", fix=f"known kinds: {', '.join(sorted(KIND_OF_META))}")
    if declared and kind and kind != declared:
        raise TetherError(
            f"{model_dir} is a {declared} model (its tether.json says kind {written!r}); --kind {kind} contradicts it",
            fix=f"leave --kind out (or pass --kind {declared})",
        )
    if not (declared or kind):
        raise TetherError(f"{model_dir} has no tether.json saying what it is", fix="pass --kind reward or --kind policy")
    return declared or kind  # type: ignore[return-value]


def _checked_snapshot(
    ws: Any, model_dir: Path, meta: dict[str, Any], lineage_meta: dict[str, Any] | None, name: str | None, digest: str | None
) -> tuple[str | None, str | None]:
    """``(snapshot name, digest)`` the folder was trained on, from its metadata; given ones must agree with it."""
    if name is not None and digest is None:
        digest = snapshot_digest(ws.database_url, name)
        if digest is None:
            raise TetherError(f"no snapshot named {name!r}", fix="see `tether data list`")
    own = (lineage_meta or {}).get("snapshot") or {}
    data_digest = meta.get("data_digest")
    if own.get("name"):
        known = own.get("digest") or snapshot_digest(ws.database_url, own["name"])
        if (name and name != own["name"]) or (digest and known and digest != known):
            raise TetherError(
                f"{model_dir} was trained on snapshot {own['name']!r} (its tether.json says so); "
                f"--snapshot {name or digest} contradicts it",
                fix="leave --snapshot out: the lineage comes from the model's own metadata",
            )
        return own["name"], known or digest
    if data_digest:
        if digest and digest != data_digest:
            raise TetherError(
                f"{model_dir} was trained on rows with sha256 {data_digest[:12]}... (its tether.json); "
                f"snapshot {name or '?'} has sha256 {digest[:12]}...",
                fix="leave --snapshot out, or name the snapshot whose rows it was trained on",
            )
        found = name or snapshot_with_digest(ws.database_url, data_digest)
        return (found, data_digest) if found else (None, None)  # rows from a file that is no snapshot
    return name, digest


def _checked_parents(client: Any, model_dir: Path, lineage_meta: dict[str, Any] | None, parent: str | None) -> list[dict[str, str]]:
    """The registered versions among the folder's recorded inputs (``[{"version", "role"}]``); ``parent``, when
    given, must be one of its inputs (or is taken as stated for a folder without recorded inputs)."""
    inputs = (lineage_meta or {}).get("inputs") or []
    by_fp = _versions_by_fingerprint(client) if inputs or parent else {}
    found = []
    for item in inputs:
        version = by_fp.get(item.get("fingerprint") or "") or _version_by_source(client, item.get("path"))
        if version:
            found.append({"version": version, "role": item["role"]})
    if parent:
        named = _ref(_resolve(client, parent))
        if inputs and named not in {p["version"] for p in found}:
            recorded = ", ".join(f"{i['role']} {i.get('path')}" for i in inputs)
            raise TetherError(
                f"{model_dir} was not trained from or against {named} (its tether.json records: {recorded})",
                fix="leave --parent out: the parents come from the model's own metadata",
            )
        if not inputs:
            found.append({"version": named, "role": "reward"})
    return found


def record_eval(ws: Any, ref: str, figures: dict[str, float | None]) -> dict[str, float]:
    """Attach evaluation figures to a version (``eval.*`` tags, replacing earlier values); refreshes its card. A
    figure given as None has no valid value this time: an earlier one is removed (a gate on it then fails)."""
    client = _client(ws.root)
    mv = _resolve(client, ref)
    clean = {k: float(v) for k, v in figures.items() if v is not None and _finite(v)}
    for key, value in clean.items():
        client.set_model_version_tag(mv.name, mv.version, f"eval.{key}", repr(value))
    for key in [k for k, v in figures.items() if v is None and f"eval.{k}" in mv.tags]:
        client.delete_model_version_tag(mv.name, mv.version, f"eval.{key}")
    mv = client.get_model_version(mv.name, mv.version)
    client.update_model_version(mv.name, mv.version, description=model_card(_ref(mv), dict(mv.tags))[:4900])
    _audit(ws, "registry.eval", _ref(mv), figures=clean)
    return _figures(dict(mv.tags))


def list_versions(ws: Any) -> list[dict[str, Any]]:
    """Every registered version, newest first per model: name, version, kind, aliases, figures, and whether it
    rests on purged data (``purged_data``)."""
    from tether.store.db import session_scope

    client = _client(ws.root)
    by_fp = _versions_by_fingerprint(client)
    out = []
    with session_scope(ws.database_url, readonly=True) as session:
        for model in sorted(client.search_registered_models(), key=lambda m: m.name):
            aliases = _aliases_by_version(model)
            for mv in sorted(client.search_model_versions(f"name='{model.name}'"), key=lambda v: -int(v.version)):
                tags = dict(mv.tags)
                out.append(
                    {
                        "version": _ref(mv),
                        "kind": tags.get("tether.kind", "?"),
                        "aliases": aliases.get(str(mv.version), []),
                        "figures": _figures(tags),
                        "approved_by": tags.get("tether.approved_by"),
                        "registered_at": tags.get("tether.registered_at"),
                        "purged_data": _lineage_of(client, session, mv, by_fp)["purged"],
                    }
                )
    return out


def versions_resting_on(ws: Any, snapshot_names: list[str]) -> list[str]:
    """The registered versions whose lineage reaches one of these snapshots (directly or through their sources)."""
    from tether.store.db import session_scope

    wanted = set(snapshot_names)
    client = _client(ws.root)
    by_fp = _versions_by_fingerprint(client)
    with session_scope(ws.database_url, readonly=True) as session:
        return [
            _ref(mv) for mv in sorted(client.search_model_versions(), key=lambda v: (v.name, int(v.version)))
            if any(s["type"] == "snapshot" and s.get("name") in wanted for s in _lineage_of(client, session, mv, by_fp)["chain"])
        ]


def _aliases_by_version(model: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        out.setdefault(str(version), []).append(alias)
    return {k: sorted(v) for k, v in out.items()}


def show(ws: Any, ref: str) -> dict[str, Any]:
    """One version: its tags, aliases, figures, source, model card and the gates' verdict."""
    client = _client(ws.root)
    mv = _resolve(client, ref)
    tags = dict(mv.tags)
    model = client.get_registered_model(mv.name)
    kind = tags.get("tether.kind", "?")
    return {
        "version": _ref(mv),
        "name": mv.name,
        "number": int(mv.version),
        "kind": kind,
        "aliases": _aliases_by_version(model).get(str(mv.version), []),
        "source": mv.source,
        "run_id": mv.run_id,
        "tags": tags,
        "figures": _figures(tags),
        "gates": [g.as_dict() for g in check_gates(gates_for(ws, kind), _figures(tags))],
        "purged_data": purge_problems(ws, _ref(mv)),
        "approved_by": tags.get("tether.approved_by"),
        "card": model_card(_ref(mv), tags),
    }


def scrub_registry(ws: Any, rewrite: Any, *, dry_run: bool = False) -> list[str]:
    """Apply ``rewrite`` (tags -> tags) to every version's tags; where it changes them, write the new tags and
    regenerate the version's description and its ``model_card.md``. Returns the versions changed (tether.lifecycle.governance
    uses it to take a purged person's name out of the registry)."""
    client = _client(ws.root)
    changed = []
    for mv in sorted(client.search_model_versions(), key=lambda v: (v.name, int(v.version))):
        tags = dict(mv.tags)
        new = rewrite(tags)
        if new == tags:
            continue
        changed.append(_ref(mv))
        if dry_run:
            continue
        for key, value in new.items():
            if tags.get(key) != value:
                client.set_model_version_tag(mv.name, mv.version, key, value)
        card = model_card(_ref(mv), new)
        client.update_model_version(mv.name, mv.version, description=card[:4900])
        if mv.run_id:
            client.log_text(mv.run_id, card, "model_card.md")
    return changed


def local_path(ws: Any, ref: str) -> Path:
    """The folder of a registered version's model files (inside the workspace's artifact store)."""
    from urllib.parse import unquote, urlparse

    client = _client(ws.root)
    mv = _resolve(client, ref)
    parsed = urlparse(mv.source)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(mv.source)
