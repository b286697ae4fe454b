"""Offline preference optimization on pairs: DPO, IPO and cDPO, straight from logged human preferences.

setup -> reference log-probs -> train -> save, in one loop (``train_dpo``); the math is in ``tether.math.losses``.

Speed comes from doing less work, not from different math:
- one row per pair, ``prompt + chosen + rejected``: the prompt runs through the transformer once, and a custom
  attention mask lets the rejected answer see the prompt but not the chosen answer (its positions restart after
  the prompt). The log-probs equal those of two separate sequences; the prompt's tokens are not computed twice.
- the LM head runs on the answer tokens only, a chunk of them at a time (``TokenLogProbs``).
- ``packing``: the pairs of a micro batch end to end in fewer rows, no padding (``collate_pairs``).
- reference log-probs are computed once, before training, in one pass, and cached on disk
  (tether.recipes.reference_cache); with LoRA the reference is the policy with its adapter disabled, so one model
  sits in memory.
"""


from __future__ import annotations

import time
from typing import Any

import torch

from tether.data.batching import plan_batches, shard, split_micro_batches, truncate_prompt
from tether.data.canonical import rows_digest
from tether.data.rows import skip_ties
from tether.math.losses import dpo_loss, ipo_loss
from tether.models.hf import load_policy, load_tokenizer
from tether.models.logprobs import TokenLogProbs, Triple, score_pairs
from tether.models.tokens import encode_texts
from tether.recipes.configs import DPOConfig
from tether.recipes.reference_cache import setup_reference
from tether.recipes.runtime import Run, StepHook, TrainResult, check_kept, total_optimizer_steps


def encode_pairs(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> tuple[list[Triple], list[int]]:
    """Preference rows -> [(prompt, chosen, rejected) ids] and the indices of the rows kept.

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


def train_dpo(cfg: DPOConfig, *, workspace: Any = None, on_step: StepHook | None = None) -> TrainResult:
    """Train ``cfg.model`` on the preference pairs of ``cfg.data`` (a file, or ``snapshot:NAME`` in ``workspace``)
    with DPO, IPO or cDPO; ``on_step(step, metrics)`` after every optimizer step."""
    # --- setup (plumbing) ------------------------------------------------------------------------------------
    run = Run(cfg, cfg.loss, workspace=workspace, on_step=on_step)
    tokenizer = load_tokenizer(cfg.model, chat_template=cfg.chat_template, say=run.say)
    rows = run.rows(cfg.data, "preference")
    data_digest = rows_digest(rows)  # of every row, ties included: the snapshot's digest
    rows, ties = skip_ties(rows, f"{cfg.loss.upper()} would read it as chosen > rejected", run.say)
    triples, kept = encode_pairs(tokenizer, rows, cfg.max_length)
    check_kept(len(rows), len(kept), cfg, "pair")
    lengths = [len(p) + len(c) + len(r) for p, c, r in triples]
    total_steps = total_optimizer_steps(len(triples), cfg)
    batches = plan_batches(lengths, cfg, total_steps)
    run.plan(data_digest, total_steps)
    (policy,) = run.prepare(TokenLogProbs(load_policy(cfg, tokenizer, dropout=False), chunk_tokens=cfg.lm_head_chunk))
    pad_id, accelerator = tokenizer.pad_token_id, run.accelerator
    pack_to = cfg.max_length if cfg.packing else None  # rows of pairs end to end, no padding (same log-probs)
    reference = setup_reference(cfg, run, policy, "pairs", data_digest, triples, pad_id, pack_to=pack_to)  # (N, 2): chosen, rejected
    start_step = run.start()["step"]

    # --- train -----------------------------------------------------------------------------------------------
    policy.train()
    metrics: dict[str, float] = {}
    started, seen = time.perf_counter(), 0
    for step in range(start_step, total_steps):
        batch = batches[step]
        micro_batches = split_micro_batches(shard(batch, accelerator.process_index, run.world), run.grad_accum, lengths)
        sums: dict[str, float] = {}
        for k, micro in enumerate(micro_batches):
            micro_triples = [triples[i] for i in micro]
            with run.accumulating(last=k == len(micro_batches) - 1):
                # ALGO LOGIC: chosen and rejected in one forward pass, then the loss of the pair.
                logps = score_pairs(policy, micro_triples, pad_id, accelerator.device, pack_to=pack_to)  # (b, 2)
                if reference.logps is not None:
                    ref = reference.logps[micro].to(logps.device)
                else:
                    with torch.no_grad():
                        ref = score_pairs(reference.module, micro_triples, pad_id, accelerator.device, reference=reference.disable_adapter, pack_to=pack_to)
                if cfg.loss == "ipo":  # IPO on per-token average log-probs (see ipo_loss)
                    n_tokens = torch.tensor([[len(c), len(r)] for _, c, r in micro_triples], dtype=logps.dtype, device=logps.device)
                    loss, stats = ipo_loss(*(logps / n_tokens).unbind(1), *(ref / n_tokens).unbind(1), beta=cfg.beta)
                else:
                    smoothing = cfg.label_smoothing if cfg.loss == "cdpo" else 0.0
                    loss, stats = dpo_loss(*logps.unbind(1), *ref.unbind(1), beta=cfg.beta, label_smoothing=smoothing)
                # The step's loss is the mean over the global batch; DDP averages over processes.
                accelerator.backward(loss * len(micro) * run.world / len(batch))
            for name, value in {"train/loss": loss, **stats}.items():
                sums[name] = sums.get(name, 0.0) + value.item() * len(micro)
        grad_norm = run.optimizer_step()
        # --- metrics and checkpoints (plumbing) ---
        totals = run.reduce(sums)
        seen += len(batch)
        metrics = {name: value / len(batch) for name, value in totals.items()}
        metrics.update({
            "train/grad_norm": grad_norm,
            "train/learning_rate": run.learning_rate,
            "train/pairs_per_second": seen / (time.perf_counter() - started),
        })
        run.end_step(step + 1, metrics, loss=metrics["train/loss"], acc=metrics["rewards/accuracies"])

    # --- save ------------------------------------------------------------------------------------------------
    extra = {"pairs": len(triples), "ties_skipped": ties, "loss": cfg.loss, "beta": cfg.beta}
    return run.save(accelerator.unwrap_model(policy).lm, tokenizer, kind=cfg.loss, metrics=metrics, extra=extra)
