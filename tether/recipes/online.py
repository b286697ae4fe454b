"""What PPO, GRPO and RLOO share: rollout sizing, which prompts a rollout takes, the update order, sample tables and
metrics over processes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tether.errors import TetherError
from tether.models.sampling import Rollout


def update_order(rows: int, minibatch: int, seed: int) -> torch.Tensor:
    """The order in which one pass of updates visits a rollout's rows: a seeded shuffle cut into minibatches, each
    minibatch's rows then put back in rollout order. Which rows share a minibatch stays random; inside it a prompt's
    group stays together, so when a minibatch is split into micro-batches (gradient accumulation) the rows of one
    prompt still share one forward over it (``completion_logps``)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([part.sort().values for part in torch.randperm(rows, generator=generator).split(minibatch)])


@dataclass(frozen=True)
class RolloutPlan:
    """The sizes of an online run (PPO, GRPO, RLOO): a rollout samples ``batch_size x num_minibatches``
    completions (``group_size`` per prompt) and makes ``ppo_epochs x num_minibatches`` optimizer steps on them.

    ``total_steps`` is ``max_steps`` exactly when given: the last rollout then stops after the steps that remain
    (``updates_in``), instead of rounding the run up to whole rollouts."""

    rollout_size: int  # completions per rollout, all processes
    prompts_per_rollout: int  # all processes
    minibatch: int  # completions per optimizer step on this process
    updates_per_rollout: int
    total_rollouts: int
    total_steps: int

    def updates_in(self, rollout_index: int) -> int:
        """Optimizer steps of rollout ``rollout_index``: all of them, but for a short last one."""
        return min(self.updates_per_rollout, self.total_steps - rollout_index * self.updates_per_rollout)


def plan_rollouts(cfg: Any, n_prompts: int, processes: int) -> RolloutPlan:
    """Size the run from the config, the number of prompts and of processes (checked to divide evenly)."""
    rollout_size = cfg.batch_size * cfg.num_minibatches  # completions per rollout, all processes
    prompts_per_rollout = rollout_size // cfg.group_size
    if prompts_per_rollout % processes:
        raise TetherError(
            f"{prompts_per_rollout} prompts per rollout do not split over {processes} processes",
            fix="make batch_size x num_minibatches / group_size a multiple of the number of processes",
        )
    updates_per_rollout = cfg.ppo_epochs * cfg.num_minibatches
    if cfg.max_steps:
        total_steps = cfg.max_steps
    else:
        total_steps = max(1, math.ceil(cfg.epochs * n_prompts / prompts_per_rollout)) * updates_per_rollout
    plan = RolloutPlan(rollout_size, prompts_per_rollout, cfg.batch_size // processes, updates_per_rollout, math.ceil(total_steps / updates_per_rollout), total_steps)
    if total_steps % updates_per_rollout:
        print(
            f"note: --max-steps {total_steps}: the last rollout makes {plan.updates_in(plan.total_rollouts - 1)} of its "
            f"{updates_per_rollout} optimizer steps (ppo_epochs {cfg.ppo_epochs} x num_minibatches {cfg.num_minibatches})"
        )
    return plan


def prompt_indices(n_prompts: int, rollout_index: int, per_rollout: int, seed: int) -> list[int]:
    """The prompts of rollout ``rollout_index``: consecutive slices of an endless stream of shuffled passes over
    the prompts (a new permutation per pass, fixed by ``seed``), so a resumed run continues the same stream."""
    import random

    orders: dict[int, list[int]] = {}
    out = []
    for position in range(rollout_index * per_rollout, (rollout_index + 1) * per_rollout):
        epoch, offset = divmod(position, n_prompts)
        if epoch not in orders:
            orders[epoch] = list(range(n_prompts))
            random.Random(seed * 1_000_003 + epoch).shuffle(orders[epoch])
        out.append(orders[epoch][offset])
    return out


def write_samples(path: Any, step: int, rollout: Rollout, scores: torch.Tensor, n: int, show: bool) -> None:
    """Append ``n`` sample completions (prompt, completion, score) to ``path`` (JSON lines); print a table."""
    import json
    from pathlib import Path

    rows = [
        {"step": step, "prompt": rollout.prompt_texts[i], "completion": rollout.completion_texts[i], "score": float(scores[i])}
        for i in range(min(n, len(rollout)))
    ]
    with Path(path).open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    if show:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"samples at step {step}", show_lines=True)
        for column in ("prompt", "completion", "score"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row["prompt"][-200:], row["completion"][:400], f"{row['score']:.3f}")
        Console(stderr=True).print(table)


def mean_over_processes(accelerator: Any, metrics: dict[str, float]) -> dict[str, float]:
    """Each metric averaged over the processes (identity on one process)."""
    if accelerator.num_processes == 1 or not metrics:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(keys, values.tolist()))
