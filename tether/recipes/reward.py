"""Reward model training, one readable loop: setup -> train -> normalize -> save.

Pairwise (Bradley-Terry, with margins, ties and optional centering) on preference rows, or regression on rating
rows with one head per aspect. Encoders (BERT-like) and decoders (Llama, Qwen2, GPT-2) alike; full fine-tuning or
LoRA; K ensemble heads on one backbone, each trained on its own bootstrap weights (one forward pass for all K).

Efficiency: chosen and rejected share one autograd graph and one backward; the batch's sequences are sorted by
length and cut into the forward passes that pad least (``_rewards``); decoders run the prompt a pair shares once
(``_branch_rewards``). Batches themselves are plain shuffled (length bucketing, ``group_by_length``, cost accuracy
on HH-RLHF). Scale-out: the same function under ``accelerate launch``; the global batch (``batch_size``) is the same whatever the number of processes, and each process's loss is scaled
so that the averaged gradient is the gradient of the global batch's mean loss.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import torch

from tether.data.batching import (
    branch_rows,
    capped_micro_batches,
    epoch_batches,
    pad_right,
    padded_passes,
    shard,
)
from tether.data.canonical import RowValueError, check_weight, rows_digest
from tether.errors import TetherError
from tether.math import losses
from tether.models.hf import (
    apply_lora,
    disable_dropout,
    enable_activation_checkpointing,
    load_tokenizer,
)
from tether.models.reward_eval import evaluate_reward_model
from tether.models.reward_model import (
    RewardForward,
    RewardModel,
    backbone_profile,
    drop_extra_outputs,
    load_reward_backbone,
    output_head,
    raw_rewards,
)
from tether.models.tokens import completion_tokens, encode_many
from tether.recipes.configs import RewardConfig
from tether.recipes.fsdp import even_share, is_fsdp, unsharded
from tether.recipes.reward_length import length_correction, reference_pairs
from tether.recipes.reward_selection import Selection, carve_validation, resolve_defaults
from tether.recipes.runtime import (
    Run,
    StepHook,
    TrainResult,
    crossed,
    reset_memory_baseline,
    return_freed_memory,
)


def train_reward(cfg: RewardConfig, *, workspace: Any = None, on_step: StepHook | None = None) -> TrainResult:
    """Train a reward model as ``cfg`` says (data: a file, or ``snapshot:NAME`` in ``workspace``) and save it in
    ``cfg.output_dir``; ``on_step(step, stats)`` after every optimizer step."""
    # ---------------------------------------------------------------- setup (plumbing)
    said: list[str] = []
    cfg = resolve_defaults(cfg, backbone_profile, said.append)  # fields left unset: chosen by backbone
    run = Run(cfg, "reward", workspace=workspace, on_step=on_step)
    for line in said:
        run.say(line)
    tokenizer = load_tokenizer(cfg.model, chat_template=cfg.chat_template, say=run.say)
    rows, eval_rows, validation_rows = _load_data(cfg, run)
    data = _tokenize(rows, tokenizer, cfg, run.say)
    n = len(data["lengths"])
    if n < cfg.batch_size:
        raise TetherError(f"--batch-size {cfg.batch_size} is larger than the {n} usable training rows", fix=f"use --batch-size {n} or less, or more data")
    steps_per_epoch = n // cfg.batch_size  # every step sees exactly batch_size rows (the last partial batch waits)
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    run.plan(data["digest"], total_steps)
    quality = cfg.ensemble * len(data["aspects"])  # the reward outputs; ODIN's length head is one more, dropped at saving
    (forward,) = run.prepare(_reward_forward(cfg, tokenizer, quality + cfg.length_head))
    accelerator, pad_id = run.accelerator, tokenizer.pad_token_id
    branches = cfg.share_prompts and accelerator.unwrap_model(forward).takes_branch_masks()  # one row per pair, the prompt once
    # Bootstrap weights, Poisson(1) per (row, member): each head sees its own resample of the data.
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    boot = torch.poisson(torch.ones(n, cfg.ensemble), generator=generator) if cfg.ensemble > 1 else None
    validation = _tokenize(validation_rows, tokenizer, cfg, run.say) if validation_rows else None
    scored_validation = len(validation["chosen"]) if validation else 0  # the pairs scored: over-long ones are skipped
    selection = _selection(cfg, run, forward, validation, pad_id, quality, steps_per_epoch, total_steps) if validation else None
    if selection is not None:
        run.keep_in_checkpoints("selection", selection)  # a resumed run keeps the checkpoint an uninterrupted one would
    start_step = int(run.start()["step"])
    if selection is not None and start_step and selection.best is not None:
        run.say(f"resumed at step {start_step} with the {len(selection.evaluations)} validation evaluations so far: best step {selection.best['step']} (accuracy {selection.best['accuracy']:.4f})")

    # ---------------------------------------------------------------- train
    reset_memory_baseline()  # this run's own heap baseline
    window: dict[str, list[float]] = {}
    batches_of: dict[int, list[list[int]]] = {}
    started = time.perf_counter()
    done = start_step
    forward.train()
    for step in range(start_step, total_steps):
        epoch = step // steps_per_epoch
        if epoch not in batches_of:
            batches_of = {epoch: epoch_batches(data["lengths"], cfg, epoch)}
        batch = batches_of[epoch][step % steps_per_epoch]  # the global batch, identical on every process
        step_stats = _accumulate(run, forward, batch, data, boot, cfg, pad_id, branches)
        grad_norm = run.optimizer_step()
        if accelerator.device.type == "cpu":
            return_freed_memory()
        # ---- metrics, validation and checkpoints (plumbing): logged records are means over the logging window
        reduced = run.reduce({key: float(value) for key, value in step_stats.items()}, "mean")
        for key in step_stats:
            window.setdefault(key, []).append(reduced[key])
        done = step + 1
        stop = selection is not None and selection.due(done) and selection.evaluate(done)  # True: early stopping
        last = done == total_steps or stop
        plumbing = {"train/grad_norm": grad_norm, "train/learning_rate": run.learning_rate, "train/epoch": done / steps_per_epoch}
        if last or crossed(done, cfg.logging_steps):
            run.logger.log(done, {**{k: sum(v) / len(v) for k, v in window.items()}, **plumbing})
            window = {}
        if selection is not None and selection.evaluations[-1:] and selection.evaluations[-1]["step"] == done:
            run.logger.log(done, {f"validation/{k}": v for k, v in selection.evaluations[-1].items() if k != "step"})
        run.checkpoint(done, last=last)
        run.step_done(done, {**reduced, **plumbing}, **{k.split("/")[1]: reduced[k] for k in step_stats if k in ("train/loss", "reward/accuracy", "reward/mse")})
        if stop:
            break
    train_seconds = time.perf_counter() - started
    if selection is not None:
        selection.restore()  # the best checkpoint by validation accuracy is the one normalized and saved
        run.say(selection.line(scored_validation))

    # ---------------------------------------------------------------- normalize, evaluate held-out rows, save
    normalization = _normalization(cfg, run, forward, data, tokenizer, quality, selection, validation)
    if is_fsdp(accelerator):  # whole weights in a plain copy: evaluation (one process) and merging need no collectives
        forward = unsharded(forward, lambda: _reward_forward(cfg, tokenizer, quality + cfg.length_head))
    hf_model = accelerator.unwrap_model(forward).model
    if cfg.lora_r:
        hf_model = hf_model.merge_and_unload()  # a plain HF folder: the adapter folded into the weights
    if cfg.length_head:
        drop_extra_outputs(hf_model, quality)  # ODIN: the length head is not part of the reward
    final = {k: v for k, v in next((r for r in reversed(run.logger.history) if "train/loss" in r), {}).items() if k != "step"}
    final.update({"train/seconds": train_seconds, "train/pairs_per_second": (done - start_step) * cfg.batch_size / max(train_seconds, 1e-9)})
    if selection is not None:
        final.update({"validation/accuracy": selection.best["accuracy"], "validation/best_step": selection.best["step"]})
    reward_info = {
        "objective": cfg.objective,
        "ensemble": cfg.ensemble,
        "aspects": data["aspects"],
        "max_length": cfg.max_length,
        "reads": "last_token" if accelerator.unwrap_model(forward).last_token else "pooler",
        "normalization": normalization,
        "rating_scale": data.get("rating_scale"),
        "rows": {"train": n, "skipped_too_long": data["skipped"], "eval": len(eval_rows), "validation": scored_validation,
                 "validation_skipped_too_long": len(validation_rows) - scored_validation},
        "row_weights": None if data.get("weight") is None else {"mean": data["weight"].mean().item(), "min": data["weight"].min().item(), "max": data["weight"].max().item()},
        "selection": selection.record(scored_validation) if selection is not None else None,
        "length_head": {"trained": True, "dropped_at_saving": True, "length_loss_coef": cfg.length_loss_coef, "orthogonal_loss_coef": cfg.orthogonal_loss_coef} if cfg.length_head else None,
    }
    if eval_rows and accelerator.is_main_process and cfg.objective == "pairwise":
        scorer = RewardModel(hf_model, tokenizer, {"reward": reward_info, "config": {"max_length": cfg.max_length}}, accelerator.device)
        report = evaluate_reward_model(scorer, eval_rows, batch_size=cfg.eval_batch_size)
        final.update({f"eval/{k}": v for k, v in report.items() if isinstance(v, (int, float))})
        length = {"accuracy_chosen_longer": report["length"]["chosen_longer"]["accuracy"], "accuracy_chosen_shorter": report["length"]["chosen_shorter"]["accuracy"], "reward_length_correlation": report["length"]["reward_length_correlation"]}
        final.update({f"eval/{k}": v for k, v in length.items() if v is not None})
        run.logger.log(done, {k: v for k, v in final.items() if k.startswith("eval/")})
    hf_model.config.pad_token_id = pad_id
    result = run.save(hf_model, tokenizer, kind="reward", metrics=final, extra={"reward": reward_info}, merge=False)
    run.say(f"saved reward model to {cfg.output_dir}  ({done} steps, {train_seconds:.1f}s)")
    return result


def _selection(cfg: RewardConfig, run: Run, forward: Any, validation: dict[str, Any], pad_id: int, quality: int, steps_per_epoch: int, total_steps: int) -> Selection:
    """Keeping the best checkpoint by validation accuracy (every process scores the whole split: the same decision)."""
    every = cfg.validation_steps or max(1, steps_per_epoch // 4)
    device = run.accelerator.device

    def score() -> tuple[dict[str, float], torch.Tensor]:
        b = len(validation["chosen"])
        raw = raw_rewards(forward, validation["chosen"] + validation["rejected"], pad_id, cfg.eval_batch_size, device)[:, :quality]
        diff = (raw[:b] - raw[b:]).mean(dim=1)  # (b,) the ensemble's mean reward difference
        # the chosen completions' raw rewards come back too: the kept checkpoint's are the normalization's reference
        return {"accuracy": float((diff > 0).float().mean()), "loss": float(-torch.nn.functional.logsigmoid(diff).mean())}, raw[:b]

    return Selection(run.accelerator.unwrap_model(forward), score, every, cfg.early_stopping_patience, total_steps)


def _reward_forward(cfg: RewardConfig, tokenizer: Any, outputs: int) -> RewardForward:
    """The backbone with ``outputs`` heads (ensemble members x aspects; fp32 weights, --bf16 is autocast), dropout
    off unless asked, gradient checkpointing and LoRA as ``cfg`` says, read as rewards by ``RewardForward``."""
    model = load_reward_backbone(cfg.model, outputs, tokenizer.pad_token_id)
    if cfg.disable_dropout:
        disable_dropout(model)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return RewardForward(apply_lora(model, cfg, task_type="SEQ_CLS"))


# The validation split's chosen completions, scored at the kept checkpoint during training, are the normalization's
# reference when there are at least this many (the default split starts at 2,000 pairs: >= 200): no pass after training.
MIN_VALIDATION_REFERENCE = 200


def _normalization(cfg: RewardConfig, run: Run, forward: Any, data: dict[str, Any], tokenizer: Any, outputs: int, selection: Selection | None = None, validation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mean 0 and std 1 over the reference completions, per output, as the saved model scores them: by default the
    validation split's chosen completions, whose raw rewards at the kept checkpoint the last validation pass that
    chose it computed (no pass of its own); without a validation split (or fewer than MIN_VALIDATION_REFERENCE
    pairs), a seeded sample of at most normalize_max_rows of the training chosen completions, scored after training
    (each process scores a share); ``normalize_data`` when given."""
    if cfg.length_correction:
        return _length_corrected_normalization(cfg, run, forward, data, validation, tokenizer.pad_token_id, outputs)
    kept = selection.best_extra if selection is not None and cfg.normalize_data is None else None
    if kept is not None and len(kept) >= min(MIN_VALIDATION_REFERENCE, cfg.normalize_max_rows or MIN_VALIDATION_REFERENCE):
        ref_raw = kept[:, :outputs].to(torch.float64)
        name = "validation chosen completions"
        run.say(f"normalization: raw mean {ref_raw.mean().item():.4g}, std {ref_raw.std().item():.4g} over the {len(ref_raw)} {name}, "
                f"as the kept checkpoint (step {selection.best['step']}) scored them in its validation pass")
        return _normalization_record(ref_raw, outputs, name, len(ref_raw))
    reference, reference_name, available = _reference_sequences(cfg, data, tokenizer, run)
    started = time.perf_counter()
    run.say(f"normalizing rewards: scoring {len(reference)}" + (f" of {available}" if available > len(reference) else "") + f" {reference_name} with the trained model")
    ref_raw = _score_shared(run, forward, reference, tokenizer.pad_token_id, cfg.eval_batch_size)[:, :outputs]  # (R, K*A)
    run.say(f"normalization: raw mean {ref_raw.mean().item():.4g}, std {ref_raw.std().item() if len(ref_raw) > 1 else 1.0:.4g} over {len(ref_raw)} completions ({time.perf_counter() - started:.1f}s)")
    return _normalization_record(ref_raw, outputs, reference_name, available)


def _score_shared(run: Run, forward: Any, sequences: list[list[int]], pad_id: int, batch_size: int) -> torch.Tensor:
    """Raw rewards (R, outputs) float64 of ``sequences``, each process scoring a share (FSDP: as many passes on every
    process), gathered in order."""
    from accelerate.utils import gather_object

    mine, repeats = even_share(list(range(len(sequences))), run.accelerator)
    rows = [sequences[i] for i in mine + (mine or [0])[:repeats]]
    scored = raw_rewards(forward, rows, pad_id, batch_size, run.accelerator.device)[: len(mine)]
    pieces = gather_object([(i, row) for i, row in zip(mine, scored.tolist())])
    return torch.tensor([row for _, row in sorted(pieces)], dtype=torch.float64)


def _length_corrected_normalization(cfg: RewardConfig, run: Run, forward: Any, data: dict[str, Any], validation: dict[str, Any] | None, pad_id: int, outputs: int) -> dict[str, Any]:
    """``length_correction``: the within-pair slope of reward on completion tokens, fit on the reference pairs
    (tether.recipes.reward_length), and the normalization over their chosen completions with it subtracted."""
    ref, name = reference_pairs(data, validation, cfg.normalize_max_rows, cfg.seed)
    started = time.perf_counter()
    raw = _score_shared(run, forward, ref["chosen"] + ref["rejected"], pad_id, cfg.eval_batch_size)[:, :outputs]
    chosen, record = length_correction(raw[: len(ref["chosen"])], raw[len(ref["chosen"]) :], ref, name)
    r = record["reward_length_correlation"]
    run.say(f"length correction: within a pair the reward paid a median {', '.join(f'{b:.3g}' for b in record['slope'])} (raw) per unit of log(1 + completion tokens) over {name} "
            f"(reward-log length r {r['before']:+.2f}); subtracted at scoring: r {r['after']:+.2f}, the longer answer ahead in half the pairs ({time.perf_counter() - started:.1f}s)")
    return {**_normalization_record(chosen, outputs, f"{name}' chosen completions, length-corrected", len(chosen)), "length_correction": record}


def _normalization_record(ref_raw: torch.Tensor, outputs: int, reference: str, available: int) -> dict[str, Any]:
    """What tether.json keeps under ``reward.normalization``: per output mean and std (1 where there is no spread)."""
    std = ref_raw.std(dim=0) if len(ref_raw) > 1 else torch.ones(outputs, dtype=torch.float64)
    return {
        "mean": ref_raw.mean(dim=0).tolist(),
        "std": torch.where(std > 1e-8, std, torch.ones_like(std)).tolist(),
        "reference": reference,
        "n": len(ref_raw),
        "of": available,
    }


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: one micro batch -> loss
# ---------------------------------------------------------------------------------------------------------------


def _loss(
    forward: Any, chunk: list[int], data: dict[str, Any], boot: torch.Tensor | None, cfg: RewardConfig, pad_id: int, device: Any, branches: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    weight = boot[chunk].to(device) if boot is not None else None  # (b, K)
    if cfg.objective == "rating":
        predictions = _rewards(forward, [data["seqs"][i] for i in chunk], pad_id, device).view(len(chunk), cfg.ensemble, -1)  # (b, K, A)
        return losses.rating_regression_loss(predictions, data["targets"][chunk].to(device), data["target_mask"][chunk].to(device), weight)
    # Chosen and rejected together: rows 0..b-1 are chosen, b..2b-1 rejected.
    chosen, rejected = [data["chosen"][i] for i in chunk], [data["rejected"][i] for i in chunk]
    rewards = _branch_rewards(forward, chosen, rejected, pad_id, device) if branches else _rewards(forward, chosen + rejected, pad_id, device)  # (2b, K)
    if cfg.length_head:  # ODIN: the preference is fit by quality + length, (2b, K) and (2b,)
        quality_rewards, length_rewards = rewards[:, :-1], rewards[:, -1]
        rewards = quality_rewards + length_rewards.unsqueeze(1)
    chosen_rewards, rejected_rewards = rewards[: len(chunk)], rewards[len(chunk) :]
    margin = data["margin"][chunk].to(device) if data["margin"] is not None else None
    tie = data["tie"][chunk].to(device) if data["tie"] is not None else None
    pair_weight = data["weight"][chunk].to(device) if data["weight"] is not None else None
    loss, stats = losses.pairwise_reward_loss(chosen_rewards, rejected_rewards, margin, tie, weight, pair_weight)
    if cfg.length_head:  # ... while the length head is pulled toward the length and the quality heads away from it
        lengths = torch.cat([data["chosen_tokens"][chunk], data["rejected_tokens"][chunk]]).to(device)  # (2b,)
        head = output_head(getattr(forward, "module", forward).model).weight  # (K + 1, H): the quality rows, then the length row
        correlation, orthogonal, length_stats = losses.odin_length_loss(quality_rewards, length_rewards, lengths, head[:-1], head[-1])
        loss = loss + cfg.length_loss_coef * correlation + cfg.orthogonal_loss_coef * orthogonal
        stats.update(length_stats)
    if cfg.center_rewards_coef:
        loss = loss + cfg.center_rewards_coef * losses.reward_centering_loss(chosen_rewards, rejected_rewards)
    return loss, stats


def _accumulate(run: Run, forward: Any, batch: list[int], data: dict[str, Any], boot: torch.Tensor | None, cfg: RewardConfig, pad_id: int,
                branches: bool) -> dict[str, torch.Tensor]:
    """This process's micro batches of the global ``batch``: forward, loss, backward (gradients accumulated); returns
    the step's figures as this process's share of the batch means (with row weights, the loss is the weighted mean
    that is optimized, its processes' mean once reduced)."""
    accelerator, rank = run.accelerator, run.accelerator.process_index
    chunks = capped_micro_batches(batch, data["lengths"], run.micro_batch, cfg.max_tokens_per_forward, rank, run.world)
    share = len(shard(batch, rank, run.world))
    step_stats: dict[str, torch.Tensor] = {}
    weighted_loss: torch.Tensor | float = 0.0
    for j, chunk in enumerate(chunks):
        with run.accumulating(last=j == len(chunks) - 1):
            loss, stats = _loss(forward, chunk, data, boot, cfg, pad_id, accelerator.device, branches)
            # Scale so that the processes' averaged gradient is that of the global batch's (weighted) mean loss.
            scaled = _scaled(loss, chunk, batch, run.world, data.get("weight"))
            accelerator.backward(scaled)
        weighted_loss = weighted_loss + scaled.detach()
        for key, value in {"train/loss": loss.detach(), **stats}.items():
            step_stats[key] = step_stats.get(key, 0) + value * len(chunk) / share
    if data.get("weight") is not None:
        step_stats["train/loss"] = weighted_loss
    return step_stats


def _scaled(loss: torch.Tensor, chunk: list[int], batch: list[int], world: int, row_weight: torch.Tensor | None) -> torch.Tensor:
    """A micro batch's loss scaled by its share of the global batch (``world`` processes each run a share): by
    rows, or with row weights (n,) by weight, so that the averaged gradient is that of sum(w * l) / sum(w)."""
    if row_weight is None:
        return loss * len(chunk) * world / len(batch)
    return loss * world * float(row_weight[chunk].sum() / row_weight[batch].sum().clamp(min=1e-12))


# What one more forward pass costs, in padded tokens: on one CPU thread a MiniLM pass is about 80 tokens' worth of
# fixed work (measured), on a GPU a pass of a 0.5B model is worth thousands (an estimate, not measured).
def _pass_overhead(device: Any) -> int:
    return 96 if torch.device(device).type == "cpu" else 2048


def _rewards(forward: Any, seqs: list[list[int]], pad_id: int, device: Any) -> torch.Tensor:
    """Rewards (N, outputs) float32 for token sequences, in their order, with one autograd graph for all.

    The sequences are sorted by length and cut into the passes that waste the least on padding (``padded_passes``):
    on HH-RLHF at batch 16 one pass pads to 2.08x the real tokens, the chosen passes to 1.08x. Each sequence is
    computed alone, so the split does not change the result; every pass stays alive until the step's one backward,
    so the memory is that of the padded tokens of all passes, which is never more than one pass over the whole
    chunk would hold.
    """
    passes = padded_passes([len(s) for s in seqs], _pass_overhead(device))
    padded = [pad_right([seqs[i] for i in part], pad_id) for part in passes]
    rewards = forward([ids.to(device) for ids, _ in padded], [mask.to(device) for _, mask in padded]).float()
    order = torch.tensor([i for part in passes for i in part], device=rewards.device)
    return rewards[torch.argsort(order)]  # back to the input order


def _branch_rewards(forward: Any, chosen: list[list[int]], rejected: list[list[int]], pad_id: int, device: Any) -> torch.Tensor:
    """Decoders: rewards (2b, outputs) of b pairs, chosen rows first, with the tokens the two sequences of a pair
    share at their start (the prompt, usually) computed once.

    Each pair becomes one row ``prefix + chosen rest + rejected rest``: the rejected rest attends to the prefix
    but not to the chosen rest, and its positions restart where the prefix ends (``branch_attention_mask``), so each
    reward is the one a row of its own would give. On the HH-RLHF split (pairs within 256 tokens) this computes
    1.48x fewer tokens than two rows per pair. The rows are then cut into length-sorted passes as in ``_rewards``.
    """
    rows = []
    for c, r in zip(chosen, rejected):
        shared = next((k for k, (x, y) in enumerate(zip(c, r)) if x != y), min(len(c), len(r)))
        rows.append((c[:shared], c[shared:], r[shared:]))
    passes = padded_passes([len(p) + len(a) + len(b) for p, a, b in rows], _pass_overhead(device))
    inputs: list[list[torch.Tensor]] = [[], [], [], []]  # input_ids, attention_mask, position_ids, read_at per pass
    for members in passes:
        ids, positions, mask = branch_rows([rows[i] for i in members], pad_id)
        # The chosen sequence's last token (in the prefix when it has no rest of its own), and the rejected one's.
        read_at = torch.tensor([[len(p) + len(a) - 1, len(p) + len(a) + len(b) - 1 if b else len(p) - 1] for p, a, b in (rows[i] for i in members)])
        for store, tensor in zip(inputs, (ids, mask, positions, read_at)):
            store.append(tensor.to(device))
    out = forward(*inputs).float()  # (2b, K): chosen, rejected of each row, in pass order
    order = torch.tensor([i for members in passes for i in members], device=out.device)
    paired = out.view(len(rows), 2, -1)[torch.argsort(order)]  # (b, 2, K) in the input order
    return torch.cat([paired[:, 0], paired[:, 1]])


# ---------------------------------------------------------------------------------------------------------------
# Data (plumbing): rows -> token ids, batches, shards, the normalization reference
# ---------------------------------------------------------------------------------------------------------------


def _load_data(cfg: RewardConfig, run: Run) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Training rows, held-out rows (eval_data, or a seeded eval_fraction of the data) and validation rows
    (validation_data, or carved by prompt from what is left for training: tether.recipes.reward_selection)."""
    kind = "preference" if cfg.objective == "pairwise" else "rating"
    rows = run.rows(cfg.data, kind)
    held: list[dict[str, Any]] = []
    if cfg.eval_data:
        held = run.rows(cfg.eval_data, "preference")
    elif cfg.eval_fraction:
        order = list(range(len(rows)))
        random.Random(cfg.seed).shuffle(order)
        out = set(order[: int(round(cfg.eval_fraction * len(rows)))])
        rows, held = [r for i, r in enumerate(rows) if i not in out], [r for i, r in enumerate(rows) if i in out]
    if cfg.validation_data:
        return rows, held, [r for r in run.rows(cfg.validation_data, "preference") if not r.get("tie")]
    train, validation = carve_validation(cfg, rows, run.say)
    return train, held, validation


def _tokenize(rows: list[dict[str, Any]], tokenizer: Any, cfg: RewardConfig, say: Any) -> dict[str, Any]:
    """Token ids per row (over-long rows skipped and counted), lengths for bucketing, margins, ties, targets."""
    digest = rows_digest(rows)
    if cfg.objective == "rating":
        return _tokenize_ratings(rows, tokenizer, cfg, say, digest)
    if cfg.ties == "skip":
        rows = [r for r in rows if not r.get("tie")]
    prompts = [r["prompt"] for r in rows]
    chosen = encode_many(tokenizer, prompts, [r["chosen"] for r in rows], cfg.max_length)
    rejected = encode_many(tokenizer, prompts, [r["rejected"] for r in rows], cfg.max_length)
    keep = [i for i in range(len(rows)) if chosen[i] is not None and rejected[i] is not None]
    skipped = len(rows) - len(keep)
    _report_skipped(skipped, len(rows), cfg, say)
    kept = [rows[i] for i in keep]
    has_margin = cfg.use_margin and any("margin" in r for r in kept)
    has_tie = any(r.get("tie") for r in kept)
    weight = _row_weights(kept, say) if cfg.use_weight and any(r.get("weight") is not None for r in kept) else None
    if cfg.length_head or cfg.length_correction:  # the completion's tokens (its whole length, even where the prompt was cut)
        counts = {side: completion_tokens(tokenizer, [r["prompt"] for r in kept], [r[side] for r in kept]) for side in ("chosen", "rejected")}
    return {
        "digest": digest,
        "aspects": ["reward"],
        "skipped": skipped,
        "chosen": [chosen[i] for i in keep],
        "rejected": [rejected[i] for i in keep],
        "lengths": [max(len(chosen[i]), len(rejected[i])) for i in keep],
        "margin": torch.tensor([float(r.get("margin", 0.0)) for r in kept]) if has_margin else None,
        "tie": torch.tensor([bool(r.get("tie", False)) for r in kept]) if has_tie else None,
        "weight": weight,
        **({f"{side}_tokens": torch.tensor(counts[side], dtype=torch.float32) for side in ("chosen", "rejected")} if cfg.length_head or cfg.length_correction else {}),
    }


def _row_weights(rows: list[dict[str, Any]], say: Any) -> torch.Tensor:
    """The rows' ``weight`` fields as a (N,) float32 tensor (1 where a row has none), said in one line. Files were
    checked row by row when read (tether.data.rows); this names a bad row of any other source by its prompt."""
    values = []
    for row in rows:
        try:
            values.append(check_weight(row["weight"]) if row.get("weight") is not None else 1.0)
        except RowValueError as exc:
            raise TetherError(f"the training row with prompt {str(row['prompt'])[:60]!r}: {exc}", fix=exc.fix) from None
    weight = torch.tensor(values, dtype=torch.float32)
    if not weight.sum() > 0:
        raise TetherError(f"every one of the {len(rows)} training rows has weight 0: nothing to learn from", fix="give some rows a weight above 0")
    say(f"pairwise loss weighted by the rows' weight: mean {weight.mean().item():.3f}, min {weight.min().item():.3g}, max {weight.max().item():.3g} over {len(rows)} rows")
    return weight


def _tokenize_ratings(rows: list[dict[str, Any]], tokenizer: Any, cfg: RewardConfig, say: Any, digest: str) -> dict[str, Any]:
    aspects = sorted({a for r in rows for a in r["ratings"]})
    seqs = encode_many(tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows], cfg.max_length)
    keep = [i for i, s in enumerate(seqs) if s is not None]
    _report_skipped(len(rows) - len(keep), len(rows), cfg, say)
    values = torch.zeros(len(keep), len(aspects))
    mask = torch.zeros(len(keep), len(aspects))
    for row_no, i in enumerate(keep):
        for a, aspect in enumerate(aspects):
            value = rows[i]["ratings"].get(aspect)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TetherError(f"row {i + 1}: rating {aspect!r} is {value!r}, not a number", fix="ratings must be numbers")
            values[row_no, a], mask[row_no, a] = float(value), 1.0
    targets, mean, std = losses.normalize_ratings(values, mask)
    return {
        "digest": digest,
        "aspects": aspects,
        "skipped": len(rows) - len(keep),
        "seqs": [seqs[i] for i in keep],
        "lengths": [len(seqs[i]) for i in keep],
        "targets": targets,
        "target_mask": mask,
        "rating_scale": {"mean": mean.tolist(), "std": std.tolist()},
    }


def _report_skipped(skipped: int, total: int, cfg: RewardConfig, say: Any) -> None:
    if skipped == total:
        raise TetherError(
            f"all {total} rows are longer than --max-length {cfg.max_length} even without their prompt",
            fix="raise --max-length (the completion must fit whole)",
        )
    if skipped:
        say(f"skipped {skipped} of {total} rows whose completion alone exceeds --max-length {cfg.max_length}")


def _reference_sequences(cfg: RewardConfig, data: dict[str, Any], tokenizer: Any, run: Run) -> tuple[list[list[int]], str, int]:
    """The token ids of the normalization's reference completions (a seeded random sample of at most
    ``normalize_max_rows``), their name, and how many there were before sampling."""
    if cfg.normalize_data is None:
        seqs = data["chosen"] if cfg.objective == "pairwise" else data["seqs"]
        name = "training chosen completions" if cfg.objective == "pairwise" else "training completions"
    else:
        rows = run.rows(cfg.normalize_data, "sft")
        prompts = [r["messages"][:-1] if "messages" in r else r["prompt"] for r in rows]
        completions = [r["messages"][-1:] if "messages" in r else r["completion"] for r in rows]
        seqs = [s for s in encode_many(tokenizer, prompts, completions, cfg.max_length) if s is not None]
        name = str(cfg.normalize_data)
        if not seqs:
            raise TetherError(f"no usable rows in {cfg.normalize_data} for the normalization", fix="check --set normalize_data")
    available = len(seqs)
    if cfg.normalize_max_rows and available > cfg.normalize_max_rows:
        picked = sorted(random.Random(cfg.seed + 2).sample(range(available), cfg.normalize_max_rows))
        seqs = [seqs[i] for i in picked]
    return seqs, name, available
