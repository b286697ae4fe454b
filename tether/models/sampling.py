"""Rollouts: sample completions from the policy, batched, and keep them as one record with documented shapes.

Three samplers (``sampler=auto`` takes ``loop``, on a CPU and on a GPU):
- ``loop``: Tether's own sampling loop (``generate_loop``). Each distinct prompt is prefilled once and its keys and
  values are shared by the ``group_size`` rows that sample from it; then one forward per new token, temperature /
  top-p sampling, a stop at EOS, finished rows leaving the batch. For Llama-family models the forward is
  ``tether.models.kv_cache_llama.KVDecoder`` (plain torch ops on the model's weights, preallocated cache), checked against the
  model's own forward the first time; other models (and LoRA) run their own forward with a dynamic cache.
  ``benchmarks/sampling.py``: 0.150 s against 0.198 s for ``generate`` (dynamic cache) per rollout of 32 x 32
  tokens of the online-RL benchmark's tiny Llama on one CPU thread; 6.1k against 2.9k new tokens/s (static cache)
  for a 0.44B Llama on an H200 (64 x 128 tokens, bf16 autocast); in a whole GRPO step on an H200 (0.48B Llama,
  64 x 64 tokens, bf16) 1.29 s against 1.93 s with ``hf`` and 2.13 s for TRL (docs/benchmarks.md). Greedy output
  equals ``generate``'s.
- ``hf``: ``transformers`` ``generate`` with a KV cache, left-padded prompts, temperature / top-p, a stop at EOS.
  The cache is *static* on a GPU (preallocated; reported several times faster than the dynamic cache there: 17.2k
  against 2.9k new tokens/s for a 0.44B Llama at batch 64 on an H200, in NOTES.md; ``benchmarks/sampling.py`` did
  not reproduce that gap: 2.9k-3.0k against 3.1k-3.2k at 64 x 128 tokens, transformers 5.17, torch 2.11) and
  *dynamic* on a CPU, where the static cache works but is slower (measured: 0.100 s against 0.066 s for 16 x 32
  tokens of a 64-wide tiny Llama, medians of 6): that is ``cache="auto"``; ``static`` / ``dynamic`` force one. Where the static cache fails (an architecture without
  support) we fall back to the dynamic cache once, with a warning.
- ``vllm``: vLLM when it is installed (GPU). Its probabilities differ slightly from the trainer's (other kernels,
  other precision), so it returns its own per-token log-probs (``Rollout.sampler_logps``) and the trainers weight
  each token's loss by ``min(exp(trainer - sampler), is_cap)`` (truncated importance sampling). The weights are
  copied from the policy into vLLM before every rollout, and ``sampler/logp_gap`` / ``sampler/is_weight_mean``
  log how far the two disagree. vLLM itself needs a GPU and has not been run with Tether yet; Tether's side of the
  path (engine options, the weight copy, the rollout record, the weights, the metrics) is tested on the CPU with a
  stand-in engine (tests/test_train_grpo.py).

Log-probs are always recomputed by the trainer (``completion_logps``), with the logits divided by the sampling
temperature, so the ratio of new to old probabilities is exact on the first update. The rows of one prompt share
one forward over it: its keys and values are gathered to the group's rows and only the completions run per row
(same log-probs and gradients as a forward over each whole row, tested, DDP included).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tether.checks.inputs import model_text
from tether.data.batching import pad_left
from tether.errors import TetherError
from tether.models.logprobs import cache_kwarg, position_ids
from tether.models.tokens import encode_prompts


@dataclass
class Rollout:
    """B completions of a batch of prompts; the ``group_size`` completions of one prompt are consecutive rows.

    Shapes: B completions, P the prompt width (left-padded), R the completion width (right-padded after EOS).
    """

    prompt_ids: torch.Tensor  # (B, P) long, left-padded with pad_token_id
    prompt_mask: torch.Tensor  # (B, P) long, 1 on real prompt tokens
    completion_ids: torch.Tensor  # (B, R) long; pad after the first EOS
    completion_mask: torch.Tensor  # (B, R) long, 1 on the completion's tokens up to and including its EOS
    has_eos: torch.Tensor  # (B,) bool: the completion ended with EOS (not cut at max_new_tokens)
    prompts: list[Any]  # (B,) the prompts as given (strings or chat message lists)
    prompt_texts: list[str]  # (B,) the prompts as rendered for the policy (chat template applied)
    completion_texts: list[str]  # (B,) decoded completions, EOS and special tokens left out
    sampler_logps: torch.Tensor | None = None  # (B, R) float: the sampler's log-prob of each token (vLLM), else None

    @property
    def input_ids(self) -> torch.Tensor:
        """(B, P + R): prompt then completion."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P + R)."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def completion_lengths(self) -> torch.Tensor:
        """(B,) tokens in each completion, EOS included."""
        return self.completion_mask.sum(dim=1)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]


# ---------------------------------------------------------------------------------------------------------------
# Building the record from token ids (shared by both samplers)
# ---------------------------------------------------------------------------------------------------------------


def build_rollout(
    tokenizer: Any,
    prompts: Sequence[Any],
    prompt_texts: Sequence[str],
    prompt_ids: Sequence[list[int]],
    completion_ids: Sequence[list[int]],
    sampler_logps: Sequence[list[float]] | None = None,
) -> Rollout:
    """The padded record from per-row token lists; each completion is cut after its first EOS."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    cut, has_eos = [], []
    for row in completion_ids:
        row = list(row)
        ended = eos in row
        cut.append(row[: row.index(eos) + 1] if ended else row)
        has_eos.append(ended)
    width = max(1, max(len(r) for r in cut))
    ids = torch.full((len(cut), width), pad, dtype=torch.long)
    mask = torch.zeros((len(cut), width), dtype=torch.long)
    logps = torch.zeros((len(cut), width)) if sampler_logps is not None else None
    for i, row in enumerate(cut):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
        if logps is not None:
            logps[i, : len(row)] = torch.tensor(list(sampler_logps[i])[: len(row)], dtype=torch.float32)
    p_ids, p_mask = pad_left([list(p) for p in prompt_ids], pad)
    decoded = tokenizer.batch_decode([r[:-1] if ended else r for r, ended in zip(cut, has_eos)], skip_special_tokens=True)
    texts = [model_text(t) for t in decoded]  # a NUL token would make the text unstorable
    return Rollout(p_ids, p_mask, ids, mask, torch.tensor(has_eos), list(prompts), list(prompt_texts), texts, logps)


# ---------------------------------------------------------------------------------------------------------------
# HF generate
# ---------------------------------------------------------------------------------------------------------------

_STATIC_FAILED: set[str] = set()


@torch.no_grad()
def generate_hf(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    group_size: int = 1,
    max_new_tokens: int = 64,
    max_prompt_tokens: int = 448,
    temperature: float = 1.0,
    top_p: float = 1.0,
    cache: str = "auto",
) -> Rollout:
    """Sample ``group_size`` completions per prompt with ``model.generate`` in one batch (B = prompts x group_size).

    ``model`` is the unwrapped policy (a PeftModel works: its adapter is active). Sampling is plain: no top-k, no
    repetition penalty, whatever the model's generation_config says, so the trainer's log-probs describe the
    sampling distribution exactly.
    """
    from transformers import GenerationConfig

    texts, ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    rows = [i for i in range(len(ids)) for _ in range(group_size)]
    prompts_rep = [prompts[i] for i in rows]
    texts_rep, ids_rep = [texts[i] for i in rows], [ids[i] for i in rows]
    input_ids, attention_mask = pad_left(ids_rep, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    if cache not in ("auto", "static", "dynamic"):
        raise ValueError(f"unknown cache {cache!r}; valid: auto, static, dynamic")
    arch = type(model).__name__
    wants_static = cache == "static" or (cache == "auto" and device.type == "cuda")
    use_static = wants_static and arch not in _STATIC_FAILED
    config.cache_implementation = "static" if use_static else None
    was_training = model.training
    model.eval()
    try:
        kwargs = dict(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config)
        try:
            output = model.generate(**kwargs)
        except Exception as exc:  # static cache unsupported here: dynamic from now on, said once
            if not use_static:
                raise
            _STATIC_FAILED.add(arch)
            warnings.warn(f"static KV cache failed for {arch} ({type(exc).__name__}: {exc}); using the dynamic cache", stacklevel=2)
            config.cache_implementation = None
            output = model.generate(**kwargs)
    finally:
        model.train(was_training)
    completions = output[:, input_ids.shape[1] :].cpu().tolist()
    return build_rollout(tokenizer, prompts_rep, texts_rep, ids_rep, completions)


# ---------------------------------------------------------------------------------------------------------------
# Tether's own sampling loop
# ---------------------------------------------------------------------------------------------------------------


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True) -> torch.Tensor:
    """One token per row from next-token logits: softmax(logits / temperature), restricted to the nucleus of
    probability ``top_p`` (the most likely tokens whose probabilities reach top_p; the top token always stays),
    or the argmax when ``do_sample`` is false. shape: logits (B, V) -> (B,) long."""
    if not do_sample:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature if temperature != 1.0 else logits.float()
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1)  # ascending
        # drop the least likely tokens while the probability they hold stays within 1 - top_p
        drop_sorted = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        drop_sorted[:, -1] = False
        scores = scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    # Inverse-CDF draw: one uniform number per row (torch.multinomial draws one per vocabulary entry, 10x slower
    # here for a 411-token vocabulary); x stays strictly below the total, so a zero-probability token is never drawn.
    cdf = scores.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    total = cdf[:, -1:]
    x = torch.minimum(torch.rand_like(total) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True).squeeze(1)


class _HFStepper:
    """The same prefill / step / select interface as ``KVDecoder``, over the model's own forward and its dynamic
    cache: any causal LM, LoRA included."""

    def __init__(self, model: Any):
        from transformers import DynamicCache

        self.model = model
        self.cache_kwarg = cache_kwarg(model)
        self.cache = DynamicCache()

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        pos = position_ids(attention_mask)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: self.cache})
        self.cache.batch_repeat_interleave(repeats)
        self.mask = attention_mask.repeat_interleave(repeats, dim=0)
        self.positions = pos[:, -1].repeat_interleave(repeats) + 1
        return out.logits[:, -1].float().repeat_interleave(repeats, dim=0)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(
            input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.positions[:, None], use_cache=True, **{self.cache_kwarg: self.cache}
        )
        self.positions = self.positions + 1
        return out.logits[:, -1].float()

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask, self.positions = self.mask[rows], self.positions[rows]


_DECODER_CHECKED: dict[tuple[int, str, bool], str | None] = {}  # (id, class, autocast) -> None when KVDecoder matched
_DECODER_WARNED: set[tuple[str, str]] = set()


def _stepper(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_len: int, decoder: str) -> Any:
    """``KVDecoder`` where it runs this model (checked once per model against its own forward), else the HF
    forward. ``decoder``: auto, fast (raise where unsupported) or hf."""
    from tether.models.kv_cache_llama import KVDecoder, unsupported_reason

    if decoder == "hf":
        return _HFStepper(model)
    reason = unsupported_reason(model)
    if reason is None:
        autocast = torch.is_autocast_enabled(input_ids.device.type)
        key = (id(model), type(model).__name__, autocast)
        if key not in _DECODER_CHECKED:
            exact = not autocast and model.model.embed_tokens.weight.dtype == torch.float32
            try:
                KVDecoder(model, input_ids.shape[1] + 3).verify(input_ids[:4], attention_mask[:4], rtol=1e-3 if exact else 5e-2)
                _DECODER_CHECKED[key] = None
            except AssertionError as exc:
                _DECODER_CHECKED[key] = str(exc)
        reason = _DECODER_CHECKED[key]
    if reason is None:
        return KVDecoder(model, max_len)
    if decoder == "fast":
        raise TetherError(f"the fast decoder cannot run {type(model).__name__}: {reason}", fix="use --set decoder=auto (falls back to the model's own forward)")
    if not hasattr(model, "peft_config") and (type(model).__name__, reason) not in _DECODER_WARNED:  # LoRA: expected
        _DECODER_WARNED.add((type(model).__name__, reason))
        warnings.warn(f"sampling with the model's own forward (slower): the fast decoder cannot run {type(model).__name__} ({reason})", stacklevel=3)
    return _HFStepper(model)


@torch.no_grad()
def generate_loop(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    group_size: int = 1,
    max_new_tokens: int = 64,
    max_prompt_tokens: int = 448,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = True,
    decoder: str = "auto",
) -> Rollout:
    """Sample ``group_size`` completions per prompt with Tether's own loop (B = prompts x group_size rows).

    Each distinct prompt is prefilled once and its keys and values are shared by its group's rows; then one
    forward per new token, sampling as ``generate`` does (temperature, top-p, no top-k); a row stops at its first
    EOS, the loop when every row has, and finished rows leave the batch once a quarter of it has finished. The
    forward is ``tether.models.kv_cache_llama.KVDecoder`` for Llama-family models (``decoder="auto"``; checked against the
    model's own forward the first time), else the model's forward with a dynamic cache (``decoder="hf"``).
    Greedy (``do_sample=False``) output equals ``generate``'s.
    """
    if decoder not in ("auto", "fast", "hf"):
        raise ValueError(f"unknown decoder {decoder!r}; valid: auto, fast, hf")
    texts, ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    device = next(model.parameters()).device
    input_ids, attention_mask = (t.to(device) for t in pad_left(ids, tokenizer.pad_token_id))  # (N, P), one row per prompt
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    try:
        stepper = _stepper(model, input_ids, attention_mask, input_ids.shape[1] + max_new_tokens, decoder)
        rows = len(ids) * group_size
        completions = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=device)  # (B, max_new_tokens)
        active = torch.arange(rows, device=device)  # the batch's rows of the record
        finished = torch.zeros(rows, dtype=torch.bool, device=device)  # per batch row
        logits = stepper.prefill(input_ids, attention_mask, group_size)
        width = 0
        for t in range(max_new_tokens):
            tokens = sample_tokens(logits, temperature, top_p, do_sample)
            tokens = tokens.masked_fill(finished, pad)
            completions[active, t] = tokens
            width = t + 1
            finished = finished | (tokens == eos)
            done = int(finished.sum())
            if done == len(active) or t == max_new_tokens - 1:
                break
            if done and done * 4 >= len(active):  # compact: finished rows stop costing compute
                keep = (~finished).nonzero().squeeze(1)
                stepper.select(keep)
                active, finished, tokens = active[keep], finished[keep], tokens[keep]
            logits = stepper.step(tokens)
    finally:
        model.train(was_training)
    group = [i for i in range(len(ids)) for _ in range(group_size)]
    return build_rollout(
        tokenizer, [prompts[i] for i in group], [texts[i] for i in group], [ids[i] for i in group], completions[:, :width].cpu().tolist()
    )


def sample_rollout(model: Any, tokenizer: Any, prompts: Sequence[Any], *, sampler: str = "auto", cache: str = "auto", decoder: str = "auto", **sampling: Any) -> Rollout:
    """One rollout with ``generate_loop`` or ``generate_hf`` as ``sampler`` says (auto: the loop, which was
    faster than HF generate on the CPU and on the H200 measured). ``sampling``: group_size, max_new_tokens,
    max_prompt_tokens, temperature, top_p."""
    if sampler not in ("auto", "loop", "hf"):
        raise ValueError(f"unknown sampler {sampler!r} here; valid: auto, loop, hf (vllm has its own object)")
    if sampler in ("auto", "loop"):
        return generate_loop(model, tokenizer, prompts, decoder=decoder, **sampling)
    return generate_hf(model, tokenizer, prompts, cache=cache, **sampling)


# ---------------------------------------------------------------------------------------------------------------
# vLLM (optional, GPU)
# ---------------------------------------------------------------------------------------------------------------


class VLLMSampler:
    """vLLM in the training process (colocated): weights copied in before each rollout, per-token log-probs out.

    The log-probs vLLM returns must describe the distribution it sampled from (after temperature): we ask for
    ``logprobs_mode="processed_logprobs"`` where the installed vLLM has it.
    """

    def __init__(self, model_path: str, *, gpu_memory_utilization: float = 0.3, max_model_len: int = 1024, seed: int = 0, bf16: bool = True):
        try:
            from vllm import LLM  # noqa: F401
        except ImportError:
            raise TetherError("sampler vllm: vLLM is not installed", fix="pip install vllm (needs a GPU), or use --set sampler=hf") from None
        from vllm import LLM

        # In-process engine: the policy's weights can be copied into the model vLLM holds.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs = dict(
            model=model_path,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            dtype="bfloat16" if bf16 else "float32",
            enable_prefix_caching=True,
        )
        try:
            self.llm = LLM(**kwargs, logprobs_mode="processed_logprobs")
        except TypeError:  # older vLLM: log-probs after temperature is its only mode
            self.llm = LLM(**kwargs)

    def load_weights(self, model: Any) -> None:
        """Copy the policy's current weights (LoRA merged) into vLLM."""
        base = model
        if hasattr(model, "merge_adapter"):  # peft: merge, read, unmerge
            model.merge_adapter()
            base = model.get_base_model()
        state = {k.replace("base_layer.", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
        if hasattr(model, "unmerge_adapter"):
            weights = [(k, v.detach().clone()) for k, v in state.items()]
            model.unmerge_adapter()
        else:
            weights = list(state.items())
        engine = self.llm.llm_engine
        for path in ("model_executor.driver_worker.worker.model_runner.model", "model_executor.driver_worker.model_runner.model"):
            target: Any = engine
            try:
                for attr in path.split("."):
                    target = getattr(target, attr)
            except AttributeError:
                continue
            target.load_weights(weights)
            return
        # Newer engines: run the load inside the worker.
        self.llm.collective_rpc(lambda worker: worker.model_runner.model.load_weights(weights))

    def generate(
        self, tokenizer: Any, prompts: Sequence[Any], *, group_size: int, max_new_tokens: int, max_prompt_tokens: int, temperature: float, top_p: float
    ) -> Rollout:
        from vllm import SamplingParams

        texts, ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
        params = SamplingParams(n=group_size, temperature=temperature, top_p=top_p, top_k=-1, max_tokens=max_new_tokens, logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": row} for row in ids], params, use_tqdm=False)
        rows, completions, logps = [], [], []
        for i, out in enumerate(outputs):
            for sample in out.outputs:
                rows.append(i)
                completions.append(list(sample.token_ids))
                logps.append([step[tok].logprob for tok, step in zip(sample.token_ids, sample.logprobs)])
        return build_rollout(tokenizer, [prompts[i] for i in rows], [texts[i] for i in rows], [ids[i] for i in rows], completions, logps)


def sampler_gap_metrics(trainer_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, cap: float) -> dict[str, float]:
    """How far the sampler's (vLLM's) token log-probs are from the trainer's for the same policy, over the completion
    tokens: the mean importance weight (1 when they agree), the mean absolute log-prob gap, and the share of
    tokens whose weight hit ``cap``. A growing gap means the weights did not reach the sampler or its numerics
    drift. shape: (B, R) each."""
    real = mask.bool()
    weights = torch.exp(trainer_logps.detach() - sampler_logps.detach())[real]
    return {
        "sampler/is_weight_mean": float(weights.clamp(max=cap).mean()) if weights.numel() else 1.0,
        "sampler/logp_gap": float((trainer_logps.detach() - sampler_logps.detach())[real].abs().mean()) if weights.numel() else 0.0,
        "sampler/capped_fraction": float((weights >= cap).float().mean()) if weights.numel() else 0.0,
    }


# ---------------------------------------------------------------------------------------------------------------
# Plumbing the online trainers share: which prompts a rollout takes, sample tables, metrics over processes
# ---------------------------------------------------------------------------------------------------------------


