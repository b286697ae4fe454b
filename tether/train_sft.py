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

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tether.config import SFTConfig, TrainConfig
from tether.errors import TetherError

# ---------------------------------------------------------------------------------------------------------------
# Data: rows -> token ids
# ---------------------------------------------------------------------------------------------------------------


def split_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A conversation as (prompt turns, final assistant turn): the loss is on the last answer only."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None or last == 0:
        raise TetherError("a conversation has no assistant turn after the prompt", fix="each 'messages' row must end with an assistant answer")
    return messages[:last], messages[last:]


def encode_texts(tokenizer: Any, prompts: list[Any], completions: list[Any]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of prompts and their completions (batched through the fast tokenizer).

    What the chat template renders (conversations; plain-text prompts too on chat models, see tether.models) is
    the prompt with the generation prompt and the completion as the assistant turn the template writes, its
    end-of-turn token included; plain text is tokenized as it is, the prompt with the tokenizer's special tokens
    (BOS) and the completion followed by EOS.
    """
    from tether.models import render_completion, render_prompt, uses_template

    prompt_texts = [render_prompt(tokenizer, p) for p in prompts]
    completion_texts = [render_completion(tokenizer, p, c) for p, c in zip(prompts, completions)]
    plain = [not uses_template(tokenizer, p) for p in prompts]
    prompt_ids = [[] for _ in prompts]
    for flag in (True, False):  # special tokens only for plain prompts (chat templates write their own)
        idx = [i for i, f in enumerate(plain) if f == flag]
        if idx:
            encoded = tokenizer([prompt_texts[i] for i in idx], add_special_tokens=flag)["input_ids"]
            for i, ids in zip(idx, encoded):
                prompt_ids[i] = list(ids)
    completion_ids = [list(ids) for ids in tokenizer(completion_texts, add_special_tokens=False)["input_ids"]]
    eos = tokenizer.eos_token_id
    for ids, completion in zip(completion_ids, completions):
        if not uses_template(tokenizer, completion) and eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
    return prompt_ids, completion_ids


def truncate_prompt(prompt_ids: list[int], completion_lengths: list[int], max_length: int) -> list[int] | None:
    """The end of the prompt that fits before the longest completion in ``max_length`` tokens (the prompt's start is
    cut first); None when a completion leaves no room for a single prompt token."""
    room = max_length - max(completion_lengths)
    if room < 1:
        return None
    return prompt_ids[-room:] if len(prompt_ids) > room else prompt_ids


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


@dataclass
class ScoredBatch:
    """Model inputs plus where the scored tokens are.

    input_ids, position_ids (R, T); attention_mask (R, T) padding mask, (R, 1, T, T) bool custom mask, or None
    (packed rows: the model separates examples by their restarting position ids); gather_index (N,) flat indices
    into (R*T) of the positions that PREDICT the scored tokens; targets (N,) those tokens; segments (N,) which
    scored sequence each token belongs to; lengths (S,) tokens per scored sequence.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    gather_index: torch.Tensor
    targets: torch.Tensor
    segments: torch.Tensor
    lengths: torch.Tensor

    def model_inputs(self, device: Any) -> dict[str, Any]:
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return {
            "input_ids": self.input_ids.to(device),
            "position_ids": self.position_ids.to(device),
            "attention_mask": mask,
            "gather_index": self.gather_index.to(device),
            "targets": self.targets.to(device),
        }

    def sequence_logps(self, token_logps: torch.Tensor) -> torch.Tensor:
        """Sum of the scored tokens' log-probs of each sequence: (N,) -> (S,)."""
        out = token_logps.new_zeros(self.lengths.numel())
        return out.index_add(0, self.segments.to(token_logps.device), token_logps)


def _pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: example indices grouped into rows of at most ``capacity`` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def collate_completions(
    examples: list[tuple[list[int], list[int]]], pad_id: int, *, pack_to: int | None = None, score_prompt: bool = False
) -> ScoredBatch:
    """[(prompt ids, completion ids)] → a ScoredBatch scoring each completion (and the prompt if ``score_prompt``).

    Padded: one row per example, padded on the right. Packed (``pack_to`` = row capacity in tokens): examples are
    laid end to end in as few rows as fit; positions restart at 0 for each example and the model's packed-sequence
    mask keeps examples from attending to each other.
    """
    groups = _pack_rows([len(p) + len(c) for p, c in examples], pack_to) if pack_to else [[i] for i in range(len(examples))]
    width = max(sum(len(examples[i][0]) + len(examples[i][1]) for i in g) for g in groups)
    input_ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(groups), width), dtype=torch.long)
    attention = torch.zeros((len(groups), width), dtype=torch.long)
    gather, targets, segments = [], [], []
    lengths = [0] * len(examples)
    for r, group in enumerate(groups):
        start = 0
        for i in group:
            prompt, completion = examples[i]
            seq = prompt + completion
            input_ids[r, start : start + len(seq)] = torch.tensor(seq)
            position_ids[r, start : start + len(seq)] = torch.arange(len(seq))
            attention[r, start : start + len(seq)] = 1
            first = 1 if score_prompt else len(prompt)  # index in seq of the first scored token
            for t in range(max(first, 1), len(seq)):
                gather.append(r * width + start + t - 1)  # position t-1 predicts token t
                targets.append(seq[t])
                segments.append(i)
            lengths[i] = len(seq) - max(first, 1)
            start += len(seq)
        if pack_to and start < width:  # the padding tail continues the last example's positions: it reads as
            last = len(seq)  # part of that example, after it, so no real token attends to it
            position_ids[r, start:] = torch.arange(last, last + width - start)
    return ScoredBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=None if pack_to else attention,
        gather_index=torch.tensor(gather, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        segments=torch.tensor(segments, dtype=torch.long),
        lengths=torch.tensor(lengths, dtype=torch.long),
    )


# ---------------------------------------------------------------------------------------------------------------
# Model: log-probs at the scored positions only
# ---------------------------------------------------------------------------------------------------------------


class TokenLogProbs(torch.nn.Module):
    """``lm`` wrapped so that forward returns log p(targets) at ``gather_index`` only: shape (N,).

    The transformer runs on every token; the vocabulary projection (often the largest matmul of a small model) and
    the log-softmax run on the N scored positions only. ``reference=True`` runs the model with its LoRA adapter
    disabled: the reference policy of DPO/KTO without a second model in memory. Accelerate wraps this module (DDP),
    so every forward goes through it.
    """

    def __init__(self, lm: Any):
        super().__init__()
        self.lm = lm
        core = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        config = core.config
        # Heads that rescale or cap logits are not reproduced here: fall back to the model's own logits.
        self._plain_head = not any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
        self._core = [core]  # a list: not registered twice as a submodule

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        gather_index: torch.Tensor,
        targets: torch.Tensor,
        reference: bool = False,
    ) -> torch.Tensor:
        core = self._core[0]
        if attention_mask is not None and attention_mask.dim() == 4 and core.config._attn_implementation not in ("sdpa", "eager"):
            raise TetherError(
                f"one-row-per-pair batches need a custom attention mask, which {core.config._attn_implementation} does not take",
                fix="load the model with attn_implementation='sdpa' (the default)",
            )
        if attention_mask is not None and attention_mask.dim() == 4 and core.config._attn_implementation == "eager":
            attention_mask = torch.zeros(attention_mask.shape, dtype=torch.float32, device=attention_mask.device).masked_fill(
                ~attention_mask, torch.finfo(torch.float32).min
            )
        context = self.lm.disable_adapter() if reference else nullcontext()
        with context:
            inputs = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask, "use_cache": False}
            if self._plain_head:
                hidden = getattr(core, core.base_model_prefix)(**inputs).last_hidden_state  # (R, T, H)
                selected = hidden.reshape(-1, hidden.size(-1)).index_select(0, gather_index)  # (N, H)
                logits = core.get_output_embeddings()(selected).float()  # (N, V)
            else:
                logits = core(**inputs).logits
                logits = logits.reshape(-1, logits.size(-1)).index_select(0, gather_index).float()
        return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - logits.logsumexp(-1)  # (N,)


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere: the policy and its reference must score a sequence the same way (as TRL does)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


# ---------------------------------------------------------------------------------------------------------------
# Batch plan: which examples each step sees
# ---------------------------------------------------------------------------------------------------------------


def plan_batches(lengths: list[int], cfg: Any, total_steps: int) -> list[list[int]]:
    """``total_steps`` global batches of exactly ``cfg.batch_size`` example indices, a pure function of the seed.

    Each epoch's order comes from (seed, epoch): length-bucketed and shuffled, shuffled, or file order; epochs
    follow each other in one stream, so every step has a full batch.
    """
    from tether.training import length_bucketed_batches

    stream: list[int] = []
    epoch = 0
    while len(stream) < total_steps * cfg.batch_size:
        if cfg.group_by_length:
            for batch in length_bucketed_batches(lengths, cfg.batch_size, cfg.seed, epoch, shuffle=cfg.shuffle):
                stream.extend(batch)
        else:
            order = list(range(len(lengths)))
            if cfg.shuffle:
                random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
            stream.extend(order)
        epoch += 1
    return [stream[s * cfg.batch_size : (s + 1) * cfg.batch_size] for s in range(total_steps)]


def split_micro_batches(local: list[int], n_micro: int, lengths: list[int]) -> list[list[int]]:
    """This process's share of a batch in ``n_micro`` equal micro batches of similar lengths (the gradient of the
    step is the same whatever the split)."""
    ordered = sorted(local, key=lambda i: lengths[i])
    size = math.ceil(len(ordered) / n_micro)
    return [ordered[k * size : (k + 1) * size] for k in range(n_micro) if ordered[k * size : (k + 1) * size]]


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


def load_policy(cfg: Any, tokenizer: Any) -> Any:
    from tether.models import apply_lora, load_causal_lm, refuse_adapter

    refuse_adapter(cfg.model)
    model = load_causal_lm(cfg.model, bf16=False, gradient_checkpointing=cfg.gradient_checkpointing)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise TetherError(f"the tokenizer of {cfg.model} has {len(tokenizer)} tokens, more than the model's embeddings", fix="save the model and tokenizer together")
    return apply_lora(model, cfg)


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


def train_sft(cfg: SFTConfig, *, stop_after: int | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.data``; returns the final metrics. ``stop_after`` ends the run after that
    step without saving the model (a simulated preemption, for resume tests)."""
    from tether.data.canonical import rows_digest
    from tether.models import load_tokenizer
    from tether.store.snapshots import training_rows
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
    from tether.workspace import current_workspace

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
