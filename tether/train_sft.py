"""Supervised fine-tuning: maximize log p(completion | prompt) on logged demonstrations.

setup → train → save, in one loop you can read top to bottom (``train_sft`` at the bottom). The pieces above it
are shared with the offline preference trainers (``train_dpo``, ``train_kto``):

- ``encode_rows``: rows → (prompt ids, completion ids), through the tokenizer's chat template for message lists;
  plain completions get an EOS; truncation keeps the prompt's end and the whole completion.
- ``collate_completions``: examples → one padded (or packed) batch, with the flat positions whose next-token
  log-probs count (the completion tokens) and which sequence each belongs to.
- ``TokenLogProbs``: the model wrapper. It runs the transformer and applies the LM head only at the scored
  positions, so no (B, T, V) logits tensor is ever built: prompt tokens cost no vocabulary projection.
- ``plan_batches`` / ``split_micro_batches``: the global batches of every step, fixed by the seed (resume relies
  on it), and the per-process micro batches (sorted by length inside a batch: less padding, same gradient).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from tether.config import SFTConfig, TrainConfig
from tether.data.batching import plan_batches, split_micro_batches, truncate_prompt
from tether.errors import TetherError
from tether.models.hf import load_policy
from tether.models.logprobs import TokenLogProbs, collate_completions
from tether.models.tokens import encode_texts, split_messages

# ---------------------------------------------------------------------------------------------------------------
# Data: rows -> token ids
# ---------------------------------------------------------------------------------------------------------------


def encode_sft_rows(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """SFT rows → [(prompt ids, completion ids)] and the indices of the rows kept (completion too long: dropped)."""
    prompts, completions = [], []
    for row in rows:
        prompt, completion = split_messages(row["messages"]) if "messages" in row else (row["prompt"], row["completion"])
        prompts.append(prompt)
        completions.append(completion)
    prompt_ids, completion_ids = encode_texts(tokenizer, prompts, completions)
    examples, kept = [], []
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        cut = truncate_prompt(p, [len(c)], max_length)
        if cut is not None and c:
            examples.append((cut, c))
            kept.append(i)
    return examples, kept


def skip_ties(rows: list[dict[str, Any]], reading: str, say: Any = print) -> tuple[list[dict[str, Any]], int]:
    """The rows that are not ties, and how many ties were skipped (with a note). A tie (``"tie": true``) says neither
    answer is better; ``reading`` says how the trainer would misread it (e.g. "DPO would read it as chosen > rejected")."""
    kept = [row for row in rows if not row.get("tie")]
    ties = len(rows) - len(kept)
    if ties:
        say(f"note: skipped {ties} tie(s) of {len(rows)} rows: a tie prefers neither answer ({reading}); counted as ties_skipped in tether.json")
    if rows and not kept:
        raise TetherError(f"all {len(rows)} rows are ties: nothing says which answer is better", fix="give preference rows with a winner, or a snapshot made without --keep-ties")
    return kept, ties


def check_kept(n_rows: int, n_kept: int, cfg: TrainConfig, what: str) -> None:
    if n_kept == 0:
        raise TetherError(f"no {what} fits in --max-length {cfg.max_length} (every completion is longer)", fix="raise --max-length")
    if n_kept < n_rows:
        print(f"note: skipped {n_rows - n_kept} of {n_rows} {what}s whose completion alone exceeds --max-length {cfg.max_length}")


# ---------------------------------------------------------------------------------------------------------------
# Batches: token ids -> tensors with the scored positions
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Model: log-probs at the scored positions only
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Batch plan: which examples each step sees
# ---------------------------------------------------------------------------------------------------------------


def reduce_sums(accelerator: Any, sums: dict[str, float]) -> dict[str, float]:
    """Sum each value over the processes (one collective for the whole dict)."""
    if accelerator.num_processes == 1:
        return sums
    keys = sorted(sums)
    totals = accelerator.reduce(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=accelerator.device), "sum")
    return dict(zip(keys, totals.tolist()))


def save_policy(accelerator: Any, policy: Any, tokenizer: Any, cfg: Any, *, kind: str, data_digest: str, metrics: dict[str, Any], extra: dict[str, Any]) -> Path:
    """The trained model as a Hugging Face folder + tether.json; with LoRA, the adapter or (``merge``) merged weights."""
    from tether.training import save_model_dir

    lm = accelerator.unwrap_model(policy).lm
    if cfg.lora_r and cfg.merge:
        lm = lm.merge_and_unload()
    return save_model_dir(lm, tokenizer, cfg.output_dir, kind=kind, cfg=cfg, data_digest=data_digest, metrics=metrics, extra=extra, accelerator=accelerator)


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


def train_sft(cfg: SFTConfig, *, stop_after: int | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.data``; returns the final metrics. ``stop_after`` ends the run after that
    step without saving the model (a simulated preemption, for resume tests)."""
    from tether.data.canonical import rows_digest
    from tether.models.hf import load_tokenizer
    from tether.store.snapshots import training_rows
    from tether.store.workspace import current_workspace
    from tether.training import (
        Checkpointer,
        MetricsLogger,
        Progress,
        make_accelerator,
        make_optimizer,
        make_scheduler,
        set_seed,
        shard_batch,
        total_optimizer_steps,
    )

    # --- setup -----------------------------------------------------------------------------------------------
    accelerator, n_micro, _ = make_accelerator(cfg)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, chat_template=cfg.chat_template, say=accelerator.print)
    rows = training_rows(cfg.data, "sft", workspace=current_workspace())
    data_digest = rows_digest(rows)
    rows, ties = skip_ties(rows, "SFT would learn its chosen answer as a good one", accelerator.print)  # preference rows: their chosen answers
    examples, kept = encode_sft_rows(tokenizer, rows, cfg.max_length)
    check_kept(len(rows), len(kept), cfg, "example")
    lengths = [len(p) + len(c) for p, c in examples]
    total_steps = total_optimizer_steps(len(examples), cfg)
    batches = plan_batches(lengths, cfg, total_steps)

    checkpointer = Checkpointer(cfg, accelerator, data_digest=data_digest, total_steps=total_steps)  # checks the folder

    policy = TokenLogProbs(load_policy(cfg, tokenizer))
    optimizer = make_optimizer(policy, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # not prepare(): that would step it once per process
    start_step = checkpointer.restore().get("step", 0)
    logger = MetricsLogger(cfg.output_dir, cfg, run_name=f"sft-{Path(cfg.output_dir).name}", accelerator=accelerator)
    world = accelerator.num_processes
    pack_to = cfg.max_length if cfg.packing else None

    # --- train -----------------------------------------------------------------------------------------------
    policy.train()
    metrics: dict[str, float] = {}
    started, seen = time.perf_counter(), 0
    with Progress(total_steps, "sft", enabled=cfg.progress and accelerator.is_main_process, completed=start_step) as bar:
        for step in range(start_step, total_steps):
            batch = batches[step]
            # ALGO LOGIC: token-level mean NLL over the completion tokens of the whole global batch.
            n_tokens = sum(len(examples[i][1]) if cfg.completion_only_loss else lengths[i] - 1 for i in batch)
            micro_batches = split_micro_batches(shard_batch(batch, accelerator), n_micro, lengths)
            sums = {"nll": 0.0, "tokens": 0.0}
            for k, micro in enumerate(micro_batches):
                scored = collate_completions([examples[i] for i in micro], tokenizer.pad_token_id, pack_to=pack_to, score_prompt=not cfg.completion_only_loss)
                sync = k == len(micro_batches) - 1
                with nullcontext() if sync else accelerator.no_sync(policy):
                    token_logps = policy(**scored.model_inputs(accelerator.device))  # (N,)
                    nll = -token_logps.sum()
                    # DDP averages gradients over processes: scale so the result is the global token mean.
                    accelerator.backward(nll * world / n_tokens)
                sums["nll"] += nll.item()
                sums["tokens"] += token_logps.numel()
            grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # --- metrics and checkpoints (plumbing) ---
            totals = reduce_sums(accelerator, sums)
            seen += len(batch)
            metrics = {
                "train/loss": totals["nll"] / max(totals["tokens"], 1.0),
                "train/grad_norm": float(grad_norm),
                "train/learning_rate": scheduler.get_last_lr()[0],
                "train/examples_per_second": seen / (time.perf_counter() - started),
            }
            if (step + 1) % cfg.logging_steps == 0 or step + 1 == total_steps:
                logger.log(step + 1, metrics)
            bar.advance(loss=metrics["train/loss"])
            if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < total_steps:
                checkpointer.save(step + 1)
            if stop_after is not None and step + 1 >= stop_after:
                logger.close()
                return metrics

    # --- save ------------------------------------------------------------------------------------------------
    logger.close()
    save_policy(accelerator, policy, tokenizer, cfg, kind="sft", data_digest=data_digest, metrics=metrics, extra={"examples": len(examples), "ties_skipped": ties})
    return metrics
