"""KTO on unpaired feedback (thumbs up / thumbs down), against a frozen reference.

setup → reference log-probs → train → save (``train_kto`` at the bottom); the math is ``tether.math.losses.kto_loss``.

The reference point z0 of KTO (Ethayarajh et al. 2024, Sec. 4.1) is the policy's KL from the reference,
estimated on mismatched pairs (x_i, y_j): here each example i gets a fixed partner j (a cycle through a
seed-shuffled order), so the reference side of the estimate is cached like the rest. z0 is computed over the
whole global batch, in a no-grad pass before the gradient pass, so it is the same for any number of processes or
micro batches.
"""

from __future__ import annotations

import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from tether.config import KTOConfig
from tether.data.batching import plan_batches, split_micro_batches, truncate_prompt
from tether.models.hf import disable_dropout, load_policy
from tether.models.logprobs import TokenLogProbs, score_completions
from tether.models.tokens import encode_texts
from tether.train_dpo import (
    Triple,
    cached_reference_logps,
    compute_reference_logps,
    reference_cache_key,
    reference_scorer,
)
from tether.train_sft import check_kept, reduce_sums, save_policy, skip_ties


def encode_unpaired(tokenizer: Any, rows: list[dict[str, Any]], max_length: int, seed: int) -> tuple[list[Triple], list[bool], list[int]]:
    """Unpaired rows → [(prompt, completion, partner's completion)] ids, the labels, and the indices of the rows kept.

    The partner's completion makes the mismatched pair (x_i, y_j) of the KL estimate. The prompt's start is cut so
    that prompt + either completion fits in ``max_length``.
    """
    prompt_ids, completion_ids = encode_texts(tokenizer, [row["prompt"] for row in rows], [row["completion"] for row in rows])
    kept = [i for i, c in enumerate(completion_ids) if 0 < len(c) < max_length]
    if len(kept) < 2:
        return [], [], kept
    cycle = list(kept)
    random.Random(seed).shuffle(cycle)
    partner = {cycle[k]: cycle[(k + 1) % len(cycle)] for k in range(len(cycle))}
    triples = []
    for i in kept:
        own, other = completion_ids[i], completion_ids[partner[i]]
        triples.append((truncate_prompt(prompt_ids[i], [len(own), len(other)], max_length), own, other))
    return triples, [bool(rows[i]["label"]) for i in kept], kept


def load_kto_rows(spec: str, say: Any = print) -> tuple[list[dict[str, Any]], str, dict[str, int]]:
    """KTO's unpaired rows from ``spec``, the data digest and what was done to them. Preference data (pairs, or the
    multi-annotator and ranking files that decide pairs) is split as TRL's ``unpair_preference_dataset`` does: each
    pair gives a desirable example (chosen) and an undesirable one (rejected); ties are skipped and counted."""
    from tether.data.canonical import rows_digest
    from tether.data.formats import detect_format
    from tether.data.records import read_records
    from tether.data.rows import load_rows
    from tether.store.snapshots import spec_path
    from tether.store.workspace import current_workspace

    path, is_snapshot = spec_path(spec, current_workspace())
    first = next((record for _, record in read_records(path)), {})
    if detect_format(first) not in ("trl", "hh", "pandalm", "ranking"):
        rows = load_rows(path, "unpaired", snapshot=is_snapshot)
        return rows, rows_digest(rows), {}
    pairs = load_rows(path, "preference", snapshot=is_snapshot)
    digest = rows_digest(pairs)  # of the pairs as given, ties included: the snapshot's digest
    pairs, ties = skip_ties(pairs, "KTO would call its chosen answer desirable and the other undesirable", say)
    rows = [
        {"prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen"}
        for pair in pairs
        for side in ("chosen", "rejected")
    ]
    say(f"note: KTO on {len(pairs)} preference pairs: each split into a desirable (chosen) and an undesirable (rejected) example, as TRL does")
    return rows, digest, {"pairs_split": len(pairs), "ties_skipped": ties}


def train_kto(cfg: KTOConfig, *, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` with KTO on the unpaired rows of ``cfg.data``; returns the final metrics."""
    from tether.errors import TetherError
    from tether.math.losses import kto_loss
    from tether.models.hf import load_causal_lm, load_tokenizer
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
    accelerator, n_micro, micro_size = make_accelerator(cfg)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, chat_template=cfg.chat_template, say=accelerator.print)
    rows, data_digest, unpaired_from = load_kto_rows(cfg.data, accelerator.print)
    triples, desirable, kept = encode_unpaired(tokenizer, rows, cfg.max_length, cfg.seed)
    if 0 < len(kept) < 2:
        raise TetherError("KTO needs at least 2 examples (the KL reference point uses mismatched pairs)", fix="add rows to --data")
    check_kept(len(rows), len(kept), cfg, "example")
    lengths = [len(p) + len(c) for p, c, _ in triples]
    total_steps = total_optimizer_steps(len(triples), cfg)
    batches = plan_batches(lengths, cfg, total_steps)
    checkpointer = Checkpointer(cfg, accelerator, data_digest=data_digest, total_steps=total_steps)  # checks the folder

    model = load_policy(cfg, tokenizer)
    disable_dropout(model)
    policy = TokenLogProbs(model)
    optimizer = make_optimizer(policy, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    pad_id = tokenizer.pad_token_id

    ref_logps = ref_module = None  # ref_logps (N, 2): [completion, partner's completion]
    if cfg.precompute_ref:
        module, as_reference = reference_scorer(cfg, policy, accelerator)
        key = reference_cache_key(cfg, "unpaired", data_digest, triples)
        ref_logps = cached_reference_logps(
            cfg, accelerator, key,
            lambda: compute_reference_logps(module, triples, pad_id, cfg.ref_batch_size or micro_size, accelerator, reference=as_reference),
        )
        del module
    elif not cfg.lora_r:
        ref = TokenLogProbs(load_causal_lm(cfg.reference_model or cfg.model)).requires_grad_(False)
        disable_dropout(ref)
        ref_module = accelerator.prepare_model(ref, evaluation_mode=True)

    def reference_logps(indices: list[int], column: int) -> torch.Tensor:
        """Reference log-probs of the completions (column 0) or the partners' completions (column 1)."""
        if ref_logps is not None:
            return ref_logps[indices, column].to(accelerator.device)
        pairs = [(triples[i][0], triples[i][1 + column]) for i in indices]
        with torch.no_grad():
            source = ref_module if ref_module is not None else policy
            return score_completions(source, pairs, pad_id, accelerator.device, reference=ref_module is None)

    start_step = checkpointer.restore().get("step", 0)
    logger = MetricsLogger(cfg.output_dir, cfg, run_name=f"kto-{Path(cfg.output_dir).name}", accelerator=accelerator)
    world = accelerator.num_processes

    # --- train -----------------------------------------------------------------------------------------------
    policy.train()
    metrics: dict[str, float] = {}
    started, seen = time.perf_counter(), 0
    with Progress(total_steps, "kto", enabled=cfg.progress and accelerator.is_main_process, completed=start_step) as bar:
        for step in range(start_step, total_steps):
            batch = batches[step]
            micro_batches = split_micro_batches(shard_batch(batch, accelerator), n_micro, lengths)
            # ALGO LOGIC: z0 = KL estimate on the mismatched pairs (x_i, y_partner(i)) of the global batch, no grad.
            kl_sum = 0.0
            with torch.no_grad():
                for micro in micro_batches:
                    partner_logps = score_completions(policy, [(triples[i][0], triples[i][2]) for i in micro], pad_id, accelerator.device)
                    kl_sum += (partner_logps - reference_logps(micro, 1)).sum().item()
            z0 = torch.tensor(reduce_sums(accelerator, {"kl": kl_sum})["kl"] / len(batch), device=accelerator.device)
            sums = {"loss": 0.0, "chosen_rewards": 0.0, "rejected_rewards": 0.0, "chosen_logps": 0.0, "rejected_logps": 0.0, "n_chosen": 0.0}
            for k, micro in enumerate(micro_batches):
                sync = k == len(micro_batches) - 1
                with nullcontext() if sync else accelerator.no_sync(policy):
                    # ALGO LOGIC: the KTO value of each example against z0.
                    logps = score_completions(policy, [(triples[i][0], triples[i][1]) for i in micro], pad_id, accelerator.device)
                    ref = reference_logps(micro, 0)
                    labels = torch.tensor([desirable[i] for i in micro], device=logps.device)
                    loss, _ = kto_loss(logps, ref, labels, z0, beta=cfg.beta, desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
                    accelerator.backward(loss * len(micro) * world / len(batch))
                rewards = (cfg.beta * (logps - ref)).detach()
                sums["loss"] += loss.item() * len(micro)
                sums["chosen_rewards"] += rewards[labels].sum().item()
                sums["rejected_rewards"] += rewards[~labels].sum().item()
                sums["chosen_logps"] += logps.detach()[labels].sum().item()
                sums["rejected_logps"] += logps.detach()[~labels].sum().item()
                sums["n_chosen"] += labels.sum().item()
            grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # --- metrics and checkpoints (plumbing) ---
            t = reduce_sums(accelerator, sums)
            n_chosen, n_rejected = t["n_chosen"], len(batch) - t["n_chosen"]
            seen += len(batch)
            metrics = {
                "train/loss": t["loss"] / len(batch),
                "rewards/chosen": t["chosen_rewards"] / max(n_chosen, 1),
                "rewards/rejected": t["rejected_rewards"] / max(n_rejected, 1),
                "rewards/margins": t["chosen_rewards"] / max(n_chosen, 1) - t["rejected_rewards"] / max(n_rejected, 1),
                "logps/chosen": t["chosen_logps"] / max(n_chosen, 1),
                "logps/rejected": t["rejected_logps"] / max(n_rejected, 1),
                "objective/kl": max(z0.item(), 0.0),
                "train/grad_norm": float(grad_norm),
                "train/learning_rate": scheduler.get_last_lr()[0],
                "train/examples_per_second": seen / (time.perf_counter() - started),
            }
            if (step + 1) % cfg.logging_steps == 0 or step + 1 == total_steps:
                logger.log(step + 1, metrics)
            bar.advance(loss=metrics["train/loss"], kl=metrics["objective/kl"])
            if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < total_steps:
                checkpointer.save(step + 1)
            if stop_after is not None and step + 1 >= stop_after:
                logger.close()
                return metrics

    # --- save ------------------------------------------------------------------------------------------------
    logger.close()
    extra = {"examples": len(triples), "desirable": sum(desirable), "beta": cfg.beta, **unpaired_from}
    save_policy(accelerator, policy, tokenizer, cfg, kind="kto", data_digest=data_digest, metrics=metrics, extra=extra)
    return metrics
