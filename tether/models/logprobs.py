"""Log-probabilities of completions under a model, computed where they count and no wider.

- Offline trainers (SFT, DPO, KTO): token ids become a ``ScoredBatch`` (padded rows, packed rows, or one row per
  pair whose two answers share the prompt: ``collate_completions``, ``collate_pairs``), and ``TokenLogProbs`` runs
  the transformer and the LM head at the scored positions only, so no (B, T, V) logits tensor is ever built.
- Online trainers (PPO, GRPO, RLOO): ``completion_logps`` over a rollout's rows, each distinct prompt computed once
  for the rows of its group (``share_prompts``), the logits divided by the sampling temperature.
- ``sequence_logps``: the plain full-logits reference, for tests.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from tether.data.batching import branch_rows, pack_rows, packed_branch_rows
from tether.errors import TetherError
from tether.math.losses import entropy_from_logits

Triple = tuple[list[int], list[int], list[int]]  # (prompt ids, first answer ids, second answer ids)


def token_logps(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(labels[t+1] | ..t) for each position. logits (B, T, V), labels (B, T) -> (B, T-1)."""
    logits = logits[:, :-1, :].float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = labels[:, 1:].unsqueeze(-1)
    # log_softmax gathered at the target, without materializing a second (B, T, V) tensor beyond log_softmax
    return torch.gather(logits.log_softmax(-1), 2, targets).squeeze(-1)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Sum of the log-probs of the masked tokens of each sequence.

    logits (B, T, V); labels (B, T); loss_mask (B, T) marks the tokens whose probability counts (the completion).
    The mask is read at the predicted position, so loss_mask[:, 0] is ignored. Returns (B,).
    """
    per_token = token_logps(logits, labels, temperature)
    return (per_token * loss_mask[:, 1:].to(per_token.dtype)).sum(-1)


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


def collate_completions(
    examples: list[tuple[list[int], list[int]]], pad_id: int, *, pack_to: int | None = None, score_prompt: bool = False
) -> ScoredBatch:
    """[(prompt ids, completion ids)] → a ScoredBatch scoring each completion (and the prompt if ``score_prompt``).

    Padded: one row per example, padded on the right. Packed (``pack_to`` = row capacity in tokens): examples are
    laid end to end in as few rows as fit; positions restart at 0 for each example and the model's packed-sequence
    mask keeps examples from attending to each other.
    """
    groups = pack_rows([len(p) + len(c) for p, c in examples], pack_to) if pack_to else [[i] for i in range(len(examples))]
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


class TokenLogProbs(torch.nn.Module):
    """``lm`` wrapped so that forward returns log p(targets) at ``gather_index`` only: shape (N,).

    The transformer runs on every token; the vocabulary projection (often the largest matmul of a small model) and
    the log-softmax run on the N scored positions only; with ``chunk_tokens`` they run ``chunk_tokens`` positions at a
    time (``linear_token_logps``), so not even the (N, V) logits exist at once. ``reference=True`` runs the model with its LoRA adapter
    disabled: the reference policy of DPO/KTO without a second model in memory. Accelerate wraps this module (DDP),
    so every forward goes through it.
    """

    def __init__(self, lm: Any, chunk_tokens: int = 0):
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens
        core = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        config = core.config
        # Heads that rescale or cap logits are not reproduced here: fall back to the model's own logits.
        self._plain_head = not any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
        self._core = [core]  # a list: not registered twice as a submodule
        self._no_split_modules = getattr(core, "_no_split_modules", None)  # FSDP's auto wrap shards these layers one by one

    def tie_weights(self) -> None:
        """Accelerate's FSDP2 setup moves the model to the meta device and back, then re-ties its embeddings
        through this: without it the tied input and output embeddings would become two weights."""
        self.lm.tie_weights()

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
                head = core.get_output_embeddings()
                # A plain head (not one LoRA wraps) whose weight is whole here: not a DTensor shard (an FSDP unit of
                # its own) nor a DeepSpeed ZeRO-3 partition (gathered only inside the module's own forward).
                whole = not hasattr(head.weight, "ds_id") and not hasattr(head.weight, "device_mesh")
                if self.chunk_tokens and type(head) is torch.nn.Linear and whole:
                    return linear_token_logps(selected, head.weight, head.bias, targets, self.chunk_tokens)
                logits = head(selected).float()  # (N, V)
            else:
                logits = core(**inputs).logits
                logits = logits.reshape(-1, logits.size(-1)).index_select(0, gather_index).float()
        return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - logits.logsumexp(-1)  # (N,)


class _LinearTokenLogps(torch.autograd.Function):
    """log p(targets) under logits = (hidden @ weight.T + bias) * scale, computed ``chunk`` rows at a time.

    Forward: per chunk, the (c, V) logits, their logsumexp and the target's logit; when ``hidden`` needs a gradient,
    also d logp / d hidden = scale * (W[target] - softmax @ W), a (c, H) block kept for the backward pass (the plain
    path computes the same product in its backward). Backward: the hidden gradient is that block times the incoming
    (N,) gradient; the weight's gradient (full fine-tuning; a frozen head under LoRA skips it) recomputes each chunk's
    softmax from the saved logsumexp. The logits are never kept: memory O(c x V) instead of O(N x V), as Liger's
    fused linear cross-entropy does. Shapes: hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) -> (N,).
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk: int, scale: float) -> torch.Tensor:
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else weight.dtype
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        logps = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse_all = torch.empty_like(logps)
        grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if need_hidden else None
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            logits = torch.nn.functional.linear(hidden[start:end].to(dtype), w, b).float() * scale  # (c, V)
            lse = logits.logsumexp(-1)
            rows = torch.arange(end - start, device=hidden.device)
            logps[start:end] = logits[rows, targets[start:end]] - lse
            lse_all[start:end] = lse
            if need_hidden:
                probs = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
                probs[rows, targets[start:end]] -= 1.0  # softmax - onehot = -d logp / d logits
                grad_hidden[start:end] = (probs.to(dtype) @ w) * -scale
        ctx.chunk, ctx.scale, ctx.dtype, ctx.need_weight, ctx.hidden_dtype = chunk, scale, dtype, need_weight, hidden.dtype
        ctx.save_for_backward(hidden if need_weight else None, weight, bias, targets, lse_all, grad_hidden)
        return logps

    @staticmethod
    def backward(ctx: Any, grad_logps: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, lse_all, grad_hidden = ctx.saved_tensors
        grad_h = None if grad_hidden is None else (grad_hidden.float() * grad_logps.unsqueeze(1)).to(ctx.hidden_dtype)
        grad_w = grad_b = None
        if ctx.need_weight:
            w = weight.to(ctx.dtype)
            b = None if bias is None else bias.to(ctx.dtype)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            grad_b = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
            for start in range(0, hidden.shape[0], ctx.chunk):
                end = min(start + ctx.chunk, hidden.shape[0])
                h = hidden[start:end].to(ctx.dtype)
                logits = torch.nn.functional.linear(h, w, b).float() * ctx.scale
                probs = logits.sub_(lse_all[start:end].unsqueeze(1)).exp_()
                probs[torch.arange(end - start, device=h.device), targets[start:end]] -= 1.0
                grad_logits = probs.mul_(grad_logps[start:end].unsqueeze(1) * -ctx.scale)  # (c, V): d loss / d logits
                grad_w += (grad_logits.to(ctx.dtype).t() @ h).float()
                if grad_b is not None:
                    grad_b += grad_logits.sum(0)
            grad_w = grad_w.to(weight.dtype)
            grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None


def linear_token_logps(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk: int = 1024, temperature: float = 1.0
) -> torch.Tensor:
    """log_softmax((hidden @ weight.T + bias) / temperature)[targets], ``chunk`` rows at a time, the (N, V) logits
    never held at once (``_LinearTokenLogps``): the values and gradients of the plain path, less memory.
    shape: hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) -> (N,)."""
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        with torch.no_grad():
            return _LinearTokenLogps.forward(_NoGrad(), hidden, weight, bias, targets, chunk, 1.0 / temperature)
    return _LinearTokenLogps.apply(hidden, weight, bias, targets, chunk, 1.0 / temperature)


class _NoGrad:
    """The ctx of a forward that no backward follows (no-grad scoring: reference log-probs)."""

    needs_input_grad = (False, False, False)

    def save_for_backward(self, *tensors: Any) -> None:
        pass


def collate_pairs(triples: list[Triple], pad_id: int, *, pack_to: int | None = None) -> ScoredBatch:
    """[(prompt, a, b)] → one row ``prompt + a + b`` per triple, scoring a (sequences 0..B-1) and b (B..2B-1).

    The attention mask (B, 1, T, T) is causal, and a token may attend to the prompt and to its own answer only;
    b's positions restart at len(prompt). So log p(b | prompt) is what a separate ``prompt + b`` row would give.
    Packed (``pack_to``: row capacity in tokens): the triples end to end in fewer rows, no padding between them
    (``packed_branch_rows``); the same log-probs.
    """
    n = len(triples)
    if pack_to:
        input_ids, position_ids, mask, places = packed_branch_rows(triples, pad_id, pack_to)
    else:
        input_ids, position_ids, mask = branch_rows(triples, pad_id)
        places = [(r, 0) for r in range(n)]
    width = input_ids.shape[1]
    gather, targets, segments, lengths = [], [], [], [0] * (2 * n)
    for r, (p, a, b) in enumerate(triples):
        P, A, B = len(p), len(a), len(b)
        base = places[r][0] * width + places[r][1]
        for j in range(A):  # a_j sits at P + j and is predicted from the position before it
            gather.append(base + P + j - 1)
            targets.append(a[j])
            segments.append(r)
        for j in range(B):  # b_0 is predicted from the prompt's last token, b_j (j > 0) from b_{j-1}
            gather.append(base + (P - 1 if j == 0 else P + A + j - 1))
            targets.append(b[j])
            segments.append(n + r)
        lengths[r], lengths[n + r] = A, B
    return ScoredBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask,
        gather_index=torch.tensor(gather, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        segments=torch.tensor(segments, dtype=torch.long),
        lengths=torch.tensor(lengths, dtype=torch.long),
    )


def score_pairs(module: Any, triples: list[Triple], pad_id: int, device: Any, *, reference: bool = False, pack_to: int | None = None) -> torch.Tensor:
    """Summed log-probs of both answers of each triple: (B, 2) = [log p(a|prompt), log p(b|prompt)]; packed rows
    with ``pack_to`` (``collate_pairs``)."""
    scored = collate_pairs(triples, pad_id, pack_to=pack_to)
    logps = scored.sequence_logps(module(**scored.model_inputs(device), reference=reference))  # (2B,)
    return torch.stack(logps.chunk(2), dim=1)


def score_completions(module: Any, pairs: list[tuple[list[int], list[int]]], pad_id: int, device: Any, *, reference: bool = False) -> torch.Tensor:
    """Summed log-probs log p(completion | prompt) of each (prompt, completion): (B,)."""
    scored = collate_completions(pairs, pad_id)
    return scored.sequence_logps(module(**scored.model_inputs(device), reference=reference))


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` assigns them. shape: (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def completion_logps(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_width: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    share_prompts: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the completion tokens under ``model`` (logits divided by the sampling temperature), and the
    entropy of each next-token distribution when asked.

    Rows whose prompt columns are identical (a group's completions of one prompt) share ONE forward pass over
    the prompt (``share_prompts``, see ``_shared_prompt_logits``); the result is the same as a forward over each
    whole row. Only the completion positions go through the LM head. shape: input_ids, attention_mask (B, P + R)
    -> logps (B, R), entropy (B, R) or None.
    """
    logits = _shared_prompt_logits(model, input_ids, attention_mask, completion_width) if share_prompts else None
    if logits is None:
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
            logits_to_keep=completion_width + 1,
        ).logits[:, :-1, :]  # (B, R, V): position t predicts completion token t
    logits = logits.float() / temperature
    targets = input_ids[:, -completion_width:]
    # log_softmax at the target only: the target's logit minus the logsumexp (no second (B, R, V) tensor)
    logps = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logps, entropy


def _shared_prompt_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_width: int) -> torch.Tensor | None:
    """Logits (B, R, V) predicting the completion tokens, with each distinct prompt computed once; None when no
    prompt repeats (or the model cannot take a cache: gradient checkpointing turns caching off).

    Pass 1 runs the U distinct prompts (U, P) with a KV cache; the cache rows are gathered to the B rows (a
    differentiable index, so the prompt's share of the gradient flows back through it) and pass 2 runs the
    completions (B, R) on top. In GRPO every prompt has ``group_size`` rows: the policy and reference passes do
    U x P + B x R tokens of work instead of B x (P + R). With the online-RL benchmark's prompts (~8 of ~40 tokens)
    that saves a sixth; with conversation prompts of 200 tokens and 32-token completions in groups of 8, about 70%.
    """
    prompt_width = input_ids.shape[1] - completion_width
    base = getattr(model, "module", model)  # DDP
    checkpointing = getattr(base, "is_activation_checkpointing", None)  # transformers >= 5.2x; before: is_gradient_...
    if prompt_width < 1 or (checkpointing if checkpointing is not None else getattr(base, "is_gradient_checkpointing", False)):
        return None
    prefix = torch.cat([input_ids[:, :prompt_width], attention_mask[:, :prompt_width]], dim=1)
    distinct, rows = torch.unique(prefix, dim=0, return_inverse=True)  # (U, 2P), (B,): row b's prompt is distinct[rows[b]]
    if len(distinct) == len(input_ids):
        return None
    prompt_ids, prompt_mask = distinct[:, :prompt_width], distinct[:, prompt_width:]
    from transformers import DynamicCache

    cache, kwarg = DynamicCache(), cache_kwarg(model)
    first = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask), use_cache=True, logits_to_keep=1, **{kwarg: cache})
    if cache.get_seq_length() != prompt_width:  # the model did not fill the cache (a model that ignores use_cache)
        return None
    cache.reorder_cache(rows)  # (U, ...) -> (B, ...), index_select per layer
    positions = position_ids(attention_mask)[:, prompt_width:]
    rest = model(input_ids=input_ids[:, prompt_width:], attention_mask=attention_mask, position_ids=positions, use_cache=True, logits_to_keep=completion_width, **{kwarg: cache})
    # The last prompt position predicts completion token 0; completion position t predicts token t + 1.
    return torch.cat([first.logits[:, -1:, :][rows], rest.logits[:, :-1, :]], dim=1)


def cache_kwarg(model: Any) -> str:
    """The name the model's forward takes its KV cache by: transformers 5 renamed ``past_key_values`` to ``cache``."""
    base = getattr(model, "module", model)  # DDP
    base = base.get_base_model() if hasattr(base, "get_base_model") else base  # peft
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
