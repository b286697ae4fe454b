"""Reference log-probs for DPO and KTO: computed once before training, in one no-grad pass split over the processes,
and cached on disk keyed by the data, the reference model, the tokens and the truncation; or scored every step.

With LoRA the reference is the policy with its adapter disabled, so one model sits in memory; without LoRA and
without the cache, a frozen second model.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tether.models.hf import disable_dropout, load_causal_lm
from tether.models.logprobs import TokenLogProbs, Triple, score_pairs
from tether.recipes.fsdp import even_share


@dataclass
class Reference:
    """Where a step reads its reference log-probs: the cached ``logps`` (N, 2), else scores from ``module`` (a
    frozen reference model, or the policy itself with ``disable_adapter``: its LoRA adapter off)."""

    logps: torch.Tensor | None
    module: Any = None
    disable_adapter: bool = False


def setup_reference(cfg: Any, run: Any, policy: Any, kind: str, data_digest: str, triples: list[Triple], pad_id: int, *, pack_to: int | None = None) -> Reference:
    """The reference of a DPO or KTO run; call it after ``run.prepare`` and before ``run.start`` (before any update
    and before a checkpoint is loaded: the policy is still the reference). ``triples`` are (prompt, a, b) ids; the
    cached values are [log p(a | prompt), log p(b | prompt)], computed in packed rows with ``pack_to``."""
    if cfg.precompute_ref:
        module, as_reference = reference_scorer(cfg, policy, run.accelerator)
        key = reference_cache_key(cfg, kind, data_digest, triples)
        batch_size = cfg.ref_batch_size or run.micro_batch
        logps = cached_reference_logps(
            cfg, run.accelerator, key,
            lambda: compute_reference_logps(module, triples, pad_id, batch_size, run.accelerator, reference=as_reference, pack_to=pack_to),
            run.workspace,
        )
        return Reference(logps)
    if not cfg.lora_r:  # on the fly without LoRA: a frozen second model
        ref = TokenLogProbs(load_causal_lm(cfg.reference_model or cfg.model), chunk_tokens=cfg.lm_head_chunk).requires_grad_(False)
        disable_dropout(ref)
        return Reference(None, run.accelerator.prepare_model(ref, evaluation_mode=True))
    return Reference(None, policy, disable_adapter=True)


def model_identity(path: str) -> str:
    """sha256 of a local model folder's config and every byte of its weight files (a hub id stands for itself): a
    cache key must never match another model (the resume check's tether.recipes.checkpoints.model_fingerprint
    samples large files instead)."""
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


def default_cache_dir(workspace: Any = None) -> Path:
    """``<workspace>/artifacts/cache/ref-logps``, else ``~/.cache/tether/ref-logps``."""
    if workspace is not None:
        return Path(workspace.artifacts) / "cache" / "ref-logps"
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


def compute_reference_logps(
    module: Any, triples: list[Triple], pad_id: int, batch_size: int, accelerator: Any, *, reference: bool, pack_to: int | None = None
) -> torch.Tensor:
    """(N, 2) reference log-probs of both answers of every triple, in one no-grad pass split over the processes."""
    order = sorted(range(len(triples)), key=lambda i: sum(map(len, triples[i])))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    values = torch.zeros((len(triples), 2), dtype=torch.float64, device=accelerator.device)
    mine, repeats = even_share(batches, accelerator)  # FSDP: every process makes as many passes
    with torch.no_grad(), accelerator.autocast():
        for k, batch in enumerate(mine + (mine or batches)[:repeats]):
            logps = score_pairs(module, [triples[i] for i in batch], pad_id, accelerator.device, reference=reference, pack_to=pack_to)
            if k < len(mine):
                values[torch.tensor(batch, device=values.device)] = logps.double()
    if accelerator.num_processes > 1:  # each row was computed by exactly one process: a sum gathers them
        values = accelerator.reduce(values, "sum")
    return values.float().cpu()


def cached_reference_logps(cfg: Any, accelerator: Any, key: dict[str, Any], compute: Callable[[], torch.Tensor], workspace: Any = None) -> torch.Tensor:
    """The (N, 2) reference log-probs from the cache when ``key`` matches, else computed once and stored."""
    cache_dir = Path(cfg.ref_cache_dir or default_cache_dir(workspace))
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
        ref = TokenLogProbs(load_causal_lm(cfg.reference_model), chunk_tokens=cfg.lm_head_chunk).requires_grad_(False)
        disable_dropout(ref)
        return accelerator.prepare_model(ref, evaluation_mode=True), False
    return policy, bool(cfg.lora_r)
