"""Tether DPO vs TRL DPOTrainer, side by side: pairs/s, peak memory and the first 20 losses.

Same small Llama (built offline, same initial weights), the same HH-RLHF harmless-base pairs in file order (no
shuffling on either side), the same hyperparameters, fp32 on the CPU, reference log-probs precomputed on both
sides (TRL: precompute_ref_log_probs=True; Tether: its cache, empty at the start of every run), no gradient
checkpointing. Each measured run is its own process (peak memory per run); the sides alternate across repeats.

    pip install trl==1.16.0
    python benchmarks/dpo.py                      # 4 layers x 256 hidden, 20 steps x 16 pairs, 3 repeats
    python benchmarks/dpo.py --steps 30 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_bench import (  # noqa: E402
    matmul_params,
    peak_memory,
    peak_rss_mb,
    prepare,
    print_mfu,
    rss_mb,
    run_worker,
    summarize,
)


def tether_worker(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (imported before the clock, as on TRL's side)

    from tether.recipes.configs import DPOConfig
    from tether.recipes.dpo import train_dpo

    base = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DPOConfig(
            model=a.model, data=a.data, output_dir=Path(tmp) / "out", loss="dpo", beta=a.beta, max_steps=a.steps,
            batch_size=a.batch_size, micro_batch_size=a.micro_batch_size, learning_rate=a.learning_rate,
            lr_schedule="linear", max_length=a.max_length, shuffle=False, group_by_length=False, logging_steps=1,
            mlflow=False, progress=False, ref_cache_dir=Path(tmp) / "cache", seed=0, bf16=a.gpu,
        )
        started = time.perf_counter()
        final = train_dpo(cfg).metrics
        total = time.perf_counter() - started
        losses = [json.loads(line)["train/loss"] for line in (Path(tmp) / "out" / "metrics.jsonl").read_text().splitlines()]
    pairs = a.steps * a.batch_size
    return {"rate_total": pairs / total, "rate_train": final["train/pairs_per_second"], **peak_memory(a.gpu),
            "train_rss_mb": peak_rss_mb() - base, "losses": losses}


def trl_worker(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    base = rss_mb()
    rows = [json.loads(line) for line in Path(a.data).read_text().splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp, loss_type="sigmoid", beta=a.beta, max_steps=a.steps, per_device_train_batch_size=a.micro_batch_size,
            gradient_accumulation_steps=a.batch_size // a.micro_batch_size, learning_rate=a.learning_rate,
            lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_length=a.max_length,
            precompute_ref_log_probs=True, bf16=a.gpu, use_cpu=not a.gpu, gradient_checkpointing=False,
            train_sampling_strategy="sequential", logging_steps=1, save_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, seed=0,
        )
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(a.model)
        tokenizer = AutoTokenizer.from_pretrained(a.model)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        train_started = time.perf_counter()
        trainer.train()
        done = time.perf_counter()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    pairs = a.steps * a.batch_size
    return {"rate_total": pairs / (done - started), "rate_train": pairs / (done - train_started), **peak_memory(a.gpu),
            "train_rss_mb": peak_rss_mb() - base, "losses": losses}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=["tether", "trl"])
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tolerance", type=float, help="largest |loss difference| allowed over the first 20 steps (default 2e-3 in fp32, 2e-2 with --gpu: bf16 autocast)")
    p.add_argument("--gpu", action="store_true", help="both sides on the CUDA device in bf16 mixed precision (fp32 weights, autocast); also prints GPU memory and MFU")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "tether-bench-policy"))
    a = p.parse_args()
    a.tolerance = a.tolerance if a.tolerance is not None else (2e-2 if a.gpu else 2e-3)
    if a.worker:
        out = tether_worker(a) if a.worker == "tether" else trl_worker(a)
        print("RESULT " + json.dumps(out))
        return
    setup = prepare(Path(a.workdir), a.steps * a.batch_size, a.max_length, a.vocab, a.hidden, a.layers, answer="pair")
    print(f"DPO: {a.layers} layers x {a.hidden} hidden, vocab {a.vocab}; {a.steps} steps x {a.batch_size} pairs "
          f"(micro batch {a.micro_batch_size}); max_length {a.max_length}; {a.threads} thread(s); {a.repeats} repeats")
    print(f"data: {setup['data']} (skipped: {setup['skipped_too_long']} too long, {setup['skipped_token_mismatch']} tokenized differently)")
    forward = ["--model", setup["model"], "--data", setup["data"]] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k in ("steps", "batch_size", "micro_batch_size", "learning_rate", "beta", "max_length", "threads")
    ] + (["--gpu"] if a.gpu else [])
    results: dict[str, list[dict]] = {"tether": [], "trl": []}
    for repeat in range(a.repeats):
        for side in (("tether", "trl") if repeat % 2 == 0 else ("trl", "tether")):
            out = run_worker(Path(__file__), side, forward, a.threads)
            results[side].append(out)
            print(f"  repeat {repeat + 1} {side:6}: {out['rate_total']:.2f} pairs/s end to end, {out['rate_train']:.2f} in the loop, peak {out['peak_rss_mb']:.0f} MB")
    ok = summarize(results, "pairs", a.tolerance)
    if a.gpu:  # training loop: forward + backward of the policy, 6 FLOPs per matmul parameter per token
        flops = 6 * matmul_params(setup["model"]) * setup["tokens_per_row"]
        print_mfu("training loop", {side: statistics.median(r["rate_train"] for r in runs) for side, runs in results.items()}, flops)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
