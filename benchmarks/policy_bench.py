"""Shared setup of benchmarks/dpo.py and benchmarks/sft.py: the HH-RLHF pairs, a small Llama built offline,
worker subprocesses (one per measured run, so peak memory is per run) and the summary table.

Both sides get the same model folder (same initial weights), the same rows in the same order, the same
hyperparameters and fp32 on the CPU. Rows are kept only when (a) prompt+answer fits in max_length, so neither
side truncates, and (b) TRL's tokenization (prompt+answer+EOS tokenized together) gives the same ids as Tether's
(prompt and answer tokenized apart), so both train on identical tokens.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------------
# GPU runs (--gpu): both sides in bf16 mixed precision on the CUDA device; memory from the CUDA allocator; MFU
# ---------------------------------------------------------------------------------------------------------------

# Dense bf16 tensor-core peak of the card (FLOP/s), from the vendors' data sheets (SXM parts).
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_memory(gpu: bool) -> dict[str, float]:
    """The peak memory figures of this process: RSS always, the CUDA allocator's high-water mark on a GPU run."""
    out = {"peak_rss_mb": peak_rss_mb()}
    if gpu:
        import torch

        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def gpu_peak_flops() -> tuple[str, float | None]:
    import torch

    name = torch.cuda.get_device_name()
    return name, next((v for k, v in PEAK_BF16.items() if k in name), None)


def matmul_params(model_dir: str | Path, kind: str = "causal") -> int:
    """Parameters that cost 2 FLOPs per token in a forward pass: all of them except an untied input embedding
    (a lookup). With tied embeddings the one matrix is the LM head's matmul and is counted once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir, **({} if kind == "causal" else {"num_labels": 1}))
    cls = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    with torch.device("meta"):
        model = cls.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    tied = kind == "causal" and getattr(config, "tie_word_embeddings", False)
    return total if tied else total - model.get_input_embeddings().weight.numel()


def print_mfu(label: str, rates: dict[str, float], flops_per_unit: float) -> None:
    """Model FLOPs utilization of each side: useful model FLOPs per second over the card's dense bf16 peak."""
    name, peak = gpu_peak_flops()
    cells = []
    for side, rate in rates.items():
        achieved = rate * flops_per_unit
        cells.append(f"{side} {achieved / 1e12:.1f} TFLOP/s" + (f" = {100 * achieved / peak:.1f}% MFU" if peak else ""))
    print(f"{label} on {name} (peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s): " + "; ".join(cells))


def prepare(workdir: Path, n_rows: int, max_length: int, vocab: int, hidden: int, layers: int, answer: str,
            model_dir: Path | None = None) -> dict[str, Any]:
    """Build (once) the tokenizer and model in ``workdir`` (or take the folder ``model_dir``) and write the first
    ``n_rows`` usable HH pairs, as that folder's tokenizer tokenizes them."""
    from tether.data.rows import load_rows
    from tether.demo.tiny import build_causal_lm, build_tokenizer

    if not HH.exists():
        sys.exit(f"HH-RLHF not found at {HH} (the shared data lies beside the checkout)")
    workdir.mkdir(parents=True, exist_ok=True)
    given = model_dir is not None
    model_dir = Path(model_dir) if given else workdir / f"model-v{vocab}-h{hidden}-l{layers}"
    rows = [r for r in load_rows(HH, "preference") if r["chosen"] != r["rejected"]]
    if not given and not (model_dir / "config.json").exists():
        tokenizer = build_tokenizer([r["prompt"] + r["chosen"] for r in rows] + [r["rejected"] for r in rows], vocab_size=vocab, chat_template=False)  # plain text, as TRL renders string prompts
        build_causal_lm(tokenizer, model_dir, hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 64), max_positions=max_length, seed=0)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos = tokenizer.eos_token
    kept, mismatched, too_long = [], 0, 0
    for row in rows:
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        ok = True
        for key in (["chosen", "rejected"] if answer == "pair" else ["chosen"]):
            ours = tokenizer(row[key], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            joint = tokenizer(row["prompt"] + row[key] + eos)["input_ids"]
            if len(prompt_ids) + len(ours) > max_length:
                too_long += 1
                ok = False
                break
            if joint != prompt_ids + ours:
                mismatched += 1
                ok = False
                break
        if ok:
            kept.append(row if answer == "pair" else {"prompt": row["prompt"], "completion": row["chosen"]})
        if len(kept) == n_rows:
            break
    if len(kept) < n_rows:
        sys.exit(f"only {len(kept)} usable rows; lower the steps or batch size")
    data = workdir / f"{answer}-{n_rows}-{max_length}{'-' + model_dir.name if given else ''}.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in kept), encoding="utf-8")
    # Tokens the policy processes per row (prompt + answer + EOS, once per answer): the MFU's token count.
    tokens = 0
    for row in kept:
        prompt = len(tokenizer(row["prompt"])["input_ids"])
        answers = [row["chosen"], row["rejected"]] if answer == "pair" else [row["completion"]]
        tokens += sum(prompt + len(tokenizer(x, add_special_tokens=False)["input_ids"]) + 1 for x in answers)
    return {"model": str(model_dir), "data": str(data), "skipped_too_long": too_long, "skipped_token_mismatch": mismatched,
            "tokens_per_row": tokens / len(kept)}


def run_worker(script: Path, side: str, args: list[str], threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    started = time.perf_counter()
    res = subprocess.run([sys.executable, str(script), "--worker", side, *args], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{side} worker failed:\n{res.stderr[-4000:]}")
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    out["process_s"] = time.perf_counter() - started
    return out


def summarize(results: dict[str, list[dict[str, Any]]], unit: str, tolerance: float) -> bool:
    """Print medians, ratios and the first 20 losses; return whether the losses agree within ``tolerance``."""
    keys = [("rate_total", f"{unit}/s end to end"), ("rate_train", f"{unit}/s training loop"),
            ("peak_rss_mb", "peak RSS (MB)"), ("train_rss_mb", "peak RSS - start (MB)")]
    if "peak_gpu_mb" in results["tether"][0]:
        keys.append(("peak_gpu_mb", "peak GPU memory (MB)"))
    med = {side: {k: statistics.median(r[k] for r in runs) for k, _ in keys} for side, runs in results.items()}
    print(f"\n{'':28}{'tether':>12}{'trl':>12}{'ratio':>10}")
    for key, label in keys:
        a, b = med["tether"][key], med["trl"][key]
        print(f"{label:28}{a:12.2f}{b:12.2f}{a / b:10.2f}x")
    for side, runs in results.items():
        print(f"  {side} repeats, {unit}/s end to end: " + ", ".join(f"{r['rate_total']:.2f}" for r in runs))
    # The machine's load drifts: the ratio within each repeat (the two runs back to back) is the steadier figure.
    for key, label in (("rate_total", "end to end"), ("rate_train", "training loop")):
        ratios = [a[key] / b[key] for a, b in zip(results["tether"], results["trl"])]
        print(f"  per-repeat speed-up, {label}: " + ", ".join(f"{x:.2f}x" for x in ratios) + f"  (median {statistics.median(ratios):.2f}x)")
    ours, theirs = results["tether"][0]["losses"], results["trl"][0]["losses"]
    print("\nstep   tether loss   trl loss    |diff|")
    worst = 0.0
    for step, (a, b) in enumerate(zip(ours[:20], theirs[:20]), start=1):
        worst = max(worst, abs(a - b))
        print(f"{step:4d}   {a:11.6f}  {b:9.6f}  {abs(a - b):9.2e}")
    agree = worst <= tolerance and len(ours) >= 20 and len(theirs) >= 20
    print(f"max |loss difference| over the first 20 steps: {worst:.2e} (tolerance {tolerance:g}): {'OK' if agree else 'MISMATCH'}")
    return agree
