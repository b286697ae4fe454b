"""Offline preference optimization on pairs: DPO, IPO and cDPO, straight from logged human preferences.

setup → reference log-probs → train → save (``train_dpo`` at the bottom); the math is in ``tether.math.losses``.

Speed comes from doing less work, not from different math:
- one row per pair, ``prompt + chosen + rejected``: the prompt runs through the transformer once, and a custom
  attention mask lets the rejected answer see the prompt but not the chosen answer (its positions restart after
  the prompt). The log-probs equal those of two separate sequences; the prompt's tokens are not computed twice.
- the LM head runs on the answer tokens only (``TokenLogProbs``).
- reference log-probs are computed once, before training, in one pass, and cached on disk keyed by the data, the
  reference model, the tokenizer's output and the truncation; with LoRA the reference is the policy with its
  adapter disabled, so one model sits in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from tether.config import DPOConfig
from tether.data.batching import plan_batches, split_micro_batches, truncate_prompt
from tether.models.hf import disable_dropout, load_policy
from tether.models.logprobs import TokenLogProbs, score_pairs
from tether.models.tokens import encode_texts
from tether.train_sft import check_kept, reduce_sums, save_policy, skip_ties

Triple = tuple[list[int], list[int], list[int]]  # (prompt ids, first answer ids, second answer ids)

# ---------------------------------------------------------------------------------------------------------------
# Data: preference rows -> (prompt, chosen, rejected) ids
# ---------------------------------------------------------------------------------------------------------------


def encode_pairs(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> tuple[list[Triple], list[int]]:
    """Preference rows → [(prompt, chosen, rejected) ids] and the indices of the rows kept.

    Each of prompt+chosen and prompt+rejected fits in ``max_length``: the prompt's start is cut (the same cut for
    both answers); a pair whose longer answer alone fills ``max_length`` is dropped.
    """
    prompts = [row["prompt"] for row in rows]
    prompt_ids, chosen_ids = encode_texts(tokenizer, prompts, [row["chosen"] for row in rows])
    _, rejected_ids = encode_texts(tokenizer, prompts, [row["rejected"] for row in rows])
    triples, kept = [], []
    for i, (p, c, r) in enumerate(zip(prompt_ids, chosen_ids, rejected_ids)):
        cut = truncate_prompt(p, [len(c), len(r)], max_length)
        if cut is not None and c and r:
            triples.append((cut, c, r))
            kept.append(i)
    return triples, kept


# ---------------------------------------------------------------------------------------------------------------
# Batches: one row per pair, the prompt shared by both answers
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Reference log-probs: one pass, cached on disk
# ---------------------------------------------------------------------------------------------------------------


def model_identity(path: str) -> str:
    """sha256 of a local model folder's config and weight files (a hub id stands for itself)."""
    folder = Path(path)
    if not folder.is_dir():
        return f"hub:{path}"
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.name == "config.json" or file.suffix in (".safetensors", ".bin", ".pt") or file.name == "adapter_config.json":
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as fh:
                while chunk := fh.read(1 << 24):
                    digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    from tether.store.workspace import find_workspace

    root = find_workspace()
    if root is not None and (root / "tether.toml").exists():
        return root / "artifacts" / "cache" / "ref-logps"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tether" / "ref-logps"


def reference_cache_key(cfg: Any, kind: str, data_digest: str, triples: list[Triple], **extra: Any) -> dict[str, Any]:
    """What the cached values depend on: the data, the reference model, the tokens (tokenizer, template and
    truncation all show there), max_length, the truncation rule and the precision."""
    tokens = hashlib.sha256(json.dumps(triples, separators=(",", ":")).encode()).hexdigest()
    return {
        "kind": kind,
        "data_digest": data_digest,
        "reference": model_identity(cfg.reference_model or cfg.model),
        "tokens_digest": tokens,
        "max_length": cfg.max_length,
        "truncation": "keep_prompt_end_and_whole_completion",
        "bf16": cfg.bf16,
        "format": 1,
        **extra,
    }


def compute_reference_logps(module: Any, triples: list[Triple], pad_id: int, batch_size: int, accelerator: Any, *, reference: bool) -> torch.Tensor:
    """(N, 2) reference log-probs of both answers of every triple, in one no-grad pass split over the processes."""
    order = sorted(range(len(triples)), key=lambda i: sum(map(len, triples[i])))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    values = torch.zeros((len(triples), 2), dtype=torch.float64, device=accelerator.device)
    with torch.no_grad(), accelerator.autocast():
        for batch in batches[accelerator.process_index :: accelerator.num_processes]:
            logps = score_pairs(module, [triples[i] for i in batch], pad_id, accelerator.device, reference=reference)
            values[torch.tensor(batch, device=values.device)] = logps.double()
    if accelerator.num_processes > 1:  # each row was computed by exactly one process: a sum gathers them
        values = accelerator.reduce(values, "sum")
    return values.float().cpu()


def cached_reference_logps(cfg: Any, accelerator: Any, key: dict[str, Any], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The (N, 2) reference log-probs from the cache when ``key`` matches, else computed once and stored."""
    cache_dir = Path(cfg.ref_cache_dir or default_cache_dir())
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir / f"{key['kind']}-{name}.pt"
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("key") == json.dumps(key, sort_keys=True):
            if accelerator.is_main_process:
                print(f"reference log-probs: cached ({path})")
            return stored["logps"]
    started = time.perf_counter()
    values = compute()
    if accelerator.is_main_process:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"key": json.dumps(key, sort_keys=True), "logps": values}, tmp)
        os.replace(tmp, path)
        print(f"reference log-probs: computed in {time.perf_counter() - started:.1f}s, cached in {path}")
    accelerator.wait_for_everyone()
    return values


def reference_scorer(cfg: Any, policy: Any, accelerator: Any) -> tuple[Any, bool]:
    """(module, reference flag) that scores with the reference: the policy with its adapter disabled (LoRA), the
    untrained policy itself (call before any update), or a separately loaded ``reference_model``."""
    if cfg.reference_model and cfg.reference_model != cfg.model:
        from tether.models.hf import load_causal_lm

        ref = TokenLogProbs(load_causal_lm(cfg.reference_model)).requires_grad_(False)
        disable_dropout(ref)
        return accelerator.prepare_model(ref, evaluation_mode=True), False
    return policy, bool(cfg.lora_r)


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


def train_dpo(cfg: DPOConfig, *, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on the preference pairs of ``cfg.data`` with DPO, IPO or cDPO; returns the final
    metrics. ``stop_after`` ends the run after that step without saving (a simulated preemption, for tests)."""
    from tether.data.canonical import rows_digest
    from tether.math.losses import dpo_loss, ipo_loss
    from tether.models.hf import load_causal_lm, load_tokenizer
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
    accelerator, n_micro, micro_size = make_accelerator(cfg)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, chat_template=cfg.chat_template, say=accelerator.print)
    rows = training_rows(cfg.data, "preference", workspace=current_workspace())
    data_digest = rows_digest(rows)  # of every row, ties included: the snapshot's digest
    rows, ties = skip_ties(rows, f"{cfg.loss.upper()} would read it as chosen > rejected", accelerator.print)
    triples, kept = encode_pairs(tokenizer, rows, cfg.max_length)
    check_kept(len(rows), len(kept), cfg, "pair")
    lengths = [len(p) + len(c) + len(r) for p, c, r in triples]
    total_steps = total_optimizer_steps(len(triples), cfg)
    batches = plan_batches(lengths, cfg, total_steps)
    checkpointer = Checkpointer(cfg, accelerator, data_digest=data_digest, total_steps=total_steps)  # checks the folder

    model = load_policy(cfg, tokenizer)
    disable_dropout(model)
    policy = TokenLogProbs(model)
    optimizer = make_optimizer(policy, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # not prepare(): that would step it once per process
    pad_id = tokenizer.pad_token_id

    # Reference log-probs, before any update (and before a checkpoint is loaded): the policy is still the reference.
    ref_logps = ref_module = None
    if cfg.precompute_ref:
        module, as_reference = reference_scorer(cfg, policy, accelerator)
        key = reference_cache_key(cfg, "pairs", data_digest, triples)
        ref_logps = cached_reference_logps(
            cfg, accelerator, key,
            lambda: compute_reference_logps(module, triples, pad_id, cfg.ref_batch_size or micro_size, accelerator, reference=as_reference),
        )  # (N, 2): chosen, rejected
        del module
    elif not cfg.lora_r:  # on the fly without LoRA: a frozen second model
        ref = TokenLogProbs(load_causal_lm(cfg.reference_model or cfg.model)).requires_grad_(False)
        disable_dropout(ref)
        ref_module = accelerator.prepare_model(ref, evaluation_mode=True)

    start_step = checkpointer.restore().get("step", 0)
    logger = MetricsLogger(cfg.output_dir, cfg, run_name=f"{cfg.loss}-{Path(cfg.output_dir).name}", accelerator=accelerator)
    world = accelerator.num_processes

    # --- train -----------------------------------------------------------------------------------------------
    policy.train()
    metrics: dict[str, float] = {}
    started, seen = time.perf_counter(), 0
    with Progress(total_steps, cfg.loss, enabled=cfg.progress and accelerator.is_main_process, completed=start_step) as bar:
        for step in range(start_step, total_steps):
            batch = batches[step]
            micro_batches = split_micro_batches(shard_batch(batch, accelerator), n_micro, lengths)
            sums: dict[str, float] = {}
            for k, micro in enumerate(micro_batches):
                micro_triples = [triples[i] for i in micro]
                sync = k == len(micro_batches) - 1
                with nullcontext() if sync else accelerator.no_sync(policy):
                    # ALGO LOGIC: chosen and rejected in one forward pass, then the loss of the pair.
                    logps = score_pairs(policy, micro_triples, pad_id, accelerator.device)  # (b, 2)
                    if ref_logps is not None:
                        ref = ref_logps[micro].to(logps.device)
                    else:
                        with torch.no_grad():
                            source = ref_module if ref_module is not None else policy
                            ref = score_pairs(source, micro_triples, pad_id, accelerator.device, reference=ref_module is None)
                    if cfg.loss == "ipo":  # IPO on per-token average log-probs (see ipo_loss)
                        n_tokens = torch.tensor([[len(c), len(r)] for _, c, r in micro_triples], dtype=logps.dtype, device=logps.device)
                        loss, stats = ipo_loss(*(logps / n_tokens).unbind(1), *(ref / n_tokens).unbind(1), beta=cfg.beta)
                    else:
                        smoothing = cfg.label_smoothing if cfg.loss == "cdpo" else 0.0
                        loss, stats = dpo_loss(*logps.unbind(1), *ref.unbind(1), beta=cfg.beta, label_smoothing=smoothing)
                    # The step's loss is the mean over the global batch; DDP averages over processes.
                    accelerator.backward(loss * len(micro) * world / len(batch))
                for name, value in {"train/loss": loss, **stats}.items():
                    sums[name] = sums.get(name, 0.0) + value.item() * len(micro)
            grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # --- metrics and checkpoints (plumbing) ---
            totals = reduce_sums(accelerator, sums)
            seen += len(batch)
            metrics = {name: value / len(batch) for name, value in totals.items()}
            metrics.update({
                "train/grad_norm": float(grad_norm),
                "train/learning_rate": scheduler.get_last_lr()[0],
                "train/pairs_per_second": seen / (time.perf_counter() - started),
            })
            if (step + 1) % cfg.logging_steps == 0 or step + 1 == total_steps:
                logger.log(step + 1, metrics)
            bar.advance(loss=metrics["train/loss"], acc=metrics["rewards/accuracies"])
            if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < total_steps:
                checkpointer.save(step + 1)
            if stop_after is not None and step + 1 >= stop_after:
                logger.close()
                return metrics

    # --- save ------------------------------------------------------------------------------------------------
    logger.close()
    extra = {"pairs": len(triples), "ties_skipped": ties, "loss": cfg.loss, "beta": cfg.beta}
    save_policy(accelerator, policy, tokenizer, cfg, kind=cfg.loss, data_digest=data_digest, metrics=metrics, extra=extra)
    return metrics
