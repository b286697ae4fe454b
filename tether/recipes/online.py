"""What PPO, GRPO and RLOO share, so that each algorithm's loop holds only what differs (a critic with GAE, or group
and leave-one-out advantages): the setup (prompts, rollout sizing, reward, policy and its frozen reference, vLLM),
sampling and scoring a rollout, the log-probs before the update, the passes and minibatches of the update, the
shared metrics, samples and checkpoints, and saving the policy.

A rollout samples ``batch_size x num_minibatches`` completions (``group_size`` per prompt), then makes
``ppo_epochs`` passes over them in ``num_minibatches`` optimizer steps each. The log-probs before the update are
computed over the first pass's own micro-batches, so the first minibatch's probability ratio is exactly 1.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tether.data.batching import shard
from tether.data.canonical import rows_digest
from tether.errors import TetherError
from tether.math.losses import truncated_is_weights
from tether.models.hf import load_causal_lm, load_policy, load_tokenizer
from tether.models.logprobs import completion_logps
from tether.models.sampling import Rollout, VLLMSampler, sample_rollout, sampler_gap_metrics
from tether.recipes.reward_specs import Reward, load_reward
from tether.recipes.runtime import Run, StepHook, TrainResult

# ---------------------------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Online:
    """An online run after ``setup``: its plumbing (``run``), the prompts and the plan of rollouts, the summed reward,
    the tokenizer, the policy (trainable; Accelerate-wrapped after ``start``), its frozen reference (``kl_coef > 0``
    without LoRA; with LoRA the reference is the policy with its adapter off) and vLLM when it samples."""

    run: Run
    cfg: Any
    prompts: list[Any]
    plan: RolloutPlan
    reward: Reward
    tokenizer: Any
    policy: Any
    reference: Any = None
    vllm: Any = None


def setup(cfg: Any, name: str, *, workspace: Any = None, on_step: StepHook | None = None, label: str | None = None) -> Online:
    """Accelerator and seed, the prompts (a file, or ``snapshot:NAME`` in ``workspace``) and the rollout plan (the
    output folder checked before any model loads), the reward, the tokenizer, the policy (fp32 master weights, dropout
    off; bf16 forward passes run under autocast) and the reference (bf16 when asked)."""
    run = Run(cfg, name, workspace=workspace, on_step=on_step, label=label)
    rows = run.rows(cfg.prompts, "prompt")
    prompts = [row["prompt"] for row in rows]
    plan = plan_rollouts(cfg, len(prompts), run.world)
    run.plan(rows_digest(rows), plan.total_steps)
    reward = load_reward(cfg.reward, device=str(run.accelerator.device), batch_size=cfg.reward_batch_size, bf16=cfg.bf16, say=run.say)
    tokenizer = load_tokenizer(cfg.model, chat_template=cfg.chat_template, say=run.say)
    policy = load_policy(cfg, tokenizer, dropout=False)
    reference = None
    if cfg.kl_coef > 0 and not cfg.lora_r:
        reference = load_causal_lm(cfg.reference_model or cfg.model, bf16=cfg.bf16).to(run.accelerator.device).eval().requires_grad_(False)
    return Online(run, cfg, prompts, plan, reward, tokenizer, policy, reference)


def start(o: Online, *others: torch.nn.Module) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """Optimizers and schedules for the policy and ``others`` (PPO's critic), Accelerate, vLLM, then resume, the
    metrics log and the progress bar; returns the checkpoint's trainer state and the prepared ``others``."""
    o.policy, *prepared = o.run.prepare(o.policy, *others)
    cfg = o.cfg
    if cfg.sampler == "vllm":
        o.vllm = VLLMSampler(cfg.model, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, max_model_len=cfg.max_length, seed=cfg.seed, bf16=cfg.bf16)
    return o.run.start(), tuple(prepared)


# ---------------------------------------------------------------------------------------------------------------
# One rollout: sample, score, the log-probs before the update
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One rollout, sampled and scored, on the device. Shapes: B completions, P prompt width, R completion width."""

    rollout: Rollout
    scores: torch.Tensor  # (B,) the summed reward (minus missing_eos_penalty for a completion cut before EOS)
    reward_metrics: dict[str, float]
    input_ids: torch.Tensor  # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R)
    mask: torch.Tensor  # (B, R): 1 on the completion tokens
    sample_seconds: float
    started: float  # perf_counter when the rollout started

    @property
    def width(self) -> int:
        return self.mask.shape[1]


def sample_and_score(o: Online, rollout_index: int) -> Batch:
    """This process's share of rollout ``rollout_index``'s prompts, ``group_size`` completions each, scored."""
    cfg, accelerator = o.cfg, o.run.accelerator
    started = time.perf_counter()
    indices = shard(prompt_indices(len(o.prompts), rollout_index, o.plan.prompts_per_rollout, cfg.seed), accelerator.process_index, o.run.world)
    unwrapped = accelerator.unwrap_model(o.policy)
    sampling = dict(group_size=cfg.group_size, max_new_tokens=cfg.max_new_tokens, max_prompt_tokens=cfg.max_length - cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    if o.vllm is not None:
        o.vllm.load_weights(unwrapped)
        rollout = o.vllm.generate(o.tokenizer, [o.prompts[i] for i in indices], **sampling)
    else:
        with accelerator.autocast():
            rollout = sample_rollout(unwrapped, o.tokenizer, [o.prompts[i] for i in indices], sampler=cfg.sampler, cache=cfg.cache, decoder=cfg.decoder, **sampling)
    sample_seconds = time.perf_counter() - started
    scores, reward_metrics = o.reward.score(rollout.prompts, rollout.prompt_texts, rollout.completion_texts)
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~rollout.has_eos).float()
    device = accelerator.device
    return Batch(rollout, scores.to(device), reward_metrics, rollout.input_ids.to(device), rollout.attention_mask.to(device),
                 rollout.completion_mask.to(device), sample_seconds, started)


def logps(o: Online, model: Any, batch: Batch, rows: torch.Tensor, *, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model``'s log-probs of the completion tokens of ``rows`` (and the entropies): (b, R) each."""
    with o.run.accelerator.autocast():
        return completion_logps(model, batch.input_ids[rows], batch.attention_mask[rows], batch.width, o.cfg.temperature, with_entropy, o.cfg.share_prompts)


def pass_order(o: Online, batch: Batch, rollout_index: int, epoch: int) -> torch.Tensor:
    """Pass ``epoch``'s row order over the rollout, fixed by (seed, rollout, epoch)."""
    seed = o.cfg.seed * 1_000_003 + rollout_index * 1_009 + epoch
    return update_order(len(batch.rollout), o.plan.minibatch, seed).to(o.run.accelerator.device)


def micro_chunks(rows: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def logps_before_update(o: Online, batch: Batch, first_order: torch.Tensor, *, old: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The policy's log-probs before the update (``old``) and the reference's (when ``kl_coef > 0``), (B, R) each or
    None, over the first pass's micro-batches (so the first minibatch's ratio is exactly 1)."""
    chunks = micro_chunks(first_order, o.run.micro_batch)
    old_logps = ref_logps = None
    with torch.no_grad():
        if old:
            old_logps = torch.zeros_like(batch.mask, dtype=torch.float32)
            for chunk in chunks:
                old_logps[chunk] = logps(o, o.policy, batch, chunk)[0]
        if o.cfg.kl_coef > 0:
            ref_logps = torch.zeros_like(batch.mask, dtype=torch.float32)
            unwrapped = o.run.accelerator.unwrap_model(o.policy)
            adapter_off = unwrapped.disable_adapter() if o.cfg.lora_r else contextlib.nullcontext()
            with adapter_off, torch.inference_mode():
                for chunk in chunks:
                    ref_logps[chunk] = logps(o, o.reference if o.reference is not None else o.policy, batch, chunk)[0]
    return old_logps, ref_logps


def importance_weights(o: Online, batch: Batch, old_logps: torch.Tensor | None) -> torch.Tensor | None:
    """vLLM's truncated importance weights per token (B, R), or None for Tether's own samplers."""
    if batch.rollout.sampler_logps is None:
        return None
    return truncated_is_weights(old_logps, batch.rollout.sampler_logps.to(batch.mask.device), o.cfg.is_cap)


# ---------------------------------------------------------------------------------------------------------------
# The update: passes and minibatches, one optimizer step each
# ---------------------------------------------------------------------------------------------------------------


def minibatches(o: Online, batch: Batch, rollout_index: int, first_order: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor, list[torch.Tensor]]]:
    """``(pass, minibatch, its rows, its micro-batches)`` of every optimizer step of this rollout: ``ppo_epochs``
    passes of ``num_minibatches``, fewer in a last rollout that --max-steps cuts short; pass 0 in ``first_order``."""
    cfg, updates, size = o.cfg, o.plan.updates_in(rollout_index), o.plan.minibatch
    for epoch in range(math.ceil(updates / cfg.num_minibatches)):
        order = first_order if epoch == 0 else pass_order(o, batch, rollout_index, epoch)
        for mb_index in range(min(cfg.num_minibatches, updates - epoch * cfg.num_minibatches)):
            rows = order[mb_index * size : (mb_index + 1) * size]
            yield epoch, mb_index, rows, micro_chunks(rows, o.run.micro_batch)


def add_stats(step_stats: dict[str, float], stats: dict[str, Any], share: Any) -> None:
    """Add one micro-batch's stats, weighted by its share of the minibatch, to the step's."""
    for key, value in stats.items():
        step_stats[key] = step_stats.get(key, 0.0) + float(value) * float(share)


def step_done(o: Online, step: int, epoch: int, mb_index: int, step_stats: dict[str, float], totals: dict[str, list[float]], batch: Batch) -> None:
    """After an optimizer step: the hook (with the pass and minibatch), the stats kept for the rollout's means, the
    progress bar."""
    for key, value in step_stats.items():
        totals.setdefault(key, []).append(value)
    o.run.step_done(step, {**step_stats, "update/pass": epoch, "update/minibatch": mb_index}, reward=float(batch.scores.mean()))


# ---------------------------------------------------------------------------------------------------------------
# After the update: metrics, samples, checkpoints; saving
# ---------------------------------------------------------------------------------------------------------------


def rollout_metrics(o: Online, batch: Batch, seq_kl: torch.Tensor, kl_coef: float, totals: dict[str, list[float]], update_started: float) -> dict[str, float]:
    """The metrics every online algorithm logs for a rollout (the algorithm adds its own)."""
    mask = batch.mask
    return {
        "objective/scores": float(batch.scores.mean()),
        "objective/kl": float(seq_kl.mean()),
        "objective/rlhf_reward": float((batch.scores - kl_coef * seq_kl).mean()),
        "completions/mean_length": float(mask.sum(dim=1).float().mean()),
        "completions/clipped_ratio": float((~batch.rollout.has_eos).float().mean()),
        **batch.reward_metrics,
        **{key: sum(values) / len(values) for key, values in totals.items()},
        "train/learning_rate": o.run.learning_rate,
        "time/rollout_s": batch.sample_seconds,
        "time/update_s": time.perf_counter() - update_started,
        "time/step_s": time.perf_counter() - batch.started,
        "time/tokens_per_s": int(mask.sum()) / max(batch.sample_seconds, 1e-9),
    }


def end_rollout(o: Online, rollout_index: int, step: int, batch: Batch, metrics: dict[str, float], old_logps: torch.Tensor | None, state: dict[str, Any] | None = None) -> dict[str, float]:
    """The rollout's metrics averaged over the processes and logged, samples written, a checkpoint (with ``state``)
    when due; returns the metrics."""
    cfg, run, plan = o.cfg, o.run, o.plan
    if batch.rollout.sampler_logps is not None:  # vLLM: how far its log-probs are from the trainer's
        metrics.update(sampler_gap_metrics(old_logps, batch.rollout.sampler_logps.to(batch.mask.device), batch.mask, cfg.is_cap))
    metrics = run.reduce(metrics, "mean")
    metrics["train/rollout"] = rollout_index + 1
    last = rollout_index + 1 == plan.total_rollouts
    run.log(step, metrics, steps=plan.updates_per_rollout, last=last)
    if cfg.sample_every and run.accelerator.is_main_process and (rollout_index % cfg.sample_every == 0 or last):
        write_samples(run.output_dir / "samples.jsonl", step, batch.rollout, batch.scores.cpu(), cfg.num_samples, show=cfg.progress)
    run.checkpoint(step, {"rollout": rollout_index + 1, **(state or {})}, steps=plan.updates_per_rollout, last=last)
    return metrics


def save(o: Online, metrics: dict[str, float], extra: dict[str, Any]) -> TrainResult:
    """The trained policy (LoRA: the adapter, or merged with ``merge``) as a Hugging Face folder + tether.json."""
    return o.run.save(o.run.accelerator.unwrap_model(o.policy), o.tokenizer, kind="policy", metrics=metrics, extra=extra)


# ---------------------------------------------------------------------------------------------------------------
# Sizes and orders
# ---------------------------------------------------------------------------------------------------------------


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
