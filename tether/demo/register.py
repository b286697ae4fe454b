"""The demo's registry stage: both models registered with lineage, the policy approved by the demo's admin and
promoted when the gates pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tether.errors import TetherError

REWARD_NAME = "support-reward"
POLICY_NAME = "support-policy"
ADMIN = "demo-admin"


def stage_register(ws: Any, rm_dir: Path, policy_dir: Path, sft_dir: Path, snapshot: dict[str, Any], rm_metrics: dict[str, float], result: dict[str, Any], algo: str, qc_report: dict[str, Any],
                   registered: dict[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Register both models with lineage (``registered``: the versions the last on-policy round registered, given
    the final evaluation's figures instead); the demo's admin approves the policy; promotion to champion when the
    gates of tether.toml pass (a refusal is reported, not hidden)."""
    from tether.lifecycle.registry import record_eval, register_model

    annotators = {r["annotator"]: r["n_answers"] for r in qc_report["annotators"]}
    flagged = sorted(r["annotator"] for r in qc_report["annotators"] if r["flags"])
    data = {
        "pairs": snapshot["row_count"],
        "aggregate": snapshot["aggregate"],
        "annotators": dict(sorted(annotators.items())),  # structured, so a purge can replace one name (tether.lifecycle.governance)
        "flagged_by_qc": flagged,
        "task": "tether demo: customer-support replies (generated offline)",
    }
    rm_figures = {k.split("/", 1)[1]: v for k, v in rm_metrics.items() if k.startswith("eval/")}
    figures = {
        "win_rate": result["win_rate"],
        "gold_win_rate": result["gold_win_rate"],
        "violation_rate": result["violation_rate_policy"],
        "length": result["length_policy"],
    }
    if result.get("kl_gate") is not None:  # a negative KL estimate counts as its upper bound, or not at all
        figures["kl"] = result["kl_gate"]
    if registered is not None and registered.get("policy") is not None:
        rm, policy = {"version": registered["reward_model"]}, {"version": registered["policy"]}
        record_eval(ws, rm["version"], rm_figures)
        record_eval(ws, policy["version"], figures)
        return _approve(ws, rm, policy)
    if registered is not None:  # the rounds kept the first RL run's policy (people judged theirs worse): registered now
        rm = {"version": registered["reward_model"]}
        record_eval(ws, rm["version"], rm_figures)
        policy = register_model(
            ws, policy_dir, name=POLICY_NAME, kind="policy", base_model=str(sft_dir), metrics=figures,
            data_summary={"prompts": "generated support requests", "kept_by": "the on-policy rounds: their audits judged the later policies worse"},
            method=f"{algo.upper()} from the SFT policy against the first reward ensemble plus rule rewards (kept by the on-policy rounds)",
        )
        return _approve(ws, rm, policy)
    rm = register_model(
        ws, rm_dir, name=REWARD_NAME, kind="reward", snapshot_name=snapshot["name"], snapshot_digest=snapshot["digest"],
        base_model=str(sft_dir), metrics=rm_figures, data_summary=data,
        method="Bradley-Terry reward model on a tiny Llama initialized from the SFT policy",
    )
    policy = register_model(
        ws, policy_dir, name=POLICY_NAME, kind="policy", parent=rm["version"], base_model=str(sft_dir), metrics=figures,
        data_summary={"prompts": "generated support requests", "reward": f"{rm['version']} + rules (personal data, forbidden phrases)"},
        method=f"{algo.upper()} from the SFT policy against the reward model plus rule rewards",
    )
    return _approve(ws, rm, policy)


def _approve(ws: Any, rm: dict[str, Any], policy: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    from tether.lifecycle.registry import approve, promote

    notes: list[str] = []
    ensure_admin(ws)
    approve(ws, policy["version"], admin=ADMIN, note="demo: approved after reading the evaluation report")
    promoted = False
    try:
        promote(ws, policy["version"])
        promoted = True
    except TetherError as exc:
        notes.append(exc.message)
    return {"reward_model": rm["version"], "policy": policy["version"], "champion": promoted}, notes


def ensure_admin(ws: Any) -> None:
    """The demo's admin (no password: cannot log in to the web app; it only signs the demo's approval)."""
    from sqlalchemy import select

    from tether.store.db import audit, session_scope
    from tether.store.tables import User

    with session_scope(ws.database_url) as session:
        if session.scalar(select(User.id).where(User.name == ADMIN)) is None:
            user = User(name=ADMIN, role="admin", meta={"demo": True})
            session.add(user)
            session.flush()
            audit(session, "user.create", "user", user.id, actor_name="demo", name=ADMIN, role="admin")
