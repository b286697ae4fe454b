"""KTO on unpaired feedback (thumbs up / thumbs down), against a frozen reference.

setup -> reference log-probs -> train -> save, in one loop (``train_kto``); the math is ``tether.math.losses.kto_loss``.

The reference point z0 of KTO (Ethayarajh et al. 2024, Sec. 4.1) is the policy's KL from the reference,
estimated on mismatched pairs (x_i, y_j): here each example i gets a fixed partner j (a cycle through a
seed-shuffled order), so the reference side of the estimate is cached like the rest. z0 is computed over the
whole global batch, in a no-grad pass before the gradient pass, so it is the same for any number of processes or
micro batches.
"""


from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from tether.data.batching import plan_batches, shard, split_micro_batches, truncate_prompt
from tether.data.canonical import rows_digest
from tether.data.formats import detect_format
from tether.data.records import read_records
from tether.data.rows import load_rows, skip_ties
from tether.errors import TetherError
from tether.math.losses import kto_loss
from tether.models.hf import load_policy, load_tokenizer
from tether.models.logprobs import TokenLogProbs, Triple, score_completions
from tether.models.tokens import encode_texts
from tether.recipes.configs import KTOConfig
from tether.recipes.reference_cache import Reference, setup_reference
from tether.recipes.runtime import Run, StepHook, TrainResult, check_kept, total_optimizer_steps


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


def load_kto_rows(spec: str, say: Any = print, workspace: Any = None) -> tuple[list[dict[str, Any]], str, dict[str, int]]:
    """KTO's unpaired rows from ``spec`` (a file, or ``snapshot:NAME`` in ``workspace``), the data digest and what was done to them. Preference data (pairs, or the
    multi-annotator and ranking files that decide pairs) is split as TRL's ``unpair_preference_dataset`` does: each
    pair gives a desirable example (chosen) and an undesirable one (rejected); ties are skipped and counted."""
    if str(spec).startswith("snapshot:"):
        from tether.store.snapshots import (
            spec_path,  # the store only for a snapshot (SQLAlchemy: 0.44 s of start-up)
        )

        path, is_snapshot = spec_path(spec, workspace)
    else:
        path, is_snapshot = Path(spec), False
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


def reference_logps(reference: Reference, triples: list[Triple], indices: list[int], column: int, pad_id: int, device: Any) -> torch.Tensor:
    """Reference log-probs of the completions (column 0) or the partners' completions (column 1) of ``indices``."""
    if reference.logps is not None:
        return reference.logps[indices, column].to(device)
    with torch.no_grad():
        pairs = [(triples[i][0], triples[i][1 + column]) for i in indices]
        return score_completions(reference.module, pairs, pad_id, device, reference=reference.disable_adapter)


def train_kto(cfg: KTOConfig, *, workspace: Any = None, on_step: StepHook | None = None) -> TrainResult:
    """Train ``cfg.model`` with KTO on the unpaired rows of ``cfg.data`` (a file, or ``snapshot:NAME`` in
    ``workspace``); ``on_step(step, metrics)`` after every optimizer step."""
    # --- setup (plumbing) ------------------------------------------------------------------------------------
    run = Run(cfg, "kto", workspace=workspace, on_step=on_step)
    tokenizer = load_tokenizer(cfg.model, chat_template=cfg.chat_template, say=run.say)
    rows, data_digest, unpaired_from = load_kto_rows(cfg.data, run.say, workspace)
    triples, desirable, kept = encode_unpaired(tokenizer, rows, cfg.max_length, cfg.seed)
    if 0 < len(kept) < 2:
        raise TetherError("KTO needs at least 2 examples (the KL reference point uses mismatched pairs)", fix="add rows to --data")
    check_kept(len(rows), len(kept), cfg, "example")
    lengths = [len(p) + len(c) for p, c, _ in triples]
    total_steps = total_optimizer_steps(len(triples), cfg)
    batches = plan_batches(lengths, cfg, total_steps)
    run.plan(data_digest, total_steps)
    (policy,) = run.prepare(TokenLogProbs(load_policy(cfg, tokenizer, dropout=False), chunk_tokens=cfg.lm_head_chunk))
    pad_id, accelerator = tokenizer.pad_token_id, run.accelerator
    reference = setup_reference(cfg, run, policy, "unpaired", data_digest, triples, pad_id)  # (N, 2): completion, partner's
    start_step = run.start()["step"]
    device = accelerator.device

    # --- train -----------------------------------------------------------------------------------------------
    policy.train()
    metrics: dict[str, float] = {}
    started, seen = time.perf_counter(), 0
    for step in range(start_step, total_steps):
        batch = batches[step]
        micro_batches = split_micro_batches(shard(batch, accelerator.process_index, run.world), run.grad_accum, lengths)
        # ALGO LOGIC: z0 = KL estimate on the mismatched pairs (x_i, y_partner(i)) of the global batch, no grad.
        kl_sum = 0.0
        with torch.no_grad():
            for micro in micro_batches:
                partner_logps = score_completions(policy, [(triples[i][0], triples[i][2]) for i in micro], pad_id, device)
                kl_sum += (partner_logps - reference_logps(reference, triples, micro, 1, pad_id, device)).sum().item()
        z0 = torch.tensor(run.reduce({"kl": kl_sum})["kl"] / len(batch), device=device)
        sums = {"loss": 0.0, "chosen_rewards": 0.0, "rejected_rewards": 0.0, "chosen_logps": 0.0, "rejected_logps": 0.0, "n_chosen": 0.0}
        for k, micro in enumerate(micro_batches):
            with run.accumulating(last=k == len(micro_batches) - 1):
                # ALGO LOGIC: the KTO value of each example against z0.
                logps = score_completions(policy, [(triples[i][0], triples[i][1]) for i in micro], pad_id, device)
                ref = reference_logps(reference, triples, micro, 0, pad_id, device)
                labels = torch.tensor([desirable[i] for i in micro], device=logps.device)
                loss, _ = kto_loss(logps, ref, labels, z0, beta=cfg.beta, desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
                accelerator.backward(loss * len(micro) * run.world / len(batch))
            rewards = (cfg.beta * (logps - ref)).detach()
            sums["loss"] += loss.item() * len(micro)
            sums["chosen_rewards"] += rewards[labels].sum().item()
            sums["rejected_rewards"] += rewards[~labels].sum().item()
            sums["chosen_logps"] += logps.detach()[labels].sum().item()
            sums["rejected_logps"] += logps.detach()[~labels].sum().item()
            sums["n_chosen"] += labels.sum().item()
        grad_norm = run.optimizer_step()
        # --- metrics and checkpoints (plumbing) ---
        t = run.reduce(sums)
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
            "train/grad_norm": grad_norm,
            "train/learning_rate": run.learning_rate,
            "train/examples_per_second": seen / (time.perf_counter() - started),
        }
        run.end_step(step + 1, metrics, loss=metrics["train/loss"], kl=metrics["objective/kl"])

    # --- save ------------------------------------------------------------------------------------------------
    extra = {"examples": len(triples), "desirable": sum(desirable), "beta": cfg.beta, **unpaired_from}
    return run.save(accelerator.unwrap_model(policy).lm, tokenizer, kind="kto", metrics=metrics, extra=extra)
