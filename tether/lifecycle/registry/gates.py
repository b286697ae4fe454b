"""Promotion gates: ``[gates]`` of tether.toml (``min_X``: ``eval.X >= value``, ``max_X``: ``eval.X <= value``;
``[gates.reward]`` for reward models) checked against a version's evaluation figures."""

from __future__ import annotations

from typing import Any

from tether.errors import TetherError


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


