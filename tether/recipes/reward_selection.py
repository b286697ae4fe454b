"""What the reward trainer decides around its loop (plumbing, no algorithm): the defaults a backbone gets, the
validation split carved from the training rows, and which checkpoint is kept (the best by validation accuracy,
with early stopping).

Defaults by backbone: a field of ``RewardConfig`` left unset (None) takes its value from ``BACKBONE_DEFAULTS``, by
the backbone's kind (encoder: a pooler head, BERT-like; decoder: a head on the last token) and its parameter
count; the choice is said in one line. A value given in a --config file, with --set or as a flag always wins.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import torch

from tether.errors import TetherError

# (kind, parameters below, defaults). Encoders under 100M (MiniLM-L6, 22M), measured on all 3,731 training pairs
# of the HH-RLHF split, scored on its 933 test pairs (docs/benchmarks.md, "The full run with the defaults"): one
# epoch of batches of 16 at 5e-5 and 256 tokens gave 0.565; two epochs at 1e-4 (the row before, chosen on the
# 2,890 pairs that fit whole) 0.518 in twice the time, memorizing in its second epoch; one epoch at 3e-5 and 192
# tokens 0.542. One data order each: a guide, not a sweep. 256 tokens skip 24 of 3,358 pairs (completion alone longer).
# Decoders of 0.1-3B: 1e-5, the reward-model rate of the published recipes at that size (TRL, OpenRLHF examples);
# larger ones 5e-6. Tiny decoders (tests, the demo) keep the earlier default, 5e-5.
BACKBONE_DEFAULTS: list[tuple[str, float, dict[str, Any]]] = [
    ("encoder", 100e6, {"learning_rate": 5e-5, "epochs": 1.0, "max_length": 256, "batch_size": 16}),
    ("encoder", math.inf, {"learning_rate": 2e-5, "epochs": 1.0, "max_length": 512, "batch_size": 8}),
    ("decoder", 100e6, {"learning_rate": 5e-5, "epochs": 1.0, "max_length": 512, "batch_size": 8}),
    ("decoder", 3e9, {"learning_rate": 1e-5, "epochs": 1.0, "max_length": 512, "batch_size": 8}),
    ("decoder", math.inf, {"learning_rate": 5e-6, "epochs": 1.0, "max_length": 512, "batch_size": 8}),
]
BY_BACKBONE = ("learning_rate", "epochs", "max_length", "batch_size")  # the RewardConfig fields whose None means "by backbone"
DEFAULT_VALIDATION_FRACTION = 0.1
# Below 2,000 pairs a 10% split holds < 200 pairs, whose accuracy's standard error (> 3.5 points) is larger than what
# the checkpoints differ by: on 800 HH pairs (80 validation pairs) early stopping kept a checkpoint of step 11 of 88.
MIN_PAIRS_FOR_DEFAULT_VALIDATION = 2000


def backbone_defaults(kind: str, parameters: int) -> dict[str, Any]:
    for row_kind, below, values in BACKBONE_DEFAULTS:
        if row_kind == kind and parameters < below:
            return dict(values)
    raise ValueError(f"unknown backbone kind {kind!r}; valid: encoder, decoder")


def resolve_defaults(cfg: Any, profile_of: Any, say: Any) -> Any:
    """``cfg`` with its unset (None) backbone-dependent fields filled from ``BACKBONE_DEFAULTS`` for the backbone
    ``profile_of(cfg.model)`` describes ({"kind", "parameters"}); says the choice in one line. A config with every
    such field set is returned as it is (the backbone is not read)."""
    unset = [name for name in BY_BACKBONE if getattr(cfg, name) is None]
    if not unset:
        return cfg
    profile = profile_of(cfg.model)
    values = backbone_defaults(profile["kind"], profile["parameters"])
    chosen = {name: values[name] for name in unset}
    shown = ", ".join(f"{name}={chosen[name]:g}" for name in unset)
    given = [f"{name}={getattr(cfg, name):g}" for name in BY_BACKBONE if name not in unset]
    say(f"defaults for {'an' if profile['kind'] == 'encoder' else 'a'} {profile['kind']} of {profile['parameters'] / 1e6:.1f}M parameters: {shown}" + (f" (given: {', '.join(given)})" if given else "") + "; set them with --learning-rate, --epochs, --max-length, --batch-size")
    return type(cfg)(**{**cfg.model_dump(), **chosen})  # validated again: batch_size against micro_batch_size


# ---------------------------------------------------------------------------------------------------------------
# The validation split: by prompt, seeded, never overlapping the training rows
# ---------------------------------------------------------------------------------------------------------------


def prompt_key(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def validation_split(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, validation rows): a seeded ``fraction`` of the distinct prompts (at least one) and every row of
    those prompts go to validation, so no prompt is on both sides; each side keeps the rows' order."""
    prompts = sorted({prompt_key(r["prompt"]) for r in rows})
    random.Random(seed * 7919 + 3).shuffle(prompts)
    held = set(prompts[: max(1, round(fraction * len(prompts)))])
    train = [r for r in rows if prompt_key(r["prompt"]) not in held]
    return train, [r for r in rows if prompt_key(r["prompt"]) in held]


def carve_validation(cfg: Any, rows: list[dict[str, Any]], say: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The training rows and the validation rows ``cfg`` asks for (``validation_fraction``; None: the default
    fraction when there are enough pairs). Ties are never validation pairs (no side is right)."""
    fraction = cfg.validation_fraction
    if fraction is None:
        fraction = DEFAULT_VALIDATION_FRACTION if cfg.objective == "pairwise" and len(rows) >= MIN_PAIRS_FOR_DEFAULT_VALIDATION else 0.0
    if not fraction:
        return rows, []
    train, held = validation_split(rows, fraction, cfg.seed)
    held = [r for r in held if not r.get("tie")]
    if not train or not held:
        raise TetherError(f"validation_fraction {fraction}: {len(train)} training and {len(held)} validation pairs left", fix="use more data or --set validation_fraction=0")
    say(f"validation: {len(held)} pairs of {len(rows)} held out by prompt (seed {cfg.seed}), evaluated during training; the best checkpoint is kept")
    return train, held


# ---------------------------------------------------------------------------------------------------------------
# Keeping the best checkpoint: evaluate every N steps, remember the best weights, stop after `patience` misses
# ---------------------------------------------------------------------------------------------------------------


class Selection:
    """The best checkpoint by validation accuracy (the first to reach it, as Keras' and Hugging Face's early stopping
    keep), kept in memory (the trainable weights, on the CPU), and the early-stopping decision: ``evaluate(step)``
    -> True when ``patience`` evaluations in a row brought no new best. ``score()`` gives the figures, or the
    figures and one more object of the evaluation (kept as ``best_extra`` for the best one: the reward trainer's
    raw rewards of the validation chosen completions)."""

    def __init__(self, model: torch.nn.Module, score: Any, every: int, patience: int, total_steps: int):
        self.model, self.score, self.every, self.patience, self.total_steps = model, score, every, patience, total_steps
        self.evaluations: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self.best_weights: dict[str, torch.Tensor] = {}
        self.best_extra: Any = None
        self.misses = 0
        self.stopped_at: int | None = None

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total_steps

    def evaluate(self, step: int) -> bool:
        scored = self.score()
        scored, extra = scored if isinstance(scored, tuple) else (scored, None)
        figures = {"step": step, **scored}
        self.evaluations.append(figures)
        improved = self.best is None or figures["accuracy"] > self.best["accuracy"]
        if improved:
            self.best, self.best_extra = figures, extra
            self.best_weights = {n: p.detach().to("cpu", copy=True) for n, p in self.model.named_parameters() if p.requires_grad}
        self.misses = 0 if improved else self.misses + 1
        if self.patience and self.misses >= self.patience and step < self.total_steps:
            self.stopped_at = step
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the selection, so that a resumed run keeps the checkpoint an uninterrupted one
        would: the evaluations so far, the best one with its weights (the trainable ones, on the CPU) and its extra
        object, and the misses that count towards early stopping."""
        return {"evaluations": self.evaluations, "best": self.best, "best_weights": self.best_weights, "best_extra": self.best_extra,
                "misses": self.misses, "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.evaluations, self.best, self.best_weights = list(state["evaluations"]), state["best"], dict(state["best_weights"])
        self.best_extra, self.misses, self.stopped_at = state["best_extra"], int(state["misses"]), state["stopped_at"]

    def restore(self) -> None:
        """Put the best weights back into the model (nothing to do when the last evaluation was the best)."""
        if self.best is None or self.best["step"] == self.evaluations[-1]["step"]:
            return
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in self.best_weights:
                    param.copy_(self.best_weights[name].to(param.device))

    def record(self, validation_rows: int) -> dict[str, Any]:
        """What tether.json keeps under ``selection``."""
        return {
            "metric": "validation/accuracy",
            "validation_pairs": validation_rows,
            "best_step": self.best["step"] if self.best else None,
            "best_accuracy": self.best["accuracy"] if self.best else None,
            "stopped_early_at": self.stopped_at,
            "patience": self.patience,
            "evaluations": self.evaluations,
        }

    def line(self, validation_rows: int) -> str:
        best = self.best or {"step": 0, "accuracy": float("nan")}
        stop = f"; stopped early at step {self.stopped_at} ({self.patience} evaluations without a new best)" if self.stopped_at else ""
        return (f"kept the checkpoint of step {best['step']}: validation accuracy {best['accuracy']:.4f} on {validation_rows} pairs, "
                f"best of {len(self.evaluations)} evaluations{stop}")
