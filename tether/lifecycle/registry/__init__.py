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
whose lineage reaches a snapshot marked as purged (tether.lifecycle.governance), directly or through a parent, is flagged by
``lineage`` and ``show`` and cannot be approved or promoted to champion.

Modules: common, card (model cards), walk (lineage: walking back to the judgments), gates, versions (register,
list, show), promotion (approve, promote); their public functions are re-exported here.
"""

from __future__ import annotations

from tether.lifecycle.registry.card import (
    LIMITS,
    model_card,
)
from tether.lifecycle.registry.common import (
    ALIASES,
    KIND_OF_META,
    KINDS,
    parse_ref,
    password_from_env,
)
from tether.lifecycle.registry.gates import (
    Gate,
    check_gates,
    gates_for,
)
from tether.lifecycle.registry.promotion import (
    PURGED_FIX,
    approvals,
    approve,
    promote,
)
from tether.lifecycle.registry.versions import (
    list_versions,
    local_path,
    record_eval,
    register_model,
    scrub_registry,
    show,
    versions_resting_on,
)
from tether.lifecycle.registry.walk import (
    lineage,
    purge_problems,
    upstream_snapshots,
)

__all__ = ["ALIASES", "Gate", "KINDS", "KIND_OF_META", "LIMITS", "PURGED_FIX", "approvals", "approve", "check_gates", "gates_for", "lineage", "list_versions", "local_path", "model_card", "parse_ref", "password_from_env", "promote", "purge_problems", "record_eval", "register_model", "scrub_registry", "show", "upstream_snapshots", "versions_resting_on"]
