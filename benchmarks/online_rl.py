"""Online RL side by side: Tether GRPO against TRL's GRPOTrainer, and Tether PPO, on one tiny task.

Both GRPO runs get the same tiny Llama (built offline by tether.demo.tiny), the same prompts, the same Python reward
function, group size, completion length, batch, learning rate, KL coefficient and number of optimizer steps, in
fp32 (TRL: bf16=False, gradient_checkpointing=False), the token-level "dapo" loss with group std scaling on both
sides. Each run is its own subprocess (so peak memory is its own) with one torch thread; the sides alternate
over --repeats (repeat i uses seed --seed + i on every side) and the figures are medians.

Reported per side: seconds per optimizer step (median of steps 2..N: the first step pays for warm-up), both wall
clock and CPU time of the process (on a shared machine the CPU time is the steadier figure: it does not count the
time the process waits for a core), completion tokens generated per second of training, peak resident memory of
the process (and its growth after the model is loaded), the reward curve (mean reward per step, averaged over
repeats) and the final KL. ``--compare-hf`` adds Tether with ``sampler=hf`` (HF generate, as before Tether had
its own sampling loop), to show what the loop is worth; Tether's split of a step into sampling and update is
printed from its own metrics.

Run (needs `pip install trl==1.16.0`):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/online_rl.py --steps 25 --repeats 5 --compare-hf
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "Hello, how", "Your order", "Please reset", "The quick", "Thank you", "I am", "Can you help", "Where is my",
    "My password", "The account", "Tell me about", "Why did", "What is the", "How do I", "Please send", "I want to",
]
REWARD_SOURCE = '''
import re


def has_you(prompts, completions, **kwargs):
    """1 when the completion contains "you" (any case), else 0: about 30% of the untrained model's samples."""
    return [1.0 if re.search("you", c, re.IGNORECASE) else 0.0 for c in completions]
'''


def hh_prompts(tokenizer, count: int, max_tokens: int) -> list[str]:
    """Conversation prompts from the shared HH-RLHF data (helpful-base test), each cut to its last ``max_tokens``
    tokens of the benchmark's tokenizer (the end of a conversation is what the answer follows), as RLHF prompts are:
    a few hundred tokens of dialogue before a short answer."""
    from tether.data.rows import load_rows

    rows = load_rows(Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", "preference")
    prompts = []
    for row in rows[:count]:
        ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"][-max_tokens:]
        prompts.append(tokenizer.decode(ids))
    return prompts


def build_task(root: Path, hidden: int, layers: int, prompts: str = "short", prompt_tokens: int = 128, max_positions: int = 256) -> None:
    from tether.demo.tiny import build_causal_lm, build_tokenizer

    corpus = [
        "Hello, how can I help you today?", "Thank you for contacting support. Your order has shipped.",
        "The quick brown fox jumps over the lazy dog.", "I am sorry, I cannot share personal data.",
        "Please reset your password from the account page.", "Where is my parcel? It was due on Monday.",
    ] * 30
    tokenizer = build_tokenizer(corpus, vocab_size=512, chat_template=False)  # plain text, as TRL renders string prompts
    build_causal_lm(tokenizer, root / "lm", hidden_size=hidden, num_layers=layers, num_heads=max(4, hidden // 64), max_positions=max_positions, seed=0)
    chosen = PROMPTS if prompts == "short" else hh_prompts(tokenizer, 64, prompt_tokens)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in chosen))
    (root / "reward.py").write_text(REWARD_SOURCE)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_mb(args: argparse.Namespace) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if args.gpu else None


# ---------------------------------------------------------------------------------------------------------------
# Workers (one subprocess per run)
# ---------------------------------------------------------------------------------------------------------------


def run_tether(root: Path, args: argparse.Namespace, algo: str, sets: list[str] | None = None) -> dict:
    import torch

    from tether.recipes.configs import GRPOConfig, PPOConfig, load_config

    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix=f"tether-{algo}-"))
    common = dict(
        model=str(root / "lm"), output_dir=out, prompts=str(root / "prompts.jsonl"), reward=[f"py:{root / 'reward.py'}:has_you"],
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, learning_rate=args.learning_rate, lr_schedule="constant",
        kl_coef=args.beta, logging_steps=1, progress=False, mlflow=False, sample_every=0, seed=args.seed,
        max_length=max(128, args.prompt_tokens + 8 + args.max_new_tokens),  # never cuts a prompt: both sides see it whole
        bf16=args.gpu,
    )
    if algo == "ppo":
        cfg = load_config(PPOConfig, None, ["missing_eos_penalty=null"], max_steps=args.steps * 4, ppo_epochs=4, **common)
        from tether.recipes.ppo import train_ppo as trainer
    else:
        cfg = load_config(GRPOConfig, None, sets or [], algo="grpo", group_size=args.group_size, max_steps=args.steps, kl_estimator="k3", aggregation="token", **common)
        from tether.recipes.grpo import train_grpo as trainer
    rss_start = peak_rss_mb()
    stamps: list[tuple[float, float]] = []
    started = time.perf_counter()
    trainer(cfg, on_step=lambda *a: stamps.append((time.perf_counter(), time.process_time())))
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    updates = 4 if algo == "ppo" else 1  # optimizer steps per rollout
    return {
        "step_ends": [wall - started for wall, _ in stamps][updates - 1 :: updates],  # end of each rollout's updates
        "step_cpu_ends": [cpu for _, cpu in stamps][updates - 1 :: updates],
        "rollout_s": [h["time/rollout_s"] for h in history],
        "update_s": [h["time/update_s"] for h in history],
        "updates_per_rollout": updates,
        "rewards": [h["objective/scores"] for h in history],
        "kl": [h["objective/kl"] / max(h["completions/mean_length"], 1.0) for h in history],  # per token, as TRL logs it
        "completion_tokens": [h["completions/mean_length"] * args.batch_size for h in history],
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": peak_gpu_mb(args),
        "batch_size": args.batch_size,
        "rss_at_start_mb": rss_start,
    }


def run_trl(root: Path, args: argparse.Namespace) -> dict:
    import importlib.util

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    spec = importlib.util.spec_from_file_location("bench_reward", root / "reward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = Path(tempfile.mkdtemp(prefix="trl-grpo-"))
    stamps: list[tuple[float, float]] = []

    class Timer(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append((time.perf_counter(), time.process_time()))

    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, num_generations=args.group_size,
        max_completion_length=args.max_new_tokens, learning_rate=args.learning_rate, lr_scheduler_type="constant",
        max_steps=args.steps, beta=args.beta, loss_type="dapo", scale_rewards="group", num_iterations=1, epsilon=0.2,
        temperature=1.0, top_p=1.0, top_k=0, bf16=args.gpu, gradient_checkpointing=False, use_cpu=not args.gpu, logging_steps=1,
        report_to="none", save_strategy="no", seed=args.seed, disable_tqdm=True, dataloader_num_workers=0,
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
    )
    model = AutoModelForCausalLM.from_pretrained(root / "lm")
    tokenizer = AutoTokenizer.from_pretrained(root / "lm")
    dataset = Dataset.from_list([json.loads(line) for line in (root / "prompts.jsonl").read_text().splitlines()])
    trainer = GRPOTrainer(model=model, reward_funcs=[module.has_you], args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()])
    rss_start = peak_rss_mb()
    started = time.perf_counter()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {
        "step_ends": [wall - started for wall, _ in stamps],
        "step_cpu_ends": [cpu for _, cpu in stamps],
        "updates_per_rollout": 1,
        "rewards": [h["reward"] for h in logs],
        "kl": [h.get("kl", float("nan")) for h in logs],
        "completion_tokens": [h["completions/mean_length"] * args.batch_size for h in logs],
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": peak_gpu_mb(args),
        "batch_size": args.batch_size,
        "rss_at_start_mb": rss_start,
    }


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------


def summarize(runs: list[dict]) -> dict:
    step_times, cpu_times, tokens_per_s = [], [], []
    for run in runs:
        ends, cpu_ends = run["step_ends"], run["step_cpu_ends"]
        durations = [b - a for a, b in zip(ends, ends[1:])]  # rollouts 2..N
        step_times.append(statistics.median(durations) / run["updates_per_rollout"])
        cpu_times.append(statistics.median(b - a for a, b in zip(cpu_ends, cpu_ends[1:])) / run["updates_per_rollout"])
        tokens_per_s.append(sum(run["completion_tokens"][1:]) / (ends[-1] - ends[0]))
    n = min(len(r["rewards"]) for r in runs)
    curve = [statistics.mean(r["rewards"][i] for r in runs) for i in range(n)]
    return {
        "s_per_step": statistics.median(step_times),
        "cpu_s_per_step": statistics.median(cpu_times),
        "rollout_s": statistics.median(v for r in runs for v in r.get("rollout_s", [float("nan")])[1:]) if "rollout_s" in runs[0] else None,
        "update_s": statistics.median(v for r in runs for v in r.get("update_s", [float("nan")])[1:]) if "update_s" in runs[0] else None,
        "tokens_per_s": statistics.median(tokens_per_s),
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        "peak_gpu_mb": statistics.median(r["peak_gpu_mb"] for r in runs) if runs[0].get("peak_gpu_mb") else None,
        "rss_growth_mb": statistics.median(r["peak_rss_mb"] - r["rss_at_start_mb"] for r in runs),
        "reward_curve": curve,
        "completion_tokens_per_seq": [statistics.mean(r["completion_tokens"]) / r["batch_size"] for r in runs],
        "reward_first5": statistics.mean(curve[:5]),
        "reward_last5": statistics.mean(curve[-5:]),
        # spread over the runs (one seed each) of the mean reward of their last 5 steps: the noise to judge curves by
        "reward_last5_sd": statistics.stdev([statistics.mean(r["rewards"][n - 5 : n]) for r in runs]) if len(runs) > 1 else 0.0,
        "final_kl": statistics.median(r["kl"][-1] for r in runs),
        "runs": len(runs),
    }


def print_gpu_mfu(root: Path, summary: dict) -> None:
    """Model FLOPs utilization per side. Every prompt and completion token costs 2N FLOPs to sample (prefill or
    decode), 2N in the reference forward and 6N in the policy's forward and backward: 10N in all (N = matmul
    parameters; attention's own FLOPs, small at these lengths, left out), over the card's dense bf16 peak."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from policy_bench import matmul_params, print_mfu

    tokenizer = AutoTokenizer.from_pretrained(root / "lm")
    prompts = [json.loads(line)["prompt"] for line in (root / "prompts.jsonl").read_text().splitlines()]
    prompt_tokens = statistics.mean(len(tokenizer(p)["input_ids"]) for p in prompts)
    n = matmul_params(root / "lm")
    rates = {}
    for side, s in summary.items():
        completion = statistics.mean(s["completion_tokens_per_seq"])
        rates[side] = s["tokens_per_s"] * (1 + prompt_tokens / completion)  # prompt + completion tokens per second
    print_mfu("GRPO step (sampling, reference, update)", rates, 10 * n)


def launch(side: str, root: Path, argv: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [sys.executable, __file__, "--worker", side, "--root", str(root), *argv], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise SystemExit(f"{side} worker failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per GRPO run (PPO: this many rollouts of 4 epochs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="completions per optimizer step")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (both sides load a reference model)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", choices=["short", "hh"], default="short",
                        help="short: 16 prompts of 2-3 words (default); hh: 64 HH-RLHF conversation prompts, cut to their last --prompt-tokens tokens")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="--prompts hh: tokens kept from the end of each conversation")
    parser.add_argument("--no-ppo", action="store_true")
    parser.add_argument("--compare-hf", action="store_true", help="also run Tether with sampler=hf (HF generate) in every repeat")
    parser.add_argument("--compare-loop", action="store_true", help="also run Tether with sampler=loop (its own sampling loop) in every repeat")
    parser.add_argument("--compare-unshared", action="store_true", help="also run Tether with share_prompts=false (one forward per whole row in the update and the reference pass)")
    parser.add_argument("--gpu", action="store_true", help="every side on the CUDA device in bf16 mixed precision (fp32 weights, autocast); also prints GPU memory and MFU")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--worker", choices=["tether", "tether-hf", "tether-loop", "tether-unshared", "trl", "ppo"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.worker == "trl":
            result = run_trl(args.root, args)
        elif args.worker in ("tether-hf", "tether-loop"):
            result = run_tether(args.root, args, "grpo", [f"sampler={args.worker.split('-')[1]}"])
        elif args.worker == "tether-unshared":
            result = run_tether(args.root, args, "grpo", ["share_prompts=false"])
        else:
            result = run_tether(args.root, args, "grpo" if args.worker == "tether" else "ppo")
        print(json.dumps(result))
        return

    passthrough = [a for a in sys.argv[1:] if not a.startswith("--json") and a != str(args.json) and a not in ("--no-ppo", "--compare-hf", "--compare-loop", "--compare-unshared")]
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="online-rl-bench-"))
    build_task(root, args.hidden, args.layers, args.prompts, args.prompt_tokens, max(256, args.prompt_tokens + args.max_new_tokens + 16))
    runs: dict[str, list[dict]] = {"tether": [], "tether-hf": [], "tether-loop": [], "tether-unshared": [], "trl": [], "ppo": []}
    sides = (["tether", "trl"] + (["tether-hf"] if args.compare_hf else []) + (["tether-loop"] if args.compare_loop else [])
             + (["tether-unshared"] if args.compare_unshared else []))
    for repeat in range(args.repeats):
        order = sides[repeat % len(sides) :] + sides[: repeat % len(sides)]  # rotate who goes first
        for side in order:
            runs[side].append(launch(side, root, [*passthrough, "--seed", str(args.seed + repeat)]))  # one seed per repeat
            print(f"repeat {repeat + 1}/{args.repeats} {side}: {runs[side][-1]['step_ends'][-1]:.1f} s", file=sys.stderr)
    if not args.no_ppo:
        runs["ppo"].append(launch("ppo", root, passthrough))
    summary = {side: summarize(r) for side, r in runs.items() if r}
    tether, trl = summary["tether"], summary["trl"]
    print(f"\nOnline RL, tiny Llama (hidden {args.hidden}, {args.layers} layers), "
          + ("short prompts" if args.prompts == "short" else f"HH prompts of up to {args.prompt_tokens} tokens")
          + f", batch {args.batch_size} completions "
          f"= {args.batch_size // args.group_size} prompts x {args.group_size}, {args.max_new_tokens} new tokens, "
          f"{args.steps} optimizer steps, beta {args.beta}, lr {args.learning_rate}; medians of {args.repeats} runs")
    header = f"{'':28s}{'Tether GRPO':>14s}{'TRL GRPO':>14s}{'ratio':>10s}"
    print(header)
    rows = [
        ("seconds / step (wall)", "s_per_step", "{:.3f}", trl["s_per_step"] / tether["s_per_step"]),
        ("CPU seconds / step", "cpu_s_per_step", "{:.3f}", trl["cpu_s_per_step"] / tether["cpu_s_per_step"]),
        ("tokens generated / s", "tokens_per_s", "{:.0f}", tether["tokens_per_s"] / trl["tokens_per_s"]),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}", trl["peak_rss_mb"] / tether["peak_rss_mb"]),
        *([("peak GPU memory (MB)", "peak_gpu_mb", "{:.0f}", trl["peak_gpu_mb"] / tether["peak_gpu_mb"])] if args.gpu else []),
        ("RSS growth in training (MB)", "rss_growth_mb", "{:.0f}", None),
        ("reward, first 5 steps", "reward_first5", "{:.3f}", None),
        ("reward, last 5 steps", "reward_last5", "{:.3f}", None),
        ("final KL per token", "final_kl", "{:.4f}", None),
    ]
    for label, key, fmt, ratio in rows:
        shown = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"{label:28s}{fmt.format(tether[key]):>14s}{fmt.format(trl[key]):>14s}{shown:>10s}")
    print("ratios: step throughput and tokens/s are Tether / TRL (higher is better for Tether); memory is TRL / Tether")
    print(f"load average (1, 5, 15 min) before: {' '.join(f'{v:.1f}' for v in load_before)}; after: {' '.join(f'{v:.1f}' for v in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    every = max(1, len(tether["reward_curve"]) // 10)
    print("reward curve (every", every, "steps)")
    print("  Tether GRPO:", " ".join(f"{v:.2f}" for v in tether["reward_curve"][::every]))
    print("  TRL GRPO:   ", " ".join(f"{v:.2f}" for v in trl["reward_curve"][::every]))
    print(f"reward over the last 5 steps, mean of the runs (one seed each) +- their standard deviation: Tether "
          f"{tether['reward_last5']:.3f} +- {tether['reward_last5_sd']:.3f}, TRL {trl['reward_last5']:.3f} +- {trl['reward_last5_sd']:.3f}")
    print(f"Tether GRPO step split (wall, medians): sampling {tether['rollout_s']:.3f} s, scoring + update "
          f"{tether['s_per_step'] - tether['rollout_s']:.3f} s (of which the update {tether['update_s']:.3f} s)")
    if "tether-hf" in summary:
        hf = summary["tether-hf"]
        print(f"Tether GRPO with sampler=hf (HF generate): {hf['s_per_step']:.3f} s / step wall ({trl['s_per_step'] / hf['s_per_step']:.2f}x TRL), "
              f"{hf['cpu_s_per_step']:.3f} CPU s / step ({trl['cpu_s_per_step'] / hf['cpu_s_per_step']:.2f}x TRL), sampling "
              f"{hf['rollout_s']:.3f} s; reward first 5 {hf['reward_first5']:.3f} -> last 5 {hf['reward_last5']:.3f}")
    if "tether-loop" in summary:
        loop = summary["tether-loop"]
        print(f"Tether GRPO with sampler=loop (its own loop): {loop['s_per_step']:.3f} s / step wall ({trl['s_per_step'] / loop['s_per_step']:.2f}x TRL), "
              f"{loop['tokens_per_s']:.0f} tokens/s, sampling {loop['rollout_s']:.3f} s, update {loop['update_s']:.3f} s"
              + (f", peak GPU {loop['peak_gpu_mb']:.0f} MB" if args.gpu else "")
              + f"; reward first 5 {loop['reward_first5']:.3f} -> last 5 {loop['reward_last5']:.3f}")
    if "tether-unshared" in summary:
        plain = summary["tether-unshared"]
        print(f"Tether GRPO with share_prompts=false (one forward per whole row): {plain['s_per_step']:.3f} s / step wall "
              f"({trl['s_per_step'] / plain['s_per_step']:.2f}x TRL), update {plain['update_s']:.3f} s against {tether['update_s']:.3f} s shared; "
              f"reward first 5 {plain['reward_first5']:.3f} -> last 5 {plain['reward_last5']:.3f}")
    if args.gpu:
        print_gpu_mfu(root, summary)
    if "ppo" in summary:
        ppo = summary["ppo"]
        print(f"Tether PPO (critic, 4 epochs per rollout of {args.batch_size}): {ppo['s_per_step']:.3f} s / optimizer step "
              f"({ppo['cpu_s_per_step']:.3f} CPU s), "
              f"{ppo['tokens_per_s']:.0f} tokens/s, peak RSS {ppo['peak_rss_mb']:.0f} MB, reward first 5 rollouts "
              f"{ppo['reward_first5']:.3f} -> last 5 {ppo['reward_last5']:.3f}, final KL {ppo['final_kl']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
