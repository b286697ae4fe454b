"""`tether demo`: the whole RLHF loop on the built-in customer-support task, offline, on a CPU, in minutes.

Stages (each one is the library function a user would call, on the same store and files):

1. a tokenizer and a tiny base policy are built (tether.demo.tiny) and fine-tuned (tether.recipes.sft) on generated
   replies in every style, good and bad mixed (tether.demo.task);
2. the SFT policy samples two replies per request (tether.models.sampling) and the pairs are queued as comparison items of
   a feedback project (tether.store.campaigns: the web app's store path);
3. simulated annotators of different accuracies and one spammer (tether.demo.simulate) take items from the queue and
   answer through the same store functions as people; they follow the hidden gold preference, with noise;
4. quality control (tether.qc) flags the spammer; the judgments are aggregated into a frozen snapshot with a digest
   (tether.store.snapshots), the flagged annotator left out;
5. a reward model is trained on the snapshot (tether.recipes.reward); the policy is trained with PPO (or GRPO) against
   the reward model plus the rule rewards of the guidelines (personal data, forbidden phrases);
6. the policy is evaluated against the SFT policy (tether.lifecycle.evaluate_policy), by the reward model and by the hidden
   gold preference, and an HTML report is written (tether.demo.report); the reward model and the policy are registered
   with lineage (tether.lifecycle.registry), approved by the demo's admin and promoted when the gates pass;
7. a summary is printed.

Everything is deterministic for a seed (the timings and the MLflow run ids aside).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tether.demo.register import POLICY_NAME, REWARD_NAME
from tether.demo.report import demo_report
from tether.errors import TetherError

PROJECT_PREFIX = "support-demo"


@dataclass(frozen=True)
class DemoSize:
    """How big each stage is. ``default`` aims at ~5 minutes on 2 CPU cores, ``fast`` at ~1 minute."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    sft_requests: int
    sft_replies_per_request: int
    sft_epochs: float
    sft_learning_rate: float
    annotate_requests: int
    overlap: int
    gold_rate: float
    reward_epochs: float
    reward_learning_rate: float
    rl_prompts: int
    rl_steps: int
    rl_batch_size: int
    rl_learning_rate: float
    kl_coef: float
    max_new_tokens: int
    eval_prompts: int
    redteam_per_set: int
    # On-policy rounds (tether.lifecycle.loop), after the first reward model and RL run; 0: the loop runs once.
    rounds: int = 0
    members: int = 1  # separately seeded reward models in the ensemble (1: one reward model)
    combine: str = "mean"  # the reward RL optimizes over the members: mean, min or uwo=LAMBDA
    round_pairs: int = 50  # pairs of the policy's own replies judged per round
    round_prompts: int = 0  # fresh requests the policy answers per round, the pool's prompts (0: twice round_pairs)
    round_strategy: str = "disagreement"  # how the round's pairs are picked (tether.qc.select)
    round_pairing: str = "all"  # which pairs of a request's replies are candidates (tether.lifecycle.loop.PAIRINGS)
    round_keep_ties: bool = False  # people's ties kept in the rounds' snapshots (half-wins for the reward models)
    round_candidates: int = 2  # the policy's replies per fresh request, the pool the pairs are picked from
    round_reference_replies: int = 1  # the SFT policy's replies per fresh request in that pool
    round_overlap: int = 2  # annotators per item in the rounds (after QC left the spammer out)
    round_rl_steps: int = 40  # most RL steps per round
    round_rl_from: str = "current"  # where each round's RL starts (tether.lifecycle.loop.RL_FROM)
    audit_every: int = 20  # RL steps between audits by the annotators
    audit_prompts: int = 16  # prompts per audit
    round_eval_prompts: int = 100  # held-out requests each round's policy is measured on


SIZES = {
    "default": DemoSize(
        # 12 SFT epochs: at 5 the tiny policy barely read the request (42% of its polished replies answered the
        # request asked; benchmarks/topic.py) and RL amplified the off-topic ones (docs/benchmarks.md, issue 17)
        vocab_size=1024, hidden_size=128, num_layers=2, sft_requests=800, sft_replies_per_request=2, sft_epochs=12,
        sft_learning_rate=3e-3, annotate_requests=320, overlap=3, gold_rate=0.1, reward_epochs=2,
        reward_learning_rate=5e-4, rl_prompts=1024, rl_steps=80, rl_batch_size=32, rl_learning_rate=3e-4, kl_coef=0.05,
        max_new_tokens=64, eval_prompts=200, redteam_per_set=20,
    ),
    "fast": DemoSize(
        vocab_size=1024, hidden_size=128, num_layers=2, sft_requests=500, sft_replies_per_request=2, sft_epochs=6,
        sft_learning_rate=3e-3, annotate_requests=320, overlap=3, gold_rate=0.1, reward_epochs=2,
        reward_learning_rate=5e-4, rl_prompts=512, rl_steps=40, rl_batch_size=32, rl_learning_rate=3e-4, kl_coef=0.05,
        max_new_tokens=64, eval_prompts=120, redteam_per_set=0,
    ),
}
# `tether demo --rounds N`: fewer labels in the first round, a seeded reward ensemble, then N on-policy rounds.
LOOP = dict(annotate_requests=180, members=3, combine="uwo=0.5", round_pairs=60, round_candidates=4, round_reference_replies=1, round_overlap=2,
            round_rl_steps=40, audit_every=20, audit_prompts=12)


@dataclass
class StageRecord:
    number: int
    title: str
    seconds: float = 0.0
    detail: str = ""
    notes: list[str] = field(default_factory=list)


class Stages:
    """The visible progress display: one line per stage start and end (the trainers add their own bars)."""

    def __init__(self, total: int, enabled: bool):
        from rich.console import Console

        self.total = total
        self.console = Console(stderr=True, highlight=False)
        self.enabled = enabled
        self.records: list[StageRecord] = []

    @contextmanager
    def stage(self, title: str):
        record = StageRecord(len(self.records) + 1, title)
        self.records.append(record)
        if self.enabled:
            self.console.rule(f"[bold]{record.number}/{self.total}  {title}", align="left")
        started = time.perf_counter()
        yield record
        record.seconds = time.perf_counter() - started
        if self.enabled:
            self.console.print(f"[green]✓[/green] {title} [dim]({record.seconds:.1f} s)[/dim]  {record.detail}")
            for note in record.notes:
                self.console.print(f"  [yellow]note:[/yellow] {note}")

    def say(self, message: str) -> None:
        if self.enabled:
            self.console.print(f"  {message}")


@contextmanager
def _demo_environment(root: Path):
    """TETHER_HOME points at the demo's workspace while it runs (the stages are also handed it: the trainers log to
    its MLflow store and read its snapshots); a TETHER_DATABASE_URL of the user's is set aside so the demo never
    writes into their database."""
    saved = {k: os.environ.get(k) for k in ("TETHER_HOME", "TETHER_DATABASE_URL", "MLFLOW_DISABLE_TELEMETRY", "TOKENIZERS_PARALLELISM")}
    os.environ["TETHER_HOME"] = str(root)
    os.environ.pop("TETHER_DATABASE_URL", None)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the stages and the trainers show their own progress
    hf_logging.set_verbosity_error()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    return path


def _next_project_name(url: str) -> str:
    from sqlalchemy import select

    from tether.store.db import session_scope
    from tether.store.tables import Project

    with session_scope(url) as session:
        taken = set(session.scalars(select(Project.name).where(Project.name.like(f"{PROJECT_PREFIX}-%"))))
    n = 1
    while f"{PROJECT_PREFIX}-{n}" in taken:
        n += 1
    return f"{PROJECT_PREFIX}-{n}"


def find_redteam() -> Path | None:
    """The shared red-team sets beside the checkout (CI and developer machines), or None."""
    here = Path(__file__).resolve().parents[2] / "shared" / "data" / "redteam"
    return here if here.is_dir() else None


# ---------------------------------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------------------------------


def run_demo(
    workspace: Path,
    *,
    fast: bool = False,
    seed: int = 0,
    algo: str = "ppo",
    progress: bool = True,
    redteam: Path | None = None,
    rounds: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the whole loop in ``workspace`` (made if missing); returns the summary (also written as JSON).
    ``rounds``: on-policy rounds after the first (``LOOP`` settings; None: the size's own); ``overrides``: DemoSize
    fields (benchmarks: a larger kl_coef alone, say)."""
    from dataclasses import replace

    from tether.store.workspace import init_workspace

    if algo not in ("ppo", "grpo"):
        raise TetherError(f"--algo {algo!r} is not one of ppo, grpo", fix="use --algo ppo (default) or --algo grpo")
    size = SIZES["fast" if fast else "default"]
    if rounds:
        size = replace(size, **{**LOOP, "rounds": rounds})
    elif rounds == 0:
        size = replace(size, rounds=0)
    size = replace(size, **(overrides or {}))
    started = time.perf_counter()
    cpu_started = time.process_time()
    stages = Stages(8 if size.rounds else 7, progress)
    ws = init_workspace(workspace)
    with _demo_environment(ws.root):
        out = _run(ws, size, fast=fast, seed=seed, algo=algo, stages=stages, redteam=redteam, started=started)
    # CPU seconds of this process (all its threads): the figure to compare with the budget on a shared machine
    out["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    return out


def _run(ws: Any, size: DemoSize, *, fast: bool, seed: int, algo: str, stages: Stages, redteam: Path | None, started: float) -> dict[str, Any]:
    from tether.demo.task import GUIDELINES, RULES_YAML, DemoTask

    url = ws.database_url
    task = DemoTask(seed)
    project = _next_project_name(url)
    run_dir = ws.artifacts / "demo" / project
    models = run_dir / "models"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "guidelines.md").write_text(GUIDELINES, encoding="utf-8")
    rules_path = run_dir / "rules.yaml"
    rules_path.write_text(RULES_YAML, encoding="utf-8")
    out: dict[str, Any] = {"workspace": str(ws.root), "project": project, "seed": seed, "fast": fast, "algo": algo}
    say = stages.say

    # 1 ---------------------------------------------------------------------------------------------------------
    with stages.stage("tokenizer, tiny base policy, SFT on mixed replies") as st:
        sft_dir = _stage_sft(ws, task, size, models, run_dir, seed, stages.enabled, say)
        st.detail = f"{size.sft_requests * size.sft_replies_per_request} demonstrations (all styles) -> {sft_dir}"

    # 2 ---------------------------------------------------------------------------------------------------------
    with stages.stage("sample candidate replies, queue comparison items") as st:
        queued = _stage_queue(task, size, sft_dir, url, project, seed, say)
        st.detail = f"{queued['items']} pairwise items ({queued['gold']} gold) in project {project}; {queued['identical']} identical pairs skipped"
        out["queue"] = queued

    # 3 ---------------------------------------------------------------------------------------------------------
    with stages.stage("simulated annotators judge through the store") as st:
        crew, done = _stage_annotate(url, project, seed)
        st.detail = ", ".join(f"{name}: {n}" for name, n in sorted(done.items()))
        out["annotators"] = {a.name: {"accuracy": a.true_accuracy, "spammer": a.spam, "judgments": done.get(a.name, 0)} for a in crew}

    # 4 ---------------------------------------------------------------------------------------------------------
    with stages.stage("quality control, aggregated snapshot") as st:
        qc_report, snapshot, notes = _stage_snapshot(ws, url, project)
        st.notes += notes
        flagged = sorted(r["annotator"] for r in qc_report["annotators"] if r["flags"])
        st.detail = f"flagged: {', '.join(flagged) or 'none'}; snapshot {snapshot['name']} ({snapshot['row_count']} pairs, sha256 {snapshot['digest'][:12]}...)"
        out["qc"] = {"flagged": flagged, "alpha": {q["question"]: q["alpha"] for q in qc_report["questions"]}}
        out["snapshot"] = {k: snapshot[k] for k in ("name", "digest", "row_count", "aggregate")}

    # 5 ---------------------------------------------------------------------------------------------------------
    with stages.stage(f"reward model, then {algo.upper()} against it plus the rule rewards") as st:
        rm_dir, rm_metrics = _stage_reward(ws, size, sft_dir, snapshot["name"], models, seed, stages.enabled)
        say(f"reward model: held-out accuracy {rm_metrics.get('eval/accuracy', float('nan')):.1%} on the snapshot's pairs")
        reward = f"ensemble:{rm_dir.parent}:{size.combine}" if size.members > 1 else str(rm_dir)
        policy_dir, used_algo, notes = _stage_policy(ws, task, size, sft_dir, reward, rules_path, models, run_dir, seed, algo, stages.enabled)
        st.notes += notes
        st.detail = f"reward model -> {rm_dir.name}; policy ({used_algo}) -> {policy_dir.name}"
        out["algo"] = used_algo
        out["reward_model_metrics"] = rm_metrics

    registered = None
    if size.rounds:
        with stages.stage(f"{size.rounds} on-policy rounds: the policy's own replies judged, the ensemble refit, RL continued") as st:
            from tether.demo.loop import stage_rounds

            loop = stage_rounds(ws, task, size, sft_dir=sft_dir, policy_dir=policy_dir, ensemble_dir=rm_dir.parent, rules_path=rules_path, project=project,
                                run_dir=run_dir, crew=crew, flagged=out["qc"]["flagged"], algo=used_algo, seed=seed, progress=stages.enabled, say=say,
                                names=(REWARD_NAME, POLICY_NAME))
            out["rounds"] = loop["rounds"]
            state = loop["state"]
            policy_dir, rm_dir = Path(state.policy), Path(state.ensemble) / "member-0"
            snapshot = loop["snapshot"]
            out["snapshot"] = {k: snapshot[k] for k in ("name", "digest", "row_count", "aggregate")}
            registered = loop["rounds"][-1].get("registry")
            from tether.models.hf import read_tether_meta

            rm_metrics = {k: float(v) for k, v in (read_tether_meta(rm_dir).get("metrics") or {}).items() if isinstance(v, (int, float))}
            out["reward_model_metrics"] = rm_metrics
            st.detail = f"{size.rounds} rounds; snapshot {snapshot['name']} ({snapshot['row_count']} pairs, all rounds); policy -> {policy_dir}"
    out["policy_dir"], out["reward_dir"] = str(policy_dir), str(rm_dir)

    # 6 ---------------------------------------------------------------------------------------------------------
    with stages.stage("evaluate, write the report, register with lineage") as st:
        from tether.demo.register import stage_register

        st_started = time.perf_counter()
        result = _stage_evaluate(task, size, policy_dir, sft_dir, rm_dir, rules_path, seed, redteam, say)
        registry, notes = stage_register(ws, rm_dir, policy_dir, sft_dir, snapshot, rm_metrics, result, used_algo, qc_report, registered)
        st.notes += notes
        report_path = ws.reports_dir / f"{project}.html"
        out.update(_headline(result, task))
        from tether.lifecycle.loop import judgments_in

        out["judgments_total"] = judgments_in(url, project)
        out.setdefault("rounds", [])
        out["registry"] = registry
        out["report"] = str(report_path)
        st.detail = f"registered {registry['reward_model']} and {registry['policy']}" + (" (champion)" if registry["champion"] else "")
        st.seconds = time.perf_counter() - st_started
        out["seconds"] = round(time.perf_counter() - started, 1)
        out["stages"] = [asdict(r) for r in stages.records]
        from tether.lifecycle.reports.html import read_metrics, write

        # Everything the report shows, kept beside the run so it can be re-read (or re-rendered) later.
        (run_dir / "evaluation.json").write_text(json.dumps({"summary": out, "evaluation": result, "qc": qc_report}, default=str), encoding="utf-8")
        write(report_path, demo_report(out, result, qc_report, read_metrics(policy_dir), read_metrics(rm_dir), task))
        st.detail += f"; report -> {report_path}"

    # 7 ---------------------------------------------------------------------------------------------------------
    with stages.stage("summary") as st:
        out["seconds"] = round(time.perf_counter() - started, 1)
        out["stages"] = [asdict(r) for r in stages.records]
        _write_jsonl(run_dir / "summary.jsonl", [out])
        st.detail = f"total {out['seconds']:.0f} s"
    return out


# ---------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------


def _stage_sft(ws: Any, task: Any, size: DemoSize, models: Path, run_dir: Path, seed: int, progress: bool, say: Callable[[str], None]) -> Path:
    from tether.demo.tiny import build_causal_lm, build_tokenizer
    from tether.recipes.configs import SFTConfig
    from tether.recipes.runtime import set_seed
    from tether.recipes.sft import train_sft

    set_seed(seed)
    # a base model without a chat template: the task writes its own prompt format (Customer: ... Agent:)
    tokenizer = build_tokenizer(task.corpus(), vocab_size=size.vocab_size, chat_template=False)
    base_dir = models / "base"
    build_causal_lm(tokenizer, base_dir, hidden_size=size.hidden_size, num_layers=size.num_layers, num_heads=4, max_positions=256, seed=seed)
    rows = task.sft_rows(size.sft_requests, size.sft_replies_per_request)
    mix = Counter(r["style"] for r in rows)
    say("SFT mixture: " + ", ".join(f"{k} {v / len(rows):.0%}" for k, v in mix.most_common()))
    data = _write_jsonl(run_dir / "sft.jsonl", [{"prompt": r["prompt"], "completion": r["completion"], "style": r["style"]} for r in rows])
    sft_dir = models / "sft"
    cfg = SFTConfig(
        model=str(base_dir), data=str(data), output_dir=sft_dir, epochs=size.sft_epochs, batch_size=32,
        learning_rate=size.sft_learning_rate, warmup_ratio=0.05, max_length=192, seed=seed, logging_steps=5,
        progress=progress,
    )
    train_sft(cfg, workspace=ws)
    return sft_dir


def _stage_queue(task: Any, size: DemoSize, sft_dir: Path, url: str, project: str, seed: int, say: Callable[[str], None]) -> dict[str, Any]:
    from tether.demo.task import GUIDELINES
    from tether.lifecycle.evaluate_policy import load_policy, sample
    from tether.store import campaigns
    from tether.store.db import session_scope

    requests = task.requests(size.annotate_requests, "annotate")
    prompts = [r.prompt for r in requests]
    model, tokenizer = load_policy(sft_dir)
    first, _ = sample(model, tokenizer, prompts, max_new_tokens=size.max_new_tokens, temperature=1.0, batch_size=64, seed=seed)
    second, _ = sample(model, tokenizer, prompts, max_new_tokens=size.max_new_tokens, temperature=1.0, batch_size=64, seed=seed + 1000)
    rng = random.Random(f"{seed}:gold-items")
    rows, identical, truths = [], 0, Counter()
    for i, (prompt, a, b) in enumerate(zip(prompts, first, second)):
        if a == b:
            identical += 1
            continue
        truth = task.gold_prefers(prompt, a, b)  # hidden: only the simulated annotators read it
        truths[truth] += 1
        row: dict[str, Any] = {
            "prompt": prompt,
            "completions": [{"text": a, "model": "sft", "gen_settings": {"temperature": 1.0}}, {"text": b, "model": "sft", "gen_settings": {"temperature": 1.0}}],
            "external_id": f"req-{i}",
            "meta": {"sim_truth": truth},
        }
        if truth != "tie" and rng.random() < size.gold_rate:
            row["gold"] = {"choice": truth, "strength": 2}
        rows.append(row)
    with session_scope(url) as session:
        proj = campaigns.create_project(
            session, name=project, schema={"kind": "pairwise", "strength": True}, guidelines=GUIDELINES,
            description="tether demo: which support reply follows the guidelines better?", overlap=size.overlap,
            gold_rate=size.gold_rate, actor="demo",
        )
        counts = campaigns.add_items(session, project=proj, rows=rows, actor="demo")
    say(f"hidden gold over the queued pairs: {truths['a']} A better, {truths['b']} B better, {truths['tie']} ties")
    return {"items": counts["items"], "gold": counts["gold"], "identical": identical, "truth": dict(truths)}


def demo_crew() -> list[Any]:
    """Annotators of different accuracies and one spammer (answers at random, fast)."""
    from tether.demo.simulate import SimAnnotator

    return [
        SimAnnotator("ann-expert", accuracy=0.95, median_time_s=25.0),
        SimAnnotator("ann-careful", accuracy=0.88, median_time_s=30.0),
        SimAnnotator("ann-average", accuracy=0.78, median_time_s=18.0),
        SimAnnotator("ann-spammer", spam=True, median_time_s=3.0),
    ]


def _stage_annotate(url: str, project: str, seed: int) -> tuple[list[Any], dict[str, int]]:
    from tether.demo.simulate import run_annotators

    crew = demo_crew()
    done = run_annotators(url, project, crew, seed=seed)
    return crew, done


def _stage_snapshot(ws: Any, url: str, project: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """QC of the project, then a snapshot aggregated from the annotators QC did not flag."""
    import inspect

    from tether.qc import project_qc, snapshot_qc_record
    from tether.store import snapshots
    from tether.store.db import session_scope

    notes: list[str] = []
    report = project_qc(url, project)
    flagged = sorted(r["annotator"] for r in report["annotators"] if r["flags"])
    method = "dawid-skene" if "dawid-skene" in snapshots.AGGREGATES else "majority"
    params = inspect.signature(snapshots.make_snapshot).parameters
    kwargs: dict[str, Any] = {}
    excluded: list[str] = []
    if flagged:
        for name in ("exclude_annotators", "exclude", "excluded_annotators"):
            if name in params:
                kwargs[name] = flagged
                excluded = flagged
                break
        else:
            notes.append("this checkout's snapshots cannot leave annotators out yet: the flagged annotators' judgments stay in the majority vote")
    if method != "dawid-skene":
        notes.append("Dawid-Skene aggregation is not in this checkout's snapshots yet: majority vote used")
    qc = snapshot_qc_record(report, method=method, excluded=excluded)
    with session_scope(url) as session:
        snap = snapshots.make_snapshot(project, session=session, root=ws.root, aggregate=method, qc=qc, **kwargs)
    return report, snap, notes


def _stage_reward(ws: Any, size: DemoSize, sft_dir: Path, snapshot_name: str, models: Path, seed: int, progress: bool) -> tuple[Path, dict[str, float]]:
    from tether.models.hf import read_tether_meta
    from tether.recipes.configs import RewardConfig
    from tether.recipes.reward import train_reward

    rm_dir = models / "reward" if size.members == 1 else models / "reward-ensemble" / "member-0"
    cfg = RewardConfig(
        model=str(sft_dir), data=f"snapshot:{snapshot_name}", output_dir=rm_dir, epochs=size.reward_epochs,
        batch_size=16, learning_rate=size.reward_learning_rate, max_length=192, eval_fraction=0.1, seed=seed,
        logging_steps=5, progress=progress,
    )
    if size.members > 1:  # separately seeded members (tether.lifecycle.loop); member-0 stands for them in the report
        from tether.lifecycle.loop import train_members

        train_members(cfg, size.members, rm_dir.parent, workspace=ws)
    else:
        train_reward(cfg, workspace=ws)
    meta = read_tether_meta(rm_dir)
    metrics = {k: float(v) for k, v in (meta.get("metrics") or {}).items() if isinstance(v, (int, float))}
    return rm_dir, metrics


def _stage_policy(ws: Any, task: Any, size: DemoSize, sft_dir: Path, reward: str, rules_path: Path, models: Path, run_dir: Path, seed: int, algo: str, progress: bool) -> tuple[Path, str, list[str]]:
    notes: list[str] = []
    prompts = _write_jsonl(run_dir / "rl-prompts.jsonl", [{"prompt": r.prompt} for r in task.requests(size.rl_prompts, "rl")])
    rewards = [reward, f"rules:{rules_path}"]
    common = dict(
        model=str(sft_dir), prompts=str(prompts), reward=rewards, max_steps=size.rl_steps, batch_size=size.rl_batch_size,
        learning_rate=size.rl_learning_rate, max_length=192, max_new_tokens=size.max_new_tokens, temperature=1.0,
        kl_coef=size.kl_coef, seed=seed, logging_steps=1, progress=progress, sample_every=0,
    )
    if algo == "ppo":
        try:
            from tether.recipes.ppo import train_ppo
        except ImportError:
            notes.append("PPO (tether.recipes.ppo) is not in this checkout yet: GRPO was used instead")
            algo = "grpo"
        else:
            from tether.recipes.configs import PPOConfig

            out = models / "policy-ppo"
            train_ppo(PPOConfig(output_dir=out, **common), workspace=ws)
            return out, "ppo", notes
    from tether.recipes.configs import GRPOConfig
    from tether.recipes.grpo import train_grpo

    out = models / "policy-grpo"
    group = 4
    cfg = GRPOConfig(output_dir=out, group_size=group, **common)
    train_grpo(cfg, workspace=ws)
    return out, "grpo", notes


def _stage_evaluate(task: Any, size: DemoSize, policy_dir: Path, sft_dir: Path, rm_dir: Path, rules_path: Path, seed: int, redteam: Path | None, say: Callable[[str], None]) -> dict[str, Any]:
    from tether.demo.task import format_prompt
    from tether.lifecycle.evaluate_policy import evaluate_policy, load_redteam

    prompts = [r.prompt for r in task.requests(size.eval_prompts, "eval")]
    sets = None
    source = redteam if redteam is not None else find_redteam()
    if size.redteam_per_set and source is not None:
        sets = load_redteam(source)
    result = evaluate_policy(
        policy_dir, sft_dir, rm_dir, prompts, rules=rules_path, redteam=sets, template=format_prompt("{prompt}", "Alex"),
        n_redteam=size.redteam_per_set, max_new_tokens=size.max_new_tokens, temperature=1.0, batch_size=64, seed=seed + 7,
        gold=task.gold_score, n_pairs=10, say=say,
    )
    comp = result["completions"]
    result["style_mix"] = {
        "SFT": _mix([task.style_of(t, p) for p, t in zip(comp["prompts"], comp["baseline"])]),
        "policy": _mix([task.style_of(t, p) for p, t in zip(comp["prompts"], comp["policy"])]),
    }
    # How often the proxy (reward model) and the gold agree on which of the two replies is better.
    scores = result["scores"]
    agree = total = 0
    for rp, rb, gp, gb in zip(scores["reward_policy"], scores["reward_baseline"], scores["gold_policy"], scores["gold_baseline"]):
        if abs(gp - gb) > 1e-9 and abs(rp - rb) > 1e-9:
            total += 1
            agree += (rp > rb) == (gp > gb)
    result["proxy_gold_agreement"] = agree / total if total else None
    return result


def _mix(styles: list[str]) -> dict[str, float]:
    counts = Counter(styles)
    return {k: v / max(1, len(styles)) for k, v in counts.items()}


def _headline(result: dict[str, Any], task: Any) -> dict[str, Any]:
    return {
        "gold_win_rate": result["gold_win_rate"],
        "gold_win_rate_ci": result["gold_win_rate_ci"],
        "reward_win_rate": result["win_rate"],
        "reward_win_rate_ci": result["win_rate_ci"],
        "violation_rate_sft": result["violation_rate_baseline"],
        "violation_rate_policy": result["violation_rate_policy"],
        "gold_score_sft": result["gold_baseline_mean"],
        "gold_score_policy": result["gold_policy_mean"],
        "kl": result["kl"],
        **{k: result[k] for k in ("kl_se", "kl_negative", "kl_gate", "kl_note") if k in result},
        "length_sft": result["length_baseline"],
        "length_policy": result["length_policy"],
        "good_style_sft": result["style_mix"]["SFT"].get("good", 0.0),
        "good_style_policy": result["style_mix"]["policy"].get("good", 0.0),
        "off_topic_rate_sft": result["style_mix"]["SFT"].get("off_topic", 0.0),
        "off_topic_rate_policy": result["style_mix"]["policy"].get("off_topic", 0.0),
        "proxy_gold_agreement": result["proxy_gold_agreement"],
    }
