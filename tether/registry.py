"""The model registry: versions, aliases, evaluation figures, approvals, promotion gates and lineage.

Built on MLflow's model registry with the workspace's SQLite tracking store (``mlflow.db``; ``mlflow ui
--backend-store-uri sqlite:///mlflow.db`` browses it). A registered version is a copy of the model folder logged as
the artifact ``model/`` of an MLflow run, with tags:

- ``tether.kind`` (``reward`` or ``policy``), ``tether.base_model``, ``tether.parent`` (the version it was trained
  against: a policy's reward model), ``tether.snapshot`` and ``tether.snapshot_digest`` (the frozen judgments),
  ``tether.config`` (the training config as JSON), ``tether.source_dir``;
- ``eval.<figure>`` for each evaluation figure (``eval.win_rate``, ``eval.violation_rate``, ``eval.kl``, ...);
- ``tether.approved_by`` / ``tether.approved_at`` and ``tether.promoted_by`` / ``tether.promoted_at``.

Versions are named ``NAME/N`` (or ``NAME@alias``, or ``NAME`` for the latest). New versions get the alias
``candidate``. Promotion to ``champion`` requires (1) every gate of ``tether.toml [gates]`` to pass on the version's
evaluation figures (``min_X``: ``eval.X >= value``, ``max_X``: ``eval.X <= value``; gates apply to policies,
``[gates.reward]`` to reward models) and (2) an approval by a user whose role is ``admin`` in the store. Approvals
and promotions are audit events in the store as well as tags, and promotion reads the approval from the store.
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

KINDS = ("reward", "policy")
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
    from tether.workspace import configure_mlflow

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
    kind: str,
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

    The folder is copied into the MLflow artifact store (the version's ``source``) so later changes to
    ``model_dir`` never alter a registered version. ``metrics`` become ``eval.*`` tags; a model card is generated
    from the rest and stored beside the model (``model_card.md``) and as the version's description.
    """
    from mlflow.exceptions import MlflowException

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid: {KINDS}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TetherError(f"model folder not found: {model_dir}", fix="pass the output folder of a `tether train` command")
    parse_ref(name)
    meta = _read_meta(model_dir)
    config = config if config is not None else meta.get("config", {})
    base_model = base_model or meta.get("base_model")
    snapshot_digest = snapshot_digest or meta.get("data_digest")
    client = _client(ws.root)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"tether.kind": kind})
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
    }
    for key, value in (("tether.base_model", base_model), ("tether.parent", parent), ("tether.snapshot", snapshot_name), ("tether.snapshot_digest", snapshot_digest)):
        if value:
            tags[key] = str(value)
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


def record_eval(ws: Any, ref: str, figures: dict[str, float]) -> dict[str, float]:
    """Attach evaluation figures to a version (``eval.*`` tags, replacing earlier values); refreshes its card."""
    client = _client(ws.root)
    mv = _resolve(client, ref)
    clean = {k: float(v) for k, v in figures.items() if _finite(v)}
    for key, value in clean.items():
        client.set_model_version_tag(mv.name, mv.version, f"eval.{key}", repr(value))
    mv = client.get_model_version(mv.name, mv.version)
    client.update_model_version(mv.name, mv.version, description=model_card(_ref(mv), dict(mv.tags))[:4900])
    _audit(ws, "registry.eval", _ref(mv), figures=clean)
    return _figures(dict(mv.tags))


def _read_meta(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "tether.json"
    return json.loads(path.read_text()) if path.exists() else {}


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
    """Every registered version, newest first per model: name, version, kind, aliases, figures."""
    client = _client(ws.root)
    out = []
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
                }
            )
    return out


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
        "approved_by": tags.get("tether.approved_by"),
        "card": model_card(_ref(mv), tags),
    }


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


def approve(ws: Any, ref: str, *, admin: str, password: str | None = None, note: str = "") -> dict[str, Any]:
    """Record an admin's approval of a version (audit event ``registry.approve`` and tags).

    When the admin has a password in the store, ``password`` must match it.
    """
    from tether.store.db import audit, session_scope

    client = _client(ws.root)
    mv = _resolve(client, ref)
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
        problems = [g.reason() for g in check_gates(gates_for(ws, tags.get("tether.kind", "?")), _figures(tags)) if not g.passed]
        if not approvals(ws, version_ref):
            problems.append(f"no approval by an admin (run `tether registry approve {version_ref} --admin NAME`)")
        if problems:
            _audit(ws, "registry.promote_refused", version_ref, alias=alias, reasons=problems)
            raise TetherError(
                f"cannot promote {version_ref} to champion:\n  - " + "\n  - ".join(problems),
                fix="record evaluation figures that pass the gates in tether.toml [gates] and get an admin's approval",
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
    """Walk from a version to the judgments behind it: policy -> reward model -> snapshot -> judgments.

    Returns ``{"version", "chain": [step, ...], "snapshot_digest", "judgments"}``; each step is a dict with its
    ``type`` (model_version, snapshot, judgments).
    """
    client = _client(ws.root)
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    mv = _resolve(client, ref)
    digest = None
    snapshot_name = None
    while mv is not None and _ref(mv) not in seen:
        seen.add(_ref(mv))
        tags = dict(mv.tags)
        chain.append(
            {
                "type": "model_version",
                "version": _ref(mv),
                "kind": tags.get("tether.kind"),
                "base_model": tags.get("tether.base_model"),
                "parent": tags.get("tether.parent"),
                "snapshot_digest": tags.get("tether.snapshot_digest"),
                "figures": _figures(tags),
            }
        )
        digest = digest or tags.get("tether.snapshot_digest")
        snapshot_name = snapshot_name or tags.get("tether.snapshot")
        parent = tags.get("tether.parent")
        if tags.get("tether.kind") == "reward" and tags.get("tether.snapshot_digest"):
            digest = tags["tether.snapshot_digest"]
            snapshot_name = tags.get("tether.snapshot")
        mv = None
        if parent:
            try:
                mv = _resolve(client, parent)
            except TetherError:
                chain.append({"type": "missing", "version": parent})
    result: dict[str, Any] = {"version": chain[0]["version"], "chain": chain, "snapshot_digest": digest}
    if digest:
        snap, judgments = _snapshot_and_judgments(ws, digest, snapshot_name)
        if snap:
            chain.append(snap)
        if judgments:
            chain.append(judgments)
        result["judgments"] = judgments
    return result


def _snapshot_and_judgments(ws: Any, digest: str, name: str | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The snapshot with ``digest`` in the store and a summary of the judgments behind it."""
    from sqlalchemy import func, select

    from tether.store.db import session_scope
    from tether.store.tables import Item, Judgment, Project, Snapshot, User

    with session_scope(ws.database_url) as session:
        query = select(Snapshot).where(Snapshot.digest == digest).order_by(Snapshot.id)
        snaps = session.scalars(query).all()
        if not snaps:
            return {"type": "snapshot", "digest": digest, "name": name, "found": False}, None
        snap = next((s for s in snaps if s.name == name), snaps[0])
        step = {
            "type": "snapshot",
            "found": True,
            "name": snap.name,
            "digest": snap.digest,
            "rows": snap.row_count,
            "aggregate": snap.aggregate,
            "filters": snap.filters,
            "counts": snap.counts,
            "created_at": snap.created_at.isoformat() if snap.created_at else None,
            "purged": snap.purged_at is not None,
        }
        if snap.project_id is None:
            return step, None
        project = session.get(Project, snap.project_id)
        superseded = select(Judgment.supersedes_id).where(Judgment.supersedes_id.is_not(None))
        base = (
            select(User.name, User.role, func.count(Judgment.id))
            .join(Item, Item.id == Judgment.item_id)
            .join(User, User.id == Judgment.user_id)
            .where(Item.project_id == snap.project_id, Judgment.id.not_in(superseded))
        )
        # Judgments are immutable, and all of a project's judgments at snapshot time are behind it (minus those its
        # filters left out). No time filter: clocks differ (simulated annotators stamp their own simulated time).
        rows = session.execute(base.group_by(User.name, User.role).order_by(User.name)).all()
        excluded_names = sorted(set(snap.filters.get("exclude_annotators") or []) | set(snap.qc.get("excluded_annotators") or []))
        flagged = snap.qc.get("flagged") or {}
        judgments = {
            "type": "judgments",
            "project": project.name if project else None,
            "count": int(sum(r[2] for r in rows)),
            "used": snap.counts.get("judgments"),
            "excluded_judgments": snap.counts.get("excluded_judgments", 0),
            "annotators": {r[0]: int(r[2]) for r in rows},
            "sources": {},
            "excluded": excluded_names,
            "flagged": sorted(flagged) if isinstance(flagged, (dict, list)) else [],
        }
        src_rows = session.execute(
            select(Judgment.source, func.count(Judgment.id))
            .join(Item, Item.id == Judgment.item_id)
            .where(Item.project_id == snap.project_id)
            .group_by(Judgment.source)
        ).all()
        judgments["sources"] = {r[0]: int(r[1]) for r in src_rows}
        return step, judgments


def password_from_env() -> str | None:
    return os.environ.get("TETHER_PASSWORD")
