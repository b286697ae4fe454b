"""Supervised fine-tuning: maximize log p(completion | prompt) on logged demonstrations.

setup -> train -> save, in one loop that reads top to bottom (``train_sft``). Rows become (prompt ids, completion
ids) through the tokenizer's chat template (``encode_sft_rows``; truncation keeps the prompt's end and the whole
completion); each global batch (fixed by the seed: resume relies on it) is cut into per-process micro batches sorted
by length (less padding, same gradient); ``TokenLogProbs`` applies the LM head only at the completion tokens.
"""

from __future__ import annotations

import time
from typing import Any

from tether.data.batching import plan_batches, shard, split_micro_batches, truncate_prompt
from tether.data.canonical import rows_digest
from tether.data.rows import skip_ties
from tether.models.hf import load_policy, load_tokenizer
from tether.models.logprobs import TokenLogProbs, collate_completions
from tether.models.tokens import encode_texts, split_messages
from tether.recipes.configs import SFTConfig
from tether.recipes.runtime import Run, StepHook, TrainResult, check_kept, total_optimizer_steps


def encode_sft_rows(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """SFT rows -> [(prompt ids, completion ids)] and the indices of the rows kept (completion too long: dropped)."""
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


def train_sft(cfg: SFTConfig, *, workspace: Any = None, on_step: StepHook | None = None) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.data`` (a file, or ``snapshot:NAME`` in ``workspace``); ``on_step(step, metrics)``
    after every optimizer step."""
    # --- setup (plumbing) ------------------------------------------------------------------------------------
    run = Run(cfg, "sft", workspace=workspace, on_step=on_step)
    tokenizer = load_tokenizer(cfg.model, chat_template=cfg.chat_template, say=run.say)
    rows = run.rows(cfg.data, "sft")
    data_digest = rows_digest(rows)
    rows, ties = skip_ties(rows, "SFT would learn its chosen answer as a good one", run.say)  # preference rows: their chosen answers
    examples, kept = encode_sft_rows(tokenizer, rows, cfg.max_length)
    check_kept(len(rows), len(kept), cfg, "example")
    lengths = [len(p) + len(c) for p, c in examples]
    total_steps = total_optimizer_steps(len(examples), cfg)
    batches = plan_batches(lengths, cfg, total_steps)
    run.plan(data_digest, total_steps)
    (policy,) = run.prepare(TokenLogProbs(load_policy(cfg, tokenizer), chunk_tokens=cfg.lm_head_chunk))
    start_step = run.start()["step"]
    accelerator, pack_to = run.accelerator, cfg.max_length if cfg.packing else None

    # --- train -----------------------------------------------------------------------------------------------
    policy.train()
    metrics: dict[str, float] = {}
    started, seen = time.perf_counter(), 0
    for step in range(start_step, total_steps):
        batch = batches[step]
        # ALGO LOGIC: token-level mean NLL over the completion tokens of the whole global batch.
        n_tokens = sum(len(examples[i][1]) if cfg.completion_only_loss else lengths[i] - 1 for i in batch)
        micro_batches = split_micro_batches(shard(batch, accelerator.process_index, run.world), run.grad_accum, lengths)
        sums = {"nll": 0.0, "tokens": 0.0}
        for k, micro in enumerate(micro_batches):
            scored = collate_completions([examples[i] for i in micro], tokenizer.pad_token_id, pack_to=pack_to, score_prompt=not cfg.completion_only_loss)
            with run.accumulating(last=k == len(micro_batches) - 1):
                token_logps = policy(**scored.model_inputs(accelerator.device))  # (N,)
                nll = -token_logps.sum()
                # DDP averages gradients over processes: scale so the result is the global token mean.
                accelerator.backward(nll * run.world / n_tokens)
            sums["nll"] += nll.item()
            sums["tokens"] += token_logps.numel()
        grad_norm = run.optimizer_step()
        # --- metrics and checkpoints (plumbing) ---
        totals = run.reduce(sums)
        seen += len(batch)
        metrics = {
            "train/loss": totals["nll"] / max(totals["tokens"], 1.0),
            "train/grad_norm": grad_norm,
            "train/learning_rate": run.learning_rate,
            "train/examples_per_second": seen / (time.perf_counter() - started),
        }
        run.end_step(step + 1, metrics, loss=metrics["train/loss"])

    # --- save ------------------------------------------------------------------------------------------------
    return run.save(accelerator.unwrap_model(policy).lm, tokenizer, kind="sft", metrics=metrics, extra={"examples": len(examples), "ties_skipped": ties})
