"""The demo's side of `tether loop --simulate`: the simulated annotators as the loop's judge, answering through the
store's queue (tether.demo.simulate), and the hidden gold preference they follow, put in each item's meta."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def simulated_judge(seed: int, crew: list[Any]) -> tuple[Callable[[str, str], Any], Callable[[Any, str, str], dict[str, Any]]]:
    """(judge, item_meta) for tether.lifecycle.loop: the demo's crew answers every open item of a project; each
    item carries ``sim_truth``, the task's gold preference between its two replies (only the simulated annotators
    read it)."""
    from tether.demo.simulate import run_annotators
    from tether.demo.task import DemoTask

    task = DemoTask(seed)
    calls = {"n": 0}

    def judge(url: str, project: str) -> dict[str, int]:
        calls["n"] += 1
        return run_annotators(url, project, crew, seed=seed * 1000 + calls["n"])

    def item_meta(prompt: Any, a: str, b: str) -> dict[str, Any]:
        return {"sim_truth": task.gold_prefers(prompt, a, b)}

    return judge, item_meta


def round_figures(task: Any, rules_path: Any, prompts: list[str], sft_texts: list[str], *, max_new_tokens: int, seed: int) -> Any:
    """evaluate(policy_dir) for tether.lifecycle.loop.run_round: the round's policy on held-out requests against the
    SFT policy's replies (sampled once): gold win-rate, off-topic share, violations."""
    from tether.checks.rules import load_rules
    from tether.lifecycle.evaluate_policy import load_policy, sample, violations, win_rate

    rules = load_rules(rules_path)

    def evaluate(policy_dir: Any) -> dict[str, Any]:
        model, tokenizer = load_policy(policy_dir)
        texts, _ = sample(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=1.0, batch_size=64, seed=seed)
        gold = win_rate([task.gold_score(p, t) for p, t in zip(prompts, texts)], [task.gold_score(p, t) for p, t in zip(prompts, sft_texts)], seed=seed)
        flags, _ = violations(rules, texts)
        styles = [task.style_of(t, p) for p, t in zip(prompts, texts)]
        return {"gold_win_rate": gold["value"], "gold_win_rate_ci": [gold["ci_low"], gold["ci_high"]], "off_topic_rate": styles.count("off_topic") / len(styles),
                "good_style_rate": styles.count("good") / len(styles), "violation_rate": sum(flags) / len(flags)}

    return evaluate


def stage_rounds(ws: Any, task: Any, size: Any, *, sft_dir: Any, policy_dir: Any, ensemble_dir: Any, rules_path: Any, project: str, run_dir: Any,
                 crew: list[Any], flagged: list[str], algo: str, seed: int, progress: bool, say: Callable[[str], None], names: tuple[str, str]) -> dict[str, Any]:
    """The demo's on-policy rounds (tether.lifecycle.loop.run_round), after the first reward ensemble and RL run. The
    demo's admin first does what a person would after QC: leaves the flagged annotators out of the crew and lowers
    the project's overlap for the rounds (the store's update_project, as the web app's admin page)."""
    from sqlalchemy import select

    from tether.lifecycle.evaluate_policy import load_policy, sample
    from tether.lifecycle.loop import LoopConfig, LoopState, run_round
    from tether.store import campaigns
    from tether.store.db import session_scope
    from tether.store.tables import Project

    cfg = LoopConfig(
        pairs_per_round=size.round_pairs, prompts_per_round=size.round_prompts or size.round_pairs * 2, candidates=size.round_candidates,
        reference_replies=size.round_reference_replies, strategy=size.round_strategy, pairing=size.round_pairing, keep_ties=size.round_keep_ties,
        members=size.members,
        combine=size.combine, rl_steps=size.round_rl_steps, rl_from=size.round_rl_from, audit_every=size.audit_every, audit_prompts=size.audit_prompts, algo=algo,
        rl=dict(batch_size=size.rl_batch_size, learning_rate=size.rl_learning_rate, kl_coef=size.kl_coef, max_length=192),
        reward=dict(epochs=size.reward_epochs, learning_rate=size.reward_learning_rate, batch_size=16, max_length=192, eval_fraction=0.1, logging_steps=5),
        other_rewards=[f"rules:{rules_path}"], max_new_tokens=size.max_new_tokens, seed=seed, progress=progress,
    ).validate()
    with session_scope(ws.database_url) as session:
        proj = session.scalars(select(Project).where(Project.name == project)).one()
        campaigns.update_project(session, project=proj, overlap=size.round_overlap, actor="demo")
    judge, item_meta = simulated_judge(seed + 17, [a for a in crew if a.name not in flagged])
    state = LoopState(project=project, reference=str(sft_dir), policy=str(policy_dir), ensemble=str(ensemble_dir), reward_name=names[0], policy_name=names[1])
    eval_prompts = [r.prompt for r in task.requests(size.round_eval_prompts, "round-eval")]
    sft_model, sft_tokenizer = load_policy(sft_dir)
    sft_texts, _ = sample(sft_model, sft_tokenizer, eval_prompts, max_new_tokens=size.max_new_tokens, temperature=1.0, batch_size=64, seed=seed + 5)
    evaluate = round_figures(task, rules_path, eval_prompts, sft_texts, max_new_tokens=size.max_new_tokens, seed=seed + 6)
    records = [{"round": 0, "policy": str(policy_dir), **evaluate(policy_dir)}]
    audit_prompts = [r.prompt for r in task.requests(size.audit_prompts, "audit")]
    for r in range(1, size.rounds + 1):
        fresh = [q.prompt for q in task.requests(cfg.prompts_per_round, f"round-{r}")]
        record = run_round(ws, cfg, state, run_dir / "loop", round_number=r, prompts=fresh, rl_prompts=run_dir / "rl-prompts.jsonl",
                           audit_prompts=audit_prompts, judge=judge, item_meta=item_meta, evaluate=evaluate, say=say)
        say(f"round {r}: gold win-rate {record['gold_win_rate']:.0%}, off-topic {record['off_topic_rate']:.0%}, violations {record['violation_rate']:.0%}, "
            f"{record['judgments_round']} judgments")
        records.append(record)
    from tether.store.snapshots import list_snapshots

    with session_scope(ws.database_url) as session:
        snapshot = next(s for s in list_snapshots(session) if s["name"] == state.snapshot)
    return {"rounds": records, "state": state, "snapshot": snapshot}
