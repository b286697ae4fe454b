"""Reward over-optimization on the demo task (Gao et al. 2022): gold and proxy reward against d = sqrt(KL).

On a finished `tether demo --rounds N` run (its SFT policy, its first seeded reward ensemble, the task's hidden gold):

1. best-of-n from the SFT policy, n = 1..64 (d = sqrt(log n - (n-1)/n)), the reply picked by one member, by the
   members' mean, by mean - 0.5 x spread (uncertainty-weighted) and by their minimum (worst case); 64 replies are
   sampled per prompt once and the first n of them used;
2. RL (PPO, the demo's settings, KL kept to SFT) against each of the same four rewards, in segments of
   ``--every`` steps; after each segment the policy's replies on the held-out prompts give d (sampled KL to SFT),
   the gold gain and the proxy (member 1's reward);
3. Gao et al.'s two forms fitted to the gold gain (best-of-n: d (alpha - beta d); RL: d (alpha - beta log d)), their
   alpha, beta and residuals, and a plot (docs/overoptimization.png).

    flock /tmp/tether-heavy.lock .venv/bin/python benchmarks/overoptimization.py --run tether-demo/artifacts/demo/support-demo-1
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"one member": ("member", 0.0), "mean": ("mean", 0.0), "uwo 0.5": ("uwo", 0.5), "min": ("min", 0.0)}


def pick(members: np.ndarray, how: str, coef: float) -> np.ndarray:
    """(..., K) member rewards -> (...) the variant's reward."""
    if how == "member":
        return members[..., 0]
    if how == "mean":
        return members.mean(-1)
    if how == "uwo":
        return members.mean(-1) - coef * members.std(-1)
    return members.min(-1)


def best_of_n_curves(sft, ensemble, task, prompts, ns, max_new_tokens, seed):
    import torch

    from tether.lifecycle.overoptimization import bon_kl
    from tether.models.sampling import sample_rollout

    model, tokenizer = sft
    big = max(ns)
    torch.manual_seed(seed)
    texts = []
    for p in prompts:
        with torch.no_grad():
            rollout = sample_rollout(model, tokenizer, [p], group_size=big, max_new_tokens=max_new_tokens, temperature=1.0)
        texts.append([t.strip() for t in rollout.completion_texts])
    flat_p = [p for p, row in zip(prompts, texts) for _ in row]
    flat_t = [t for row in texts for t in row]
    members = ensemble.members(flat_p, flat_t).numpy().reshape(len(prompts), big, -1)  # (P, n, K)
    gold = np.array([task.gold_score(p, t) for p, t in zip(flat_p, flat_t)]).reshape(len(prompts), big)
    out = {}
    for name, (how, coef) in VARIANTS.items():
        rows = []
        for n in ns:
            scores = pick(members[:, :n], how, coef)  # (P, n)
            best = scores.argmax(1)
            rows.append({"n": n, "d": math.sqrt(bon_kl(n)), "gold": float(gold[np.arange(len(prompts)), best].mean()),
                         "proxy": float(members[np.arange(len(prompts)), best, 0].mean())})
        out[name] = rows
    return out


def rl_curves(ws, run_dir, ensemble_dir, task, prompts, steps, every, seed, size):
    import torch

    from tether.lifecycle.evaluate_policy import kl_per_reply, load_policy, sample
    from tether.recipes.configs import PPOConfig
    from tether.recipes.ppo import train_ppo
    from tether.recipes.reward_specs import load_reward

    sft_dir = run_dir / "models" / "sft"
    member0 = load_reward([str(Path(ensemble_dir) / "member-0")], device="cpu")
    sft_model, tokenizer = load_policy(sft_dir)
    specs = {"one member": str(Path(ensemble_dir) / "member-0"), "mean": f"ensemble:{ensemble_dir}", "uwo 0.5": f"ensemble:{ensemble_dir}:uwo=0.5",
             "min": f"ensemble:{ensemble_dir}:min"}
    out = {}
    for name, spec in specs.items():
        current, rows = sft_dir, []
        texts, _ = sample(sft_model, tokenizer, prompts, max_new_tokens=size.max_new_tokens, temperature=1.0, batch_size=64, seed=seed)
        rows.append({"step": 0, "d": 0.0, "gold": float(np.mean([task.gold_score(p, t) for p, t in zip(prompts, texts)])),
                     "proxy": float(member0.score(prompts, prompts, texts)[0].mean())})
        for s in range(steps // every):
            out_dir = run_dir / "bench-overopt" / name.replace(" ", "-") / f"seg-{s}"
            train_ppo(PPOConfig(model=str(current), reference_model=str(sft_dir), prompts=str(run_dir / "rl-prompts.jsonl"), reward=[spec], output_dir=out_dir,
                                max_steps=every, lr_schedule="constant", batch_size=size.rl_batch_size, learning_rate=size.rl_learning_rate, kl_coef=size.kl_coef,
                                max_length=192, max_new_tokens=size.max_new_tokens, seed=seed + s, logging_steps=1, progress=False, sample_every=0, overwrite=True), workspace=ws)
            current = out_dir
            policy, _ = load_policy(out_dir)
            texts, rollouts = sample(policy, tokenizer, prompts, max_new_tokens=size.max_new_tokens, temperature=1.0, batch_size=64, seed=seed)
            with torch.no_grad():
                kl = float(np.mean(kl_per_reply(policy, sft_model, rollouts, 1.0)))
            rows.append({"step": (s + 1) * every, "kl": kl, "d": math.sqrt(max(kl, 0.0)),
                         "gold": float(np.mean([task.gold_score(p, t) for p, t in zip(prompts, texts)])),
                         "proxy": float(member0.score(prompts, prompts, texts)[0].mean())})
            print(f"  RL {name}: step {rows[-1]['step']}: d {rows[-1]['d']:.2f} gold {rows[-1]['gold']:.3f} proxy {rows[-1]['proxy']:.3f}", flush=True)
        out[name] = rows
    return out


def fits(curves, form):
    from tether.lifecycle.overoptimization import fit_gao

    out = {}
    for name, rows in curves.items():
        d = [r["d"] for r in rows]
        gain = [r["gold"] - rows[0]["gold"] for r in rows]
        try:
            out[name] = fit_gao(d, gain, form).as_dict()
        except Exception as exc:  # too few points with d > 0
            out[name] = {"error": str(exc)}
    return out


def plot(bon, rl, bon_fit, rl_fit, path):
    from tether.lifecycle.overoptimization import gao_curve
    from tether.lifecycle.reports.html import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, curves, fitted, form, title in ((axes[0], bon, bon_fit, "bon", "best-of-n from SFT"), (axes[1], rl, rl_fit, "rl", "PPO from SFT")):
        for (name, rows), color in zip(curves.items(), ("#d62728", "#1f77b4", "#2ca02c", "#9467bd")):
            d = np.array([r["d"] for r in rows])
            gain = np.array([r["gold"] - rows[0]["gold"] for r in rows])
            ax.plot(d, gain, "o", color=color, label=f"gold, {name}")
            ax.plot(d, [r["proxy"] - rows[0]["proxy"] for r in rows], "x", color=color, alpha=0.5)
            fit = fitted.get(name, {})
            if "alpha" in fit:
                grid = np.linspace(1e-3, max(d.max(), 1e-2) * 1.1, 80)
                ax.plot(grid, gao_curve(grid, fit["alpha"], fit["beta"], form), "-", color=color, alpha=0.6)
        ax.set_xlabel("d = sqrt(KL to SFT)")
        ax.set_ylabel("gain over SFT (gold: dots + fit; proxy, one member: x)")
        ax.set_title(title, fontsize=11)
        ax.legend(frameon=False, fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a demo run folder: <workspace>/artifacts/demo/<project> (made with --rounds)")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "overoptimization.png")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "overoptimization.json")
    args = parser.parse_args()

    import os

    from tether.demo.run import SIZES
    from tether.demo.task import DemoTask
    from tether.lifecycle.evaluate_policy import load_policy
    from tether.lifecycle.loop import load_ensemble
    from tether.store.workspace import load_workspace

    summary = json.loads((args.run / "summary.jsonl").read_text().splitlines()[-1])
    ws = load_workspace(Path(summary["workspace"]))
    os.environ["TETHER_HOME"] = str(ws.root)
    task = DemoTask(summary["seed"])
    prompts = [r.prompt for r in task.requests(args.prompts, "overoptimization")]
    ensemble_dir = args.run / "models" / "reward-ensemble"
    started = time.perf_counter()
    bon = best_of_n_curves(load_policy(args.run / "models" / "sft"), load_ensemble(ensemble_dir), task, prompts, [1, 2, 4, 8, 16, 32, 64], 64, summary["seed"])
    rl = rl_curves(ws, args.run, ensemble_dir, task, prompts, args.steps, args.every, summary["seed"], SIZES["default"])
    result = {"best_of_n": bon, "rl": rl, "fit_best_of_n": fits(bon, "bon"), "fit_rl": fits(rl, "rl"), "seconds": round(time.perf_counter() - started, 1),
              "prompts": args.prompts, "run": str(args.run)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    plot(bon, rl, result["fit_best_of_n"], result["fit_rl"], args.plot)
    for kind in ("best_of_n", "rl"):
        print(f"\n{kind}: gold gain over SFT (proxy: member 1) by d")
        for name, rows in result[kind].items():
            fit = result[f"fit_{kind}"][name]
            cells = "  ".join(f"d={r['d']:.2f}: {r['gold'] - rows[0]['gold']:+.2f}/{r['proxy'] - rows[0]['proxy']:+.2f}" for r in rows)
            shape = f"alpha {fit['alpha']:.3f} beta {fit['beta']:.3f} rmse {fit['rmse']:.3f} peak d* {fit['peak_d']:.2f}" if "alpha" in fit else fit.get("error")
            print(f"  {name:>10}: {cells}\n  {'':>10}  fit: {shape}")
    print(f"\n{result['seconds']} s; plot -> {args.plot}; figures -> {args.out}")


if __name__ == "__main__":
    main()
