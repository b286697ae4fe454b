"""`tether loop` (on-policy feedback rounds) and `tether sample` (best-of-n sampling, the baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tether.cli.common import JsonFlag, emit_json


def loop_command(
    rounds: Annotated[int, typer.Argument(min=1, help="Rounds to run (a loop folder that holds earlier rounds continues after them).")],
    project: Annotated[str, typer.Option("--project", help="The pairwise feedback project people judge in (the web app's): every round queues its pairs there.")],
    policy: Annotated[Path, typer.Option("--policy", help="The policy to start from (a new loop) or the first policy (SFT).")],
    prompts: Annotated[Path, typer.Option("--prompts", help="Prompt rows (JSONL with `prompt`): each round answers a fresh slice; RL samples them all; the last --audit-prompts are the audits'.")],
    reference: Annotated[Path | None, typer.Option("--reference", help="The first policy: the KL anchor and the audits' baseline (default: --policy).")] = None,
    reward: Annotated[Path | None, typer.Option("--reward", help="The first reward ensemble (a folder of members, or one reward model); default: fit one on the project's judgments.")] = None,
    rules: Annotated[list[str] | None, typer.Option("--rules", help="More reward SPECs added to the ensemble's reward (e.g. rules:policy.yaml); repeatable.")] = None,
    out: Annotated[Path, typer.Option("--out", help="The loop's folder: loop.json (its state), rounds.jsonl, each round's models.")] = Path("loop"),
    pairs: Annotated[int, typer.Option("--pairs", min=1, help="Pairs queued for people each round.")] = 80,
    members: Annotated[int, typer.Option("--members", min=1, help="Separately seeded reward models in the ensemble.")] = 3,
    combine: Annotated[str, typer.Option("--combine", help="The reward RL optimizes over the members: mean, min or uwo=LAMBDA (mean - LAMBDA x spread).")] = "uwo=0.5",
    strategy: Annotated[str, typer.Option("--strategy", help="Which pairs to judge: disagreement (of the members), uncertainty, certainty or random.")] = "disagreement",
    pairing: Annotated[str, typer.Option("--pairing", help="Candidate pairs per prompt: all (every pair holding a policy reply), reference (each policy reply against each of the first policy's), best-reference (against the first policy's reply the ensemble scores highest).")] = "all",
    reference_replies: Annotated[int, typer.Option("--reference-replies", min=0, help="The first policy's replies per fresh prompt in the pool (best-reference keeps the best of them).")] = 1,
    keep_ties: Annotated[bool, typer.Option("--keep-ties", help="Keep people's ties in the rounds' snapshots (the reward models read them as half-wins).")] = False,
    rl_steps: Annotated[int, typer.Option("--rl-steps", min=1, help="Most RL optimizer steps per round.")] = 40,
    rl_from: Annotated[str, typer.Option("--rl-from", help="Where each round's RL starts: current (the policy so far, RL continued) or reference (the first policy again, against the refit ensemble).")] = "current",
    audit_every: Annotated[int, typer.Option("--audit-every", min=0, help="RL steps between audits by people (0: none).")] = 20,
    audit_prompts: Annotated[int, typer.Option("--audit-prompts", min=1, help="Prompts per audit batch.")] = 24,
    algo: Annotated[str, typer.Option("--algo", help="ppo, grpo or rloo.")] = "ppo",
    simulate: Annotated[bool, typer.Option("--simulate", help="The demo's simulated annotators answer (they follow the demo task's hidden gold: for a `tether demo` workspace); default: wait for people in the web app.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Run on-policy feedback rounds: the policy answers fresh prompts, the pairs its reward ensemble disagrees on go
    to people (the project's queue), QC and a snapshot that unions the rounds, the ensemble refit, RL continued
    with an over-optimization watch (audits by people, the starting policy's first; stop at the forecast peak),
    each round registered. A round hands on the checkpoint people's audits judged best: when every round's RL
    falls below what people saw before, the loop ends with the policy it started from, and says so.

    Example:  tether loop 2 --project support-demo-1 --policy artifacts/demo/support-demo-1/models/sft --prompts prompts.jsonl --rules rules:rules.yaml --simulate
    """
    from tether.cli.workspace import open_workspace
    from tether.lifecycle.evaluate_policy import load_prompts
    from tether.lifecycle.loop import LoopConfig, run_round, start_loop, wait_for_people

    ws = open_workspace()
    cfg = LoopConfig(pairs_per_round=pairs, prompts_per_round=2 * pairs, members=members, combine=combine, strategy=strategy, pairing=pairing,
                     reference_replies=reference_replies, keep_ties=keep_ties, rl_steps=rl_steps, rl_from=rl_from,
                     audit_every=audit_every, audit_prompts=audit_prompts, algo=algo, other_rewards=list(rules or []), seed=seed).validate()
    rows = load_prompts(prompts)
    audit = rows[-audit_prompts:] if audit_every else []
    pool = rows[: len(rows) - len(audit)] or rows
    judge, item_meta = (wait_for_people, None)
    if simulate:
        from tether.demo.loop import simulated_judge
        from tether.demo.run import demo_crew

        judge, item_meta = simulated_judge(seed, demo_crew())
    say = (lambda _m: None) if as_json else (lambda m: typer.echo(m, err=True))
    state = start_loop(ws, cfg, out, project=project, reference=reference or policy, policy=policy, ensemble=reward, say=say)
    records = []
    for r in range(state.rounds_done + 1, state.rounds_done + rounds + 1):
        start = ((r - 1) * cfg.prompts_per_round) % len(pool)
        fresh = (pool + pool)[start : start + cfg.prompts_per_round]
        records.append(run_round(ws, cfg, state, out, round_number=r, prompts=fresh, rl_prompts=prompts, audit_prompts=audit, judge=judge,
                                 item_meta=item_meta, say=say))
    if as_json:
        emit_json({"rounds": records, "policy": state.policy, "reward_ensemble": state.ensemble})
        return
    for rec in records:
        acc = rec["rm_accuracy_new_pairs"]
        typer.echo(f"round {rec['round']}: {rec['pairs_queued']} pairs, {rec['judgments_round']} judgments; reward model on the new pairs "
                   f"{'n/a' if acc is None else f'{acc:.0%}'}; snapshot {rec['snapshot']} ({rec['snapshot_rows']} rows); watch: {rec['watch']['reason']}"
                   + (f"; handed on the earlier policy {rec['policy']}" if rec.get("kept_earlier_policy") else ""))
    typer.echo(f"policy: {state.policy}\nreward ensemble: {state.ensemble} (--reward ensemble:{state.ensemble})")


def sample_command(
    policy: Annotated[Path, typer.Option("--policy", help="The policy folder to sample from.")],
    prompts: Annotated[Path, typer.Option("--prompts", help="Prompt rows (JSONL/JSON/CSV/parquet with `prompt`).")],
    reward: Annotated[list[str], typer.Option("--reward", help="Reward SPECs that pick the best reply (a reward model, ensemble:DIR[:min|:uwo=L], rules:FILE, py:FILE:FN); repeatable, summed.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the kept replies go (JSONL: prompt, completion, reward).")],
    best_of: Annotated[int, typer.Option("--best-of", min=1, help="Replies sampled per prompt; the reward keeps the best (KL to the policy: log n - (n-1)/n).")] = 4,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens sampled per reply.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", min=0.01, help="Sampling temperature.")] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Replies per generation batch.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Best-of-n sampling: n replies per prompt, the one the reward scores highest kept. The baseline an RL policy
    should beat at the same KL (Gao et al. 2022).

    Example:  tether sample --policy runs/sft --prompts heldout.jsonl --reward ensemble:runs/rm-ensemble:min --best-of 16 -o bon.jsonl
    """
    import json

    from tether.cli.common import require_file, writing
    from tether.lifecycle.evaluate_policy import load_policy, load_prompts
    from tether.lifecycle.overoptimization import best_of_n
    from tether.recipes.reward_specs import load_reward

    require_file(prompts, "prompts file")
    rows = load_prompts(prompts)
    scorer = load_reward(reward, device="cpu", say=lambda m: typer.echo(m, err=True))
    model, tokenizer = load_policy(policy)
    result = best_of_n(model, tokenizer, rows, scorer, best_of, max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size, seed=seed)
    with writing(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", encoding="utf-8") as fh:
            for prompt, text, score in zip(rows, result["completions"], result["scores"]):
                fh.write(json.dumps({"prompt": prompt, "completion": text, "reward": score, "best_of": best_of}, ensure_ascii=False) + "\n")
    summary = {"prompts": len(rows), "best_of": best_of, "kl": result["kl"], "mean_reward": sum(result["scores"]) / max(1, len(rows)), "output": str(output)}
    if as_json:
        emit_json(summary)
        return
    typer.echo(f"best-of-{best_of} on {len(rows)} prompts: mean reward {summary['mean_reward']:.3f}, KL {result['kl']:.3f} nats -> {output}")


def register(app: typer.Typer) -> None:
    app.command("loop")(loop_command)
    app.command("sample")(sample_command)
