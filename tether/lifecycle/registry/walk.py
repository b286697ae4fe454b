"""Walking a registered version back to the human judgments behind it: its parents, the snapshots they read, the
judgments those used (and how many were purged since)."""

from __future__ import annotations

from typing import Any

from tether.errors import TetherError
from tether.lifecycle.registry.common import (
    _client,
    _figures,
    _json,
    _ref,
    _resolve,
    _versions_by_fingerprint,
)


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
