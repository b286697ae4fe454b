"""The model registry: versions, aliases, evaluation figures, approvals, promotion gates and lineage.

Built on MLflow's model registry with the workspace's SQLite tracking store (``mlflow.db``; ``mlflow ui
--backend-store-uri sqlite:///mlflow.db`` browses it). A registered version is a copy of the model folder logged as
the artifact ``model/`` of an MLflow run, with tags:

- ``tether.kind`` (``reward`` or ``policy``), ``tether.base_model``, ``tether.parent`` (the version it was trained
  against: a policy's reward model) and ``tether.parents`` (every registered model it came from, with its role),
  ``tether.snapshot`` and ``tether.snapshot_digest`` (the frozen judgments), ``tether.lineage`` (the lineage in the
  model's own tether.json), ``tether.fingerprint`` (sha256 of that tether.json), ``tether.config`` (the training
  config as JSON), ``tether.source_dir``;
- ``eval.<figure>`` for each evaluation figure (``eval.win_rate``, ``eval.violation_rate``, ``eval.kl``, ...);
- ``tether.approved_by`` / ``tether.approved_at`` and ``tether.promoted_by`` / ``tether.promoted_at``.

Versions are named ``NAME/N`` (or ``NAME@alias``, or ``NAME`` for the latest). New versions get the alias
``candidate``. Promotion to ``champion`` requires (1) every gate of ``tether.toml [gates]`` to pass on the version's
evaluation figures (``min_X``: ``eval.X >= value``, ``max_X``: ``eval.X <= value``; gates apply to policies,
``[gates.reward]`` to reward models) and (2) an approval by a user whose role is ``admin`` in the store. Approvals
and promotions are audit events in the store as well as tags, and promotion reads the approval from the store.

Lineage comes from the model's own metadata. A trainer writes into tether.json the snapshot its data came from and
the Tether models it started from or was trained against (base, reference, reward models: path, fingerprint,
their own lineage), so ``register`` knows the kind, the snapshot and the parents without being told, and refuses
a ``--kind``, ``--snapshot`` or ``--parent`` that contradicts them; one registered name holds one kind. A version
whose lineage reaches a snapshot marked as purged (tether.governance), directly or through a parent, is flagged by
``lineage`` and ``show`` and cannot be approved or promoted to champion.
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tether.errors import TetherError
from tether.models.hf import read_tether_meta
from tether.recipes.lineage import fingerprint, model_lineage
from tether.store.snapshots import snapshot_digest, snapshot_with_digest

KINDS = ("reward", "policy")
# The registry kind of each tether.json kind (what the trainers write).
KIND_OF_META = {"reward": "reward", "policy": "policy", "sft": "policy", "dpo": "policy", "ipo": "policy", "cdpo": "policy", "kto": "policy"}
ALIASES = ("candidate", "champion")
_REF = re.compile(r"^(?:models:/)?(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:(?:/|:)(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_\-]+))?$")

LIMITS = {
    "reward": (
        "A reward model predicts which of two replies the annotators behind its snapshot would prefer; it inherits "
        "their blind spots and their noise. It is calibrated only on the distribution of replies it was trained on: "
        "scores of replies far from that distribution (longer, other topics, other languages) are unreliable, and a "
        "policy optimized against it will find and exploit its errors (reward hacking): watch the gold or human "
        "win-rate, not only the proxy reward."
    ),
    "policy": (
        "The policy was optimized against a learned reward model and rule checks; it is as good as their coverage. "
        "Rule checks catch only what their patterns describe (personal data formats, listed phrases). The evaluation "
        "figures come from sampled replies on held-out prompts of the same task: expect different figures on other "
        "prompts. Red-team refusal rates measure refusals, not the harm of what is not refused."
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# References and the MLflow client
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Registering
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Lineage in a model's own metadata
# ---------------------------------------------------------------------------------------------------------------


def upstream_snapshots(lineage_meta: dict[str, Any] | None, via: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every snapshot in a lineage tree: ``[{"name", "digest", "via": [paths of the models in between]}]``."""
    if not lineage_meta:
        return []
    out = []
    if lineage_meta.get("snapshot"):
        out.append({**lineage_meta["snapshot"], "via": list(via)})
    for item in lineage_meta.get("inputs") or []:
        out += upstream_snapshots(item, (*via, f"{item['role']} {item.get('path')}"))
    return out


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


# ---------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------


def model_card(ref: str, tags: dict[str, str]) -> str:
    """A markdown model card from a version's tags: data, method, metrics, limits, lineage."""
    kind = tags.get("tether.kind", "?")
    config = _json(tags.get("tether.config")) or {}
    data = _json(tags.get("tether.data")) or {}
    figures = _figures(tags)
    lines = [f"# Model card: {ref}", "", f"**Kind:** {kind} model.  **Registered:** {tags.get('tether.registered_at', '?')}", ""]
    lines += ["## Data", ""]
    if tags.get("tether.snapshot_digest"):
        lines.append(f"- Snapshot: `{tags.get('tether.snapshot', '?')}`, sha256 `{tags['tether.snapshot_digest']}`")
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} ({v})" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        lines.append(f"- {key.replace('_', ' ')}: {value}")
    if len(lines) and lines[-1] == "":
        lines.append("- (no data recorded)")
    lines += ["", "## Method", ""]
    if tags.get("tether.method"):
        lines.append(f"- {tags['tether.method']}")
    if tags.get("tether.base_model"):
        lines.append(f"- Base model: `{tags['tether.base_model']}`")
    if tags.get("tether.parent"):
        lines.append(f"- Trained against: `{tags['tether.parent']}`")
    shown = {k: v for k, v in config.items() if k in _CONFIG_SHOWN}
    if shown:
        lines.append("- Config: " + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    lines += ["", "## Evaluation", ""]
    if figures:
        lines += ["| figure | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in sorted(figures.items())]
    else:
        lines.append("No evaluation figures recorded yet (`tether eval policy ... --record VERSION`).")
    lines += ["", "## Limits", "", LIMITS.get(kind, ""), ""]
    if tags.get("tether.approved_by"):
        lines += ["## Governance", "", f"- Approved by {tags['tether.approved_by']} at {tags.get('tether.approved_at', '?')}"]
        if tags.get("tether.promoted_by"):
            lines.append(f"- Promoted to champion by {tags['tether.promoted_by']} at {tags.get('tether.promoted_at', '?')}")
        lines.append("")
    return "\n".join(lines)


_CONFIG_SHOWN = {
    "epochs", "max_steps", "batch_size", "learning_rate", "max_length", "seed", "lora_r", "group_size",
    "max_new_tokens", "kl_coef", "init_kl_coef", "temperature", "loss", "algorithm", "ensemble", "beta",
}


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


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
    regenerate the version's description and its ``model_card.md``. Returns the versions changed (tether.governance
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


# ---------------------------------------------------------------------------------------------------------------
# Gates, approvals, promotion
# ---------------------------------------------------------------------------------------------------------------


class Gate:
    """One gate: ``figure`` compared with ``threshold`` (``op`` is ">=" or "<=")."""

    def __init__(self, key: str, figure: str, op: str, threshold: float, value: float | None):
        self.key, self.figure, self.op, self.threshold, self.value = key, figure, op, threshold, value

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    def reason(self) -> str:
        if self.value is None:
            return f"{self.key}: no evaluation figure '{self.figure}' recorded"
        return f"{self.key}: {self.figure} = {self.value:.4g}, needs {self.op} {self.threshold:g}"

    def as_dict(self) -> dict[str, Any]:
        return {"gate": self.key, "figure": self.figure, "op": self.op, "threshold": self.threshold, "value": self.value, "passed": self.passed}


def gates_for(ws: Any, kind: str) -> dict[str, float]:
    """The gates of ``tether.toml`` for a kind: ``[gates]`` for policies, ``[gates.reward]`` for reward models."""
    section = ws.section("gates")
    if kind == "reward":
        section = dict(section.get("reward", {}))
    return {k: v for k, v in section.items() if not isinstance(v, dict)}


def check_gates(gates: dict[str, float], figures: dict[str, float]) -> list[Gate]:
    """Each gate ``min_X`` / ``max_X`` against figure ``X``. Unknown gate names raise a TetherError."""
    out = []
    for key, threshold in sorted(gates.items()):
        if key.startswith("min_"):
            figure, op = key[4:], ">="
        elif key.startswith("max_"):
            figure, op = key[4:], "<="
        else:
            raise TetherError(f"tether.toml [gates]: {key!r} is not a gate name", fix="gates are named min_<figure> or max_<figure>, e.g. min_win_rate = 0.55")
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise TetherError(f"tether.toml [gates]: {key} = {threshold!r} is not a number", fix="write a number, e.g. 0.55") from None
        out.append(Gate(key, figure, op, threshold, figures.get(figure)))
    return out


def _admin(session: Any, name: str) -> Any:
    from sqlalchemy import select

    from tether.store.tables import User

    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise TetherError(f"no user named {name!r} in the store", fix="an admin approves: create one with the admin pages or `tether serve --create-admin`")
    if user.role != "admin" or not user.active:
        raise TetherError(f"{name!r} is not an active admin (role: {user.role})", fix="only a user with role admin can approve a model version")
    return user


PURGED_FIX = "retrain on a new snapshot of the data that remains (`tether data snapshot SET`) and register that model"


def approve(ws: Any, ref: str, *, admin: str, password: str | None = None, note: str = "") -> dict[str, Any]:
    """Record an admin's approval of a version (audit event ``registry.approve`` and tags).

    When the admin has a password in the store, ``password`` must match it. A version trained on purged data
    (``purge_problems``) is refused.
    """
    from tether.store.db import audit, session_scope

    client = _client(ws.root)
    mv = _resolve(client, ref)
    purged = purge_problems(ws, _ref(mv))
    if purged:
        _audit(ws, "registry.approve_refused", _ref(mv), admin=admin, reasons=purged)
        raise TetherError(f"cannot approve {_ref(mv)}:\n  - " + "\n  - ".join(purged), fix=PURGED_FIX)
    with session_scope(ws.database_url) as session:
        user = _admin(session, admin)
        if user.password_hash:
            if password is None:
                raise TetherError(f"approving as {admin!r} needs their password", fix="pass --password or set TETHER_PASSWORD")
            from argon2 import PasswordHasher
            from argon2.exceptions import InvalidHashError, VerificationError

            try:
                PasswordHasher().verify(user.password_hash, password)
            except (VerificationError, InvalidHashError):
                raise TetherError(f"wrong password for {admin!r}", fix="try again") from None
        at = _now()
        figures = _figures(dict(mv.tags))
        audit(session, "registry.approve", "model_version", _ref(mv), admin=admin, note=note, figures=figures)
    client.set_model_version_tag(mv.name, mv.version, "tether.approved_by", admin)
    client.set_model_version_tag(mv.name, mv.version, "tether.approved_at", at)
    if note:
        client.set_model_version_tag(mv.name, mv.version, "tether.approval_note", note[:2000])
    return {"version": _ref(mv), "approved_by": admin, "approved_at": at}


def approvals(ws: Any, ref: str) -> list[dict[str, Any]]:
    """The approvals of a version recorded in the store, oldest first, each by a user who is an admin now."""
    from sqlalchemy import select

    from tether.store.db import session_scope
    from tether.store.tables import AuditEvent, User

    with session_scope(ws.database_url) as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "registry.approve", AuditEvent.object_id == ref).order_by(AuditEvent.id)
        ).all()
        admins = set(session.scalars(select(User.name).where(User.role == "admin", User.active.is_(True))).all())
        return [{"admin": e.detail.get("admin"), "at": e.at.isoformat(), "note": e.detail.get("note", "")} for e in events if e.detail.get("admin") in admins]


def promote(ws: Any, ref: str, *, alias: str = "champion") -> dict[str, Any]:
    """Move ``alias`` to a version. ``champion`` needs every gate to pass and an admin's approval in the store;
    otherwise a TetherError lists each reason. Returns ``show()`` of the version."""
    client = _client(ws.root)
    mv = _resolve(client, ref)
    tags = dict(mv.tags)
    version_ref = _ref(mv)
    if alias == "champion":
        purged = purge_problems(ws, version_ref)
        problems = purged + [g.reason() for g in check_gates(gates_for(ws, tags.get("tether.kind", "?")), _figures(tags)) if not g.passed]
        if not purged and not approvals(ws, version_ref):
            problems.append(f"no approval by an admin (run `tether registry approve {version_ref} --admin NAME`)")
        if problems:
            _audit(ws, "registry.promote_refused", version_ref, alias=alias, reasons=problems)
            raise TetherError(
                f"cannot promote {version_ref} to champion:\n  - " + "\n  - ".join(problems),
                fix=PURGED_FIX if purged else "record evaluation figures that pass the gates in tether.toml [gates] and get an admin's approval",
            )
    client.set_registered_model_alias(mv.name, alias, mv.version)
    by = _actor()
    if alias == "champion":
        client.set_model_version_tag(mv.name, mv.version, "tether.promoted_by", by)
        client.set_model_version_tag(mv.name, mv.version, "tether.promoted_at", _now())
    _audit(ws, "registry.promote", version_ref, alias=alias)
    mv = client.get_model_version(mv.name, mv.version)
    client.update_model_version(mv.name, mv.version, description=model_card(version_ref, dict(mv.tags))[:4900])
    return show(ws, version_ref)


def _actor() -> str:
    from tether.store.db import actor

    return actor()


# ---------------------------------------------------------------------------------------------------------------
# Lineage
# ---------------------------------------------------------------------------------------------------------------


def lineage(ws: Any, ref: str) -> dict[str, Any]:
    """Walk from a version to the judgments behind it: the models it came from (registered parents, and model
    folders its metadata records that are not registered), the snapshot each was trained on, the judgments used.

    Returns ``{"version", "chain": [step, ...], "snapshot_digest", "judgments", "purged", "purges"}``. Each step
    has a ``type`` (model_version, model_dir, missing, snapshot, judgments) and a ``depth`` (0: the version; a
    step's sources are the deeper steps after it). Model steps carry ``purged_data`` (a snapshot below was marked
    purged); ``purges`` lists each such snapshot with its note and the models in between. ``snapshot_digest`` and
    ``judgments`` are those of the first snapshot reached through a reward model (a policy's preference data),
    else of the first snapshot.
    """
    from tether.store.db import session_scope

    client = _client(ws.root)
    mv = _resolve(client, ref)
    with session_scope(ws.database_url, readonly=True) as session:
        return _lineage_of(client, session, mv, _versions_by_fingerprint(client))


def _lineage_of(client: Any, session: Any, mv: Any, by_fp: dict[str, str]) -> dict[str, Any]:
    chain: list[dict[str, Any]] = []
    _walk_version(client, session, mv, 0, chain, by_fp, set())
    purges = []
    for i, step in enumerate(chain):
        if step["type"] not in ("model_version", "model_dir"):
            continue
        below = _subtree(chain, i)
        step["purged_data"] = any(s["type"] == "snapshot" and s.get("purged") for s in below)
        if step["depth"] == 0:
            for j, snap in enumerate(below):
                if snap["type"] == "snapshot" and snap.get("purged"):
                    via = [s.get("version") or s.get("path") for s in _path_to(chain, i + 1 + j)][1:-1]
                    purges.append({"snapshot": snap.get("name"), "digest": snap["digest"], "purged_at": snap.get("purged_at"),
                                   "note": snap.get("purge_note"), "via": via})
    snaps = [k for k, s in enumerate(chain) if s["type"] == "snapshot"]
    main = next((k for k in snaps if _path_to(chain, k)[-2].get("kind") == "reward"), snaps[0] if snaps else None)
    result: dict[str, Any] = {"version": chain[0]["version"], "chain": chain, "snapshot_digest": chain[main]["digest"] if main is not None else None,
                              "purged": bool(purges), "purges": purges}
    if main is not None:
        result["judgments"] = chain[main + 1] if main + 1 < len(chain) and chain[main + 1]["type"] == "judgments" else None
    return result


def _subtree(chain: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    """The steps below step ``i`` (up to the next step at its depth or above)."""
    out = []
    for step in chain[i + 1 :]:
        if step["depth"] <= chain[i]["depth"]:
            break
        out.append(step)
    return out


def _path_to(chain: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The steps from the top down to step ``k``: each one's nearest shallower step before it."""
    path = [chain[k]]
    for step in reversed(chain[:k]):
        if step["depth"] < path[0]["depth"]:
            path.insert(0, step)
    return path


def _walk_version(client: Any, session: Any, mv: Any, depth: int, chain: list[dict[str, Any]], by_fp: dict[str, str], seen: set[str]) -> None:
    """Append a registered version, its snapshot (with its judgments) and its sources to ``chain``."""
    seen.add(_ref(mv))
    tags = dict(mv.tags)
    chain.append({
        "type": "model_version", "depth": depth, "version": _ref(mv), "kind": tags.get("tether.kind"),
        "base_model": tags.get("tether.base_model"), "parent": tags.get("tether.parent"),
        "snapshot_digest": tags.get("tether.snapshot_digest"), "figures": _figures(tags),
        "lineage_from": tags.get("tether.lineage_from", "flags"),
    })
    if tags.get("tether.snapshot_digest") or tags.get("tether.snapshot"):
        _append_snapshot(session, tags.get("tether.snapshot"), tags.get("tether.snapshot_digest"), depth + 1, chain)
    parents = _json(tags.get("tether.parents")) or ([{"version": tags["tether.parent"], "role": "reward"}] if tags.get("tether.parent") else [])
    registered = {p["version"] for p in parents}
    for item in (_json(tags.get("tether.lineage")) or {}).get("inputs") or []:
        if by_fp.get(item.get("fingerprint") or "") not in registered:
            _walk_input(client, session, item, depth + 1, chain, by_fp, seen)
    for p in parents:
        if p["version"] in seen:
            continue
        try:
            parent = _resolve(client, p["version"])
        except TetherError:
            chain.append({"type": "missing", "depth": depth + 1, "version": p["version"]})
            continue
        _walk_version(client, session, parent, depth + 1, chain, by_fp, seen)


def _walk_input(client: Any, session: Any, item: dict[str, Any], depth: int, chain: list[dict[str, Any]], by_fp: dict[str, str], seen: set[str]) -> None:
    """A model folder a version's metadata records: the registered version when there is one, else the folder."""
    version = by_fp.get(item.get("fingerprint") or "")
    if version:
        if version not in seen:
            _walk_version(client, session, _resolve(client, version), depth, chain, by_fp, seen)
        return
    chain.append({"type": "model_dir", "depth": depth, "role": item["role"], "path": item.get("path"), "kind": item.get("kind")})
    snapshot = item.get("snapshot") or {}
    if snapshot.get("name") or snapshot.get("digest"):
        _append_snapshot(session, snapshot.get("name"), snapshot.get("digest"), depth + 1, chain)
    for sub in item.get("inputs") or []:
        _walk_input(client, session, sub, depth + 1, chain, by_fp, seen)


def _append_snapshot(session: Any, name: str | None, digest: str | None, depth: int, chain: list[dict[str, Any]]) -> None:
    """A snapshot step (looked up by name, else by digest) and the step of the judgments behind it."""
    from sqlalchemy import select

    from tether.store.tables import Snapshot

    snap = session.scalar(select(Snapshot).where(Snapshot.name == name)) if name else None
    if snap is None or (digest and snap.digest != digest):
        snap = session.scalar(select(Snapshot).where(Snapshot.digest == digest).order_by(Snapshot.id).limit(1)) if digest else None
    if snap is None:
        chain.append({"type": "snapshot", "depth": depth, "digest": digest, "name": name, "found": False, "purged": False})
        return
    chain.append({
        "type": "snapshot", "depth": depth, "found": True, "name": snap.name, "digest": snap.digest, "rows": snap.row_count,
        "aggregate": snap.aggregate, "filters": snap.filters, "counts": snap.counts,
        "created_at": snap.created_at.isoformat() if snap.created_at else None, "purged": snap.purged_at is not None,
        "purged_at": snap.purged_at.isoformat() if snap.purged_at else None, "purge_note": snap.purge_note,
    })
    judgments = _judgments_behind(session, snap)
    if judgments:
        chain.append({**judgments, "depth": depth + 1})


def _judgments_behind(session: Any, snap: Any) -> dict[str, Any] | None:
    """Who judged what a snapshot used: its recorded judgments that remain (by annotator) and how many were
    purged since. For a snapshot that predates that record, the judgments its set holds now."""
    from sqlalchemy import func, select

    from tether.store.tables import Item, Judgment, Project, SnapshotJudgment, User

    if snap.project_id is None:
        return None
    project = session.get(Project, snap.project_id)
    if snap.judgments_recorded:
        scope = Judgment.id.in_(select(SnapshotJudgment.judgment_id).where(SnapshotJudgment.snapshot_id == snap.id))
    else:
        superseded = select(Judgment.supersedes_id).where(Judgment.supersedes_id.is_not(None))
        scope = Judgment.item_id.in_(select(Item.id).where(Item.project_id == snap.project_id)) & Judgment.id.not_in(superseded)
    rows = session.execute(
        select(User.name, func.count(Judgment.id)).join(User, User.id == Judgment.user_id).where(scope).group_by(User.name).order_by(User.name)
    ).all()
    sources = session.execute(select(Judgment.source, func.count(Judgment.id)).where(scope).group_by(Judgment.source)).all()
    remaining = int(sum(r[1] for r in rows))
    used = snap.counts.get("judgments")
    excluded = sorted(set(snap.filters.get("exclude_annotators") or []) | set(snap.qc.get("qc/excluded_annotators") or snap.qc.get("excluded_annotators") or []))
    flagged = snap.qc.get("qc/flagged") or snap.qc.get("flagged") or {}
    return {
        "type": "judgments",
        "project": project.name if project else None,
        "recorded": bool(snap.judgments_recorded),
        "count": remaining,
        "used": used,
        "purged": (used - remaining) if snap.judgments_recorded and used is not None else None,
        "excluded_judgments": snap.counts.get("excluded_judgments", 0),
        "annotators": {r[0]: int(r[1]) for r in rows},
        "sources": {r[0]: int(r[1]) for r in sources},
        "excluded": excluded,
        "flagged": sorted(flagged) if isinstance(flagged, (dict, list)) else [],
    }


def purge_problems(ws: Any, ref: str) -> list[str]:
    """One line per purged snapshot a version rests on (directly or through the models it came from)."""
    info = lineage(ws, ref)
    lines = []
    for p in info["purges"]:
        through = f" through {', '.join(p['via'])}" if p["via"] else ""
        lines.append(f"{info['version']} was trained{through} on snapshot {p['snapshot'] or p['digest'][:12]}, built from purged data "
                     f"({p['note'] or 'purged'}; marked {str(p['purged_at'])[:10]})")
    return lines


def password_from_env() -> str | None:
    return os.environ.get("TETHER_PASSWORD")
