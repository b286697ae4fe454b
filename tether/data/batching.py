"""Batching token ids: which examples each step sees (planning), how sequences become padded tensors and forward
passes (padding, packing, the passes that waste least, rows that share a prefix), and the one truncation.

Everything here is plumbing: pure functions of lengths, seeds and token ids, the same for every trainer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------------------
# Planning: which examples each step sees
# ---------------------------------------------------------------------------------------------------------------


def length_bucketed_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, *, shuffle: bool = True, chunk_batches: int = 50
) -> list[list[int]]:
    """Batches of indices with similar lengths (little padding), in a deterministic order for (seed, epoch).

    The indices are shuffled, cut into chunks of ``chunk_batches`` batches, sorted by length inside each chunk and
    batched; then the batch order is shuffled, except that the batch holding the longest example goes first: a batch
    that does not fit in memory fails at step 1, not hours in, and on a GPU the caching allocator reserves the
    largest blocks once instead of growing step by step. The last batch may be smaller.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    if shuffle:
        rng.shuffle(batches)
        longest = max(range(len(batches)), key=lambda k: max(lengths[i] for i in batches[k]), default=0)
        batches.insert(0, batches.pop(longest))
    return batches


def branch_rows(triples: list[tuple[list[int], list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row ``prefix + a + b`` per triple, right-padded: input_ids, position_ids (b's restart where the prefix
    ends, as if b followed the prefix alone) and the (B, 1, T, T) ``branch_attention_mask``. DPO scores both answers
    of a pair this way, decoder reward models read both rewards. shape: -> (B, T), (B, T), (B, 1, T, T)."""
    width = max(len(p) + len(a) + len(b) for p, a, b in triples)
    input_ids = torch.full((len(triples), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(triples), width), dtype=torch.long)
    part = torch.full((len(triples), width), 3, dtype=torch.long)  # 0 prefix, 1 answer a, 2 answer b, 3 padding
    for r, (p, a, b) in enumerate(triples):
        P, A, B = len(p), len(a), len(b)
        input_ids[r, : P + A + B] = torch.tensor(p + a + b, dtype=torch.long)
        position_ids[r, : P + A] = torch.arange(P + A)
        position_ids[r, P + A : P + A + B] = torch.arange(P, P + B)
        part[r, :P], part[r, P : P + A], part[r, P + A : P + A + B] = 0, 1, 2
    return input_ids, position_ids, branch_attention_mask(part)


def packed_branch_rows(
    triples: list[tuple[list[int], list[int], list[int]]], pad_id: int, capacity: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """``branch_rows`` without the padding: the ``prefix + a + b`` sequences laid end to end in as few rows of
    ``capacity`` tokens (at least the longest sequence) as fit (``pack_rows``). Positions restart at each sequence
    (and b's where its prefix ends); the mask keeps every sequence to itself and b away from a. Returns input_ids,
    position_ids, the mask and where each triple starts, (row, column). shape: -> (R, T), (R, T), (R, 1, T, T)."""
    lengths = [len(p) + len(a) + len(b) for p, a, b in triples]
    groups = pack_rows(lengths, max(capacity, max(lengths)))
    width = max(sum(lengths[i] for i in g) for g in groups)
    input_ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(groups), width), dtype=torch.long)
    part = torch.full((len(groups), width), 3, dtype=torch.long)  # 0 prefix, 1 answer a, 2 answer b, 3 padding
    segment = torch.full((len(groups), width), -1, dtype=torch.long)  # which sequence of the row; -1 padding
    places = [(0, 0)] * len(triples)
    for r, group in enumerate(groups):
        start = 0
        for k, i in enumerate(group):
            p, a, b = triples[i]
            P, A, B = len(p), len(a), len(b)
            input_ids[r, start : start + P + A + B] = torch.tensor(p + a + b, dtype=torch.long)
            position_ids[r, start : start + P + A] = torch.arange(P + A)
            position_ids[r, start + P + A : start + P + A + B] = torch.arange(P, P + B)
            part[r, start : start + P], part[r, start + P : start + P + A], part[r, start + P + A : start + P + A + B] = 0, 1, 2
            segment[r, start : start + P + A + B] = k
            places[i] = (r, start)
            start += P + A + B
    return input_ids, position_ids, branch_attention_mask(part, segment), places


def branch_attention_mask(part: torch.Tensor, segment: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean attention mask (B, 1, T, T) for rows that hold one shared prefix and the branches that follow it:
    ``part`` (B, T) is 0 on the prefix, 1, 2, ... on each branch and any other id on padding. A token sees the
    tokens before it in its own part and the prefix, never another branch: each branch is computed as if it
    followed the prefix alone (its positions restart where the prefix ends). ``segment`` (B, T), for packed rows
    that hold several such sequences: a token sees its own sequence's tokens only."""
    width = part.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=part.device).tril()
    same_part = part.unsqueeze(2) == part.unsqueeze(1)  # (B, T, T): query part == key part
    mask = causal & (same_part | (part == 0).unsqueeze(1))
    if segment is not None:
        mask &= segment.unsqueeze(2) == segment.unsqueeze(1)
    return mask.unsqueeze(1)


def padded_passes(lengths: list[int], overhead_tokens: int, attention_width: int = 512) -> list[list[int]]:
    """Cut sequences into forward passes that waste the least work on padding: indices sorted by length, then the
    contiguous runs that minimize the estimated cost (exact dynamic program over the sorted order).

    A pass of ``r`` rows padded to width ``w`` costs ``r * w * (1 + w / attention_width)`` token units (the linear
    layers per token, plus attention growing with the width) and ``overhead_tokens`` more for being a pass at all
    (kernel launches, the dense embedding gradient). On one CPU thread a MiniLM pass costs about 80 tokens'
    worth, so several narrow passes beat one wide one; on a GPU a pass is worth thousands of tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    width = [lengths[i] for i in order]
    best = [0.0] + [math.inf] * len(order)  # best[j]: cheapest cover of the j shortest sequences
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        w = width[j - 1]  # the widest of any run that ends at j
        unit = w * (1 + w / attention_width)
        for i in range(j):
            cost = best[i] + (j - i) * unit + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    passes: list[list[int]] = []
    j = len(order)
    while j > 0:
        passes.append(order[cut[j] : j])
        j = cut[j]
    return passes[::-1]


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, T) and attention_mask (B, T), padded on the right to the longest sequence."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, T) and attention_mask (B, T), padded on the left (for generation)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def truncate_prompt(prompt_ids: list[int], completion_lengths: list[int], max_length: int, *, min_prompt_tokens: int = 1) -> list[int] | None:
    """The end of the prompt that fits before the longest completion in ``max_length`` tokens (the prompt's START is
    cut first, the completion is kept whole); None when fewer than ``min_prompt_tokens`` prompt tokens fit (the
    caller skips and counts the example).

    Policies need one prompt token (``min_prompt_tokens=1``): the first completion token is scored from the position
    before it. A reward model reads the whole sequence after its tokenizer's own prefix ([CLS], BOS), so it may keep
    no prompt at all (``min_prompt_tokens=0``)."""
    room = max_length - max(completion_lengths)
    if room < max(min_prompt_tokens, 0):
        return None
    return prompt_ids[len(prompt_ids) - room :] if len(prompt_ids) > room else prompt_ids


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
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


def plan_batches(lengths: list[int], cfg: Any, total_steps: int) -> list[list[int]]:
    """``total_steps`` global batches of exactly ``cfg.batch_size`` example indices, a pure function of the seed.

    Each epoch's order comes from (seed, epoch): length-bucketed and shuffled, shuffled, or file order; epochs
    follow each other in one stream, so every step has a full batch.
    """
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


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This process's share of ``items`` (a global batch, a rollout's prompts, a list of passes): every ``world``-th
    item from ``rank``, so the shares are equal when ``world`` divides the count, and balanced when the items are
    sorted by length."""
    return list(items[rank::world])


def split_micro_batches(local: list[int], n_micro: int, lengths: list[int]) -> list[list[int]]:
    """This process's share of a batch in ``n_micro`` equal micro batches of similar lengths (the gradient of the
    step is the same whatever the split)."""
    ordered = sorted(local, key=lambda i: lengths[i])
    size = math.ceil(len(ordered) / n_micro)
    return [ordered[k * size : (k + 1) * size] for k in range(n_micro) if ordered[k * size : (k + 1) * size]]


def epoch_batches(lengths: list[int], cfg: Any, epoch: int) -> list[list[int]]:
    """This epoch's full global batches, bucketed by length when ``cfg.group_by_length`` (a partial last batch is left
    out; the reward trainer's plan: every step sees exactly ``batch_size`` rows)."""
    if cfg.group_by_length:
        batches = length_bucketed_batches(lengths, cfg.batch_size, cfg.seed, epoch)
    else:
        order = list(range(len(lengths)))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    return [b for b in batches if len(b) == cfg.batch_size]


def capped_micro_batches(batch: list[int], lengths: list[int], micro_batch: int, max_tokens: int | None, rank: int, world: int) -> list[list[int]]:
    """Process ``rank``'s shard cut into forward passes of at most ``micro_batch`` rows and (when set) ``max_tokens``
    padded tokens (chosen + rejected). Every process makes the same number of passes (DDP syncs on the last). The
    shard is sorted by length first, so each pass pads to its own longest pair; the step's gradient is the mean
    over the whole batch either way."""
    shards = [sorted(shard(batch, r, world), key=lambda i: lengths[i]) for r in range(world)]

    def passes(part: list[int]) -> int:
        rows = micro_batch
        if max_tokens:
            rows = min(rows, max(1, max_tokens // (2 * max(lengths[i] for i in part))))
        return math.ceil(len(part) / rows)

    n = max(passes(part) for part in shards)
    mine = shards[rank]
    size = math.ceil(len(mine) / n)
    return [mine[i : i + size] for i in range(0, len(mine), size)]
