"""On-policy feedback rounds (`tether loop`): the iterated online RLHF of Bai et al. 2022, on one workspace.

Each round:

1. the current policy answers fresh prompts (``candidates`` replies each, beside ``reference_replies`` of the first
   policy); the pairs that hold at least one of the policy's replies are scored by the reward ensemble's members
   and the ones its members disagree on most (tether.qc.select, ``disagreement``) are queued as items of the
   feedback project, through the store functions the web app uses;
2. the ``judge`` answers them: people in the web app, or the simulated annotators (`--simulate`) through the same
   store path;
3. QC (tether.qc) flags unreliable annotators; a snapshot of the whole project, made without them, unions this
   round's judgments with every earlier round's (each judgment once: one project, one aggregation; the judgments
   it rests on are recorded with it, its lineage);
4. the reward ensemble is refit on it: ``members`` separately seeded reward models (head initialization, data
   order, held-out split), each a call of ``tether.recipes.reward.train_reward``, in one folder that
   ``--reward ensemble:DIR`` reads (tether.recipes.reward_specs);
5. RL continues from the current policy against the conservative ensemble reward (plus the other SPECs), with
   the KL kept to the first policy, in segments of ``audit_every`` steps; after each segment an audit batch of
   the policy's replies goes to the judge (tether.lifecycle.overoptimization), and the watch stops the round at
   the forecast peak of people's judgment (or when the proxy rises while people's judgment falls), keeping the
   best audited checkpoint. The policy a round starts from is audited first when it has no audit yet (the first
   RL run), and a round that runs to its end hands on its last checkpoint unless people judged an earlier one
   better by more than the watch's tolerance (``kept_at_end``): the rounds never hand on a policy people judged
   worse than one they saw before;
6. the round's reward model and policy are registered with lineage (snapshot digest, parent policy and reward
   model; a round that kept an earlier policy registers its reward model only), and the round's figures appended
   to ``rounds.jsonl``.

Every pair an audit queues is an item of the same project: its judgments also train the next round's reward
models.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tether.errors import TetherError
from tether.lifecycle.overoptimization import (
    AuditPoint,
    Judge,
    audit_batch,
    kept_at_end,
    queue_pairs,
    watch_decision,
)

ACTOR = "loop"
# Which pairs of one prompt's replies are candidates for people: ``all``, every pair holding one of the policy's
# replies; ``reference``, each policy reply against each of the first policy's; ``best-reference``, each policy reply
# against the first policy's reply the ensemble's mean scores highest (the strongest alternative it offers: a pair
# the ensemble cannot call is one where people teach it most, in the manner of Bai et al. 2022's comparisons
# against the best earlier model).
PAIRINGS = ("all", "reference", "best-reference")
# Where each round's RL starts: ``current``, the policy so far (RL continued); ``reference``, the first policy again,
# against the refit ensemble (the policy so far still chose what people judged: its replies are the round's data).
RL_FROM = ("current", "reference")
ItemMeta = Callable[[Any, str, str], dict[str, Any]]


@dataclass
class LoopConfig:
    """``tether loop``: how many rounds, how many labels each, how the reward ensemble is refit and RL continued."""

    pairs_per_round: int = 80  # pairs queued for people each round
    prompts_per_round: int = 160  # fresh prompts the policy answers each round (candidates for the pairs)
    candidates: int = 2  # the policy's replies per fresh prompt
    reference_replies: int = 1  # the first policy's replies per fresh prompt, paired with the policy's
    strategy: str = "disagreement"  # tether.qc.select strategy: disagreement, uncertainty, certainty or random
    pairing: str = "all"  # the candidate pairs of a prompt's replies (PAIRINGS): all, reference or best-reference
    keep_ties: bool = False  # keep people's ties in the rounds' snapshots (the reward trainer reads them as half-wins)
    members: int = 3  # separately seeded reward models in the ensemble
    combine: str = "uwo=0.5"  # the conservative reward RL optimizes: mean, min or uwo=LAMBDA (reward_specs)
    rl_steps: int = 40  # most optimizer steps of RL per round
    rl_from: str = "current"  # where each round's RL starts: "current" (the policy so far) or "reference" (the first policy, anew)
    audit_every: int = 20  # steps between audits (0: no audit, one segment)
    audit_prompts: int = 24  # prompts per audit batch
    algo: str = "ppo"  # ppo, grpo or rloo
    rl: dict[str, Any] = field(default_factory=dict)  # fields of the RL config (batch_size, learning_rate, kl_coef, ...)
    reward: dict[str, Any] = field(default_factory=dict)  # fields of the RewardConfig (epochs, learning_rate, ...)
    other_rewards: list[str] = field(default_factory=list)  # SPECs added to the ensemble's reward (rules:FILE.yaml)
    max_new_tokens: int = 64
    temperature: float = 1.0
    seed: int = 0
    progress: bool = False

    def validate(self) -> LoopConfig:
        from tether.qc.select import SELECT_STRATEGIES
        from tether.recipes.reward_specs import parse_combine

        if self.strategy not in SELECT_STRATEGIES:
            raise TetherError(f"--strategy {self.strategy!r} is not one of {', '.join(SELECT_STRATEGIES)}", fix="use --strategy disagreement")
        if self.pairing not in PAIRINGS:
            raise TetherError(f"--pairing {self.pairing!r} is not one of {', '.join(PAIRINGS)}", fix="use --pairing all")
        if self.pairing != "all" and self.reference_replies < 1:
            raise TetherError(f"--pairing {self.pairing} needs reference replies", fix="use --reference-replies 1 or more, or --pairing all")
        if self.rl_from not in RL_FROM:
            raise TetherError(f"--rl-from {self.rl_from!r} is not one of {', '.join(RL_FROM)}", fix="use --rl-from current")
        if self.algo not in ("ppo", "grpo", "rloo"):
            raise TetherError(f"--algo {self.algo!r} is not one of ppo, grpo, rloo", fix="use --algo ppo")
        if self.members < 1 or self.pairs_per_round < 1 or self.rl_steps < 1:
            raise TetherError("--members, --pairs and --rl-steps must be at least 1", fix="give positive numbers")
        if self.strategy == "disagreement" and self.members < 2:
            raise TetherError("--strategy disagreement needs --members 2 or more", fix="use --members 3, or --strategy certainty")
        parse_combine(self.combine, f"--combine {self.combine}")
        return self


@dataclass
class LoopState:
    """Where a loop stands (``loop.json`` in its folder): the first policy, the current policy and reward ensemble,
    the project and the registry names; a later ``tether loop`` continues from it."""

    project: str
    reference: str  # the first (SFT) policy: the KL anchor and the audits' baseline
    policy: str
    ensemble: str | None = None
    rounds_done: int = 0
    reward_name: str = "loop-reward"
    policy_name: str = "loop-policy"
    policy_version: str | None = None
    snapshot: str | None = None
    audits: list[dict[str, Any]] = field(default_factory=list)  # every audit so far (AuditPoint fields): the watch reads them all
    policy_versions: dict[str, str] = field(default_factory=dict)  # policy folder -> its registered version

    @classmethod
    def load(cls, folder: Path) -> LoopState | None:
        path = Path(folder) / "loop.json"
        return cls(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None

    def save(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "loop.json").write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# The reward ensemble: separately seeded members
# ---------------------------------------------------------------------------------------------------------------


def train_members(base: Any, k: int, out_dir: Path, *, workspace: Any = None, seed_stride: int = 1009) -> list[Path]:
    """Train ``k`` reward models that differ only in their seed (head initialization, data order, held-out split):
    ``base`` (a RewardConfig) with seed ``base.seed + i x seed_stride``, into ``out_dir/member-i``. The folder is
    then an ensemble SPEC (``ensemble:out_dir``). Returns the member folders."""
    from tether.recipes.reward import train_reward

    out_dir = Path(out_dir)
    folders = []
    for i in range(k):
        cfg = base.model_copy(update={"seed": base.seed + i * seed_stride, "output_dir": out_dir / f"member-{i}"})
        train_reward(cfg, workspace=workspace)
        folders.append(cfg.output_dir)
    (out_dir / "ensemble.json").write_text(json.dumps({"members": [f.name for f in folders], "seeds": [base.seed + i * seed_stride for i in range(k)], "data": base.data}, indent=1), encoding="utf-8")
    return folders


def load_ensemble(folder: str | Path, combine: str = "mean", *, say: Callable[[str], None] | None = None) -> Any:
    """The ensemble in ``folder`` as a ``Reward`` (``.members(prompts, completions)`` -> (B, K))."""
    from tether.recipes.reward_specs import load_reward

    return load_reward([f"ensemble:{folder}:{combine}" if combine != "mean" else f"ensemble:{folder}"], device="cpu", say=say)


def pair_stats(ensemble: Any, prompts: Sequence[Any], first: Sequence[str], second: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The members' P(first preferred) under Bradley-Terry: (mean (N,), spread (N,)) (tether.qc.select)."""
    from tether.qc.select import preference_stats

    a = ensemble.members(list(prompts), list(first)).numpy()  # (N, K)
    b = ensemble.members(list(prompts), list(second)).numpy()
    return preference_stats(a.T, b.T)


# ---------------------------------------------------------------------------------------------------------------
# One round's steps
# ---------------------------------------------------------------------------------------------------------------


def candidate_pairs(pairing: str, mine: Sequence[str], theirs: Sequence[str]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """One prompt's candidate pairs ``((who, text), (who, text))`` under ``pairing`` (PAIRINGS; ``best-reference``
    is ``reference`` with ``theirs`` cut to the best reply, best_reference); a reply repeated is one candidate, and a
    reply of the first policy that the policy also wrote counts as the policy's."""
    pool = list(dict.fromkeys([("policy", t) for t in mine if t.strip()]))
    own = {x for _, x in pool}
    reference = [("reference", t) for t in dict.fromkeys(theirs) if t.strip() and t not in own]
    if pairing != "all":
        return [(a, b) for a in pool for b in reference]
    pool += reference
    return [(pool[i], pool[j]) for i in range(len(pool)) for j in range(i + 1, len(pool)) if "policy" in (pool[i][0], pool[j][0])]


def best_reference(ensemble: Any, prompts: Sequence[Any], replies: Sequence[Sequence[str]], own: Sequence[Sequence[str]]) -> list[list[str]]:
    """Per prompt, the one reply the ensemble's mean scores highest (best-of-R of the first policy) among those the
    policy did not also write (``own``), [] for none."""
    flat = [(p, t) for p, texts in enumerate(replies) for t in dict.fromkeys(texts) if t.strip() and t not in set(own[p])]
    if not flat:
        return [[] for _ in replies]
    scores = ensemble.members([prompts[p] for p, _ in flat], [t for _, t in flat]).mean(dim=1).tolist()  # (sum R,)
    best: dict[int, tuple[float, str]] = {}
    for (p, text), score in zip(flat, scores):
        if p not in best or score > best[p][0]:
            best[p] = (score, text)
    return [[best[p][1]] if p in best else [] for p in range(len(replies))]


def propose_pairs(cfg: LoopConfig, round_number: int, prompts: Sequence[Any], policy_replies: Sequence[Sequence[str]],
                  reference_replies: Sequence[Sequence[str]], ensemble: Any | None) -> list[dict[str, Any]]:
    """The rows to queue this round: per prompt, the candidate pairs of ``cfg.pairing`` (candidate_pairs), chosen by
    ``cfg.strategy`` over the ensemble's members (one pair per prompt at most)."""
    from tether.qc.select import select_candidates

    if cfg.pairing == "best-reference" and ensemble is not None:
        reference_replies = best_reference(ensemble, prompts, reference_replies, policy_replies)
    candidates = []
    for p, (prompt, mine, theirs) in enumerate(zip(prompts, policy_replies, reference_replies)):
        candidates += [(p, prompt, a, b) for a, b in candidate_pairs(cfg.pairing, mine, theirs)]
    if not candidates:
        return []
    p_mean = p_spread = None
    if ensemble is not None and cfg.strategy != "random":
        p_mean, p_spread = pair_stats(ensemble, [c[1] for c in candidates], [c[2][1] for c in candidates], [c[3][1] for c in candidates])
    picked = select_candidates(cfg.strategy, cfg.pairs_per_round, p_mean=p_mean, p_spread=p_spread, groups=[c[0] for c in candidates],
                               max_per_group=1, seed=cfg.seed + round_number)
    rows = []
    for idx in picked:
        p, prompt, (who_a, a), (who_b, b) = candidates[idx]
        meta: dict[str, Any] = {"round": round_number, "selected_by": cfg.strategy, "pairing": cfg.pairing, "models": [who_a, who_b]}
        if p_mean is not None:
            meta.update({"p_pref": round(float(p_mean[idx]), 6), "p_spread": round(float(p_spread[idx]), 6)})
        rows.append({"prompt": prompt, "completions": [{"text": a, "model": who_a}, {"text": b, "model": who_b}],
                     "external_id": f"round-{round_number}-{p}", "meta": meta})
    return rows


def queue_round(url: str, project: str, rows: Sequence[dict[str, Any]], item_meta: ItemMeta | None = None) -> list[int]:
    """Queue a round's rows (``item_meta(prompt, a, b)`` adds to each item's meta); returns their item ids."""
    if item_meta is not None:
        rows = [{**r, "meta": {**r["meta"], **item_meta(r["prompt"], r["completions"][0]["text"], r["completions"][1]["text"])}} for r in rows]
    return queue_pairs(url, project, rows, actor=ACTOR)


def new_pair_accuracy(url: str, project: str, item_ids: Sequence[int], p_first: Sequence[float] | None) -> float | None:
    """How often the ensemble that chose the round's pairs agreed with people's majority on them (ties and split
    votes left out): its accuracy on the policy's new outputs, before it is refit on them."""
    from tether.lifecycle.overoptimization import human_preferences

    if p_first is None:
        return None
    votes = human_preferences(url, project, item_ids)
    hits = total = 0
    for item_id, p in zip(item_ids, p_first):
        mean = float(np.mean(votes[item_id])) if votes.get(item_id) else 0.5
        if mean == 0.5 or p == 0.5:
            continue
        total += 1
        hits += (mean > 0.5) == (p > 0.5)
    return hits / total if total else None


def round_snapshot(ws: Any, project: str, round_number: int, *, keep_ties: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """QC of the whole project, then a snapshot of it without the flagged annotators: this round's judgments and
    every earlier round's, each once, with the judgments it rests on recorded (``snapshot_judgment``). Returns
    (snapshot summary, QC report)."""
    from sqlalchemy import select

    from tether.qc import project_qc, snapshot_qc_record
    from tether.store import snapshots
    from tether.store.db import session_scope
    from tether.store.tables import Snapshot

    report = project_qc(ws.database_url, project)
    flagged = sorted(r["annotator"] for r in report["annotators"] if r["flags"])
    method = "dawid-skene" if "dawid-skene" in snapshots.AGGREGATES else "majority"
    with session_scope(ws.database_url) as session:
        name = f"{project}-round-{round_number}"
        taken = set(session.scalars(select(Snapshot.name).where(Snapshot.name.like(f"{name}%"))))
        if name in taken:  # another loop on the same project (snapshots are frozen): the next free name
            name = next(f"{name}-{k}" for k in range(2, len(taken) + 3) if f"{name}-{k}" not in taken)
        snap = snapshots.make_snapshot(project, session=session, root=ws.root, aggregate=method, snapshot_name=name,
                                       qc=snapshot_qc_record(report, method=method, excluded=flagged), exclude_annotators=flagged, keep_ties=keep_ties)
    return snap, report


def judgments_in(url: str, project: str) -> int:
    """Judgments the project holds (every round's and every audit's): the labels spent."""
    from sqlalchemy import func, select

    from tether.store.db import session_scope
    from tether.store.tables import Item, Judgment, Project

    with session_scope(url, readonly=True) as session:
        return int(session.scalar(select(func.count(Judgment.id)).join(Item, Item.id == Judgment.item_id).join(Project, Project.id == Item.project_id)
                                  .where(Project.name == project)) or 0)


def sample_replies(policy_dir: str | Path, prompts: Sequence[Any], n: int, *, cfg: LoopConfig, seed: int) -> list[list[str]]:
    """``n`` replies of a policy to each prompt, (P, n) texts."""
    import torch

    from tether.lifecycle.evaluate_policy import load_policy
    from tether.models.sampling import sample_rollout

    if n < 1:
        return [[] for _ in prompts]
    model, tokenizer = load_policy(policy_dir)
    torch.manual_seed(seed)
    out: list[list[str]] = []
    per_batch = max(1, 64 // n)
    for start in range(0, len(prompts), per_batch):
        chunk = list(prompts[start : start + per_batch])
        with torch.no_grad():
            rollout = sample_rollout(model, tokenizer, chunk, group_size=n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
        texts = [t.strip() for t in rollout.completion_texts]
        out += [texts[i * n : (i + 1) * n] for i in range(len(chunk))]
    return out


# ---------------------------------------------------------------------------------------------------------------
# RL with the over-optimization watch
# ---------------------------------------------------------------------------------------------------------------


def audit_policy(url: str, project: str, policy_dir: Path, reference_dir: str | Path, prompts: Sequence[Any], ensemble: Any, *,
                 step: int, judge: Judge, item_meta: ItemMeta | None, cfg: LoopConfig, seed: int, round_number: int = 0) -> AuditPoint:
    """One audit: the policy's and the reference's replies to ``prompts`` judged by people (through the store) and
    by the proxy (the ensemble's mean); d = sqrt(KL(policy || reference)) from the policy's own samples."""
    import torch

    from tether.lifecycle.evaluate_policy import kl_per_reply, load_policy, sample

    policy, tokenizer = load_policy(policy_dir)
    reference, _ = load_policy(reference_dir)
    gen = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, batch_size=64)
    mine, rollouts = sample(policy, tokenizer, prompts, seed=seed, **gen)
    theirs, _ = sample(reference, tokenizer, prompts, seed=seed + 1, **gen)
    with torch.no_grad():
        kl = float(np.mean(kl_per_reply(policy, reference, rollouts, cfg.temperature)))
    proxy_mine = ensemble.members(list(prompts), mine).mean(dim=1).tolist()
    proxy_theirs = ensemble.members(list(prompts), theirs).mean(dim=1).tolist()
    figures = audit_batch(url, project, step=step, prompts=prompts, policy_texts=mine, reference_texts=theirs, proxy_policy=proxy_mine,
                          proxy_reference=proxy_theirs, kl=kl, judge=judge, item_meta=_with_round(item_meta, round_number), actor=ACTOR,
                          tag=f"round-{round_number}-")
    return AuditPoint(step, figures["audit/d"], figures["audit/human_win_rate"], figures["audit/proxy_win_rate"], str(policy_dir), figures)


def _with_round(item_meta: ItemMeta | None, round_number: int) -> ItemMeta:
    def meta(prompt: Any, a: str, b: str) -> dict[str, Any]:
        return {"round": round_number, **(item_meta(prompt, a, b) if item_meta is not None else {})}

    return meta


def rl_config(cfg: LoopConfig, **fields: Any) -> Any:
    from tether.recipes.configs import GRPOConfig, PPOConfig

    if cfg.algo == "ppo":
        return PPOConfig(**fields, **cfg.rl)
    return GRPOConfig(algo=cfg.algo, **fields, **cfg.rl)


def rl_with_watch(ws: Any, cfg: LoopConfig, state: LoopState, *, round_number: int, prompts_file: Path, audit_prompts: Sequence[Any],
                  out_dir: Path, judge: Judge, item_meta: ItemMeta | None, say: Callable[[str], None]) -> dict[str, Any]:
    """RL from the current policy against the conservative ensemble reward (KL to the first policy), in segments of
    ``audit_every`` steps with an audit after each; stops where the watch says. The watch reads every audit of the
    loop so far (d and people's judgment are measured against the same first policy in every round), so a stop may
    keep an earlier round's checkpoint. Returns the kept policy folder, this round's audits, the decision."""
    if cfg.algo == "ppo":
        from tether.recipes.ppo import train_ppo as train
    else:
        from tether.recipes.grpo import train_grpo as train

    reward = [f"ensemble:{state.ensemble}:{cfg.combine}" if cfg.combine != "mean" else f"ensemble:{state.ensemble}", *cfg.other_rewards]
    ensemble = load_ensemble(state.ensemble)
    every = cfg.audit_every or cfg.rl_steps
    segments = math.ceil(cfg.rl_steps / every)
    current, points, decision, step = Path(state.policy if cfg.rl_from == "current" else state.reference), [], None, 0
    history = [AuditPoint(**a) for a in state.audits]
    if cfg.audit_every and audit_prompts and str(current) != state.reference and not any(p.checkpoint == str(current) for p in history):
        # the policy this round starts from, audited first (the first RL run has no audit): what the round is compared with
        point = audit_policy(ws.database_url, state.project, current, state.reference, audit_prompts, ensemble, step=0, judge=judge,
                             item_meta=item_meta, cfg=cfg, seed=cfg.seed + 31 * round_number + 997, round_number=round_number)
        points.append(point)
        state.audits.append(asdict(point))
        say(f"round {round_number} audit of the starting policy: d = {point.d:.2f}, people {point.human:.0%}, reward model {point.proxy:.0%}")
    for s in range(segments):
        steps = min(every, cfg.rl_steps - step)
        out = out_dir / f"rl-{s}"
        train(rl_config(cfg, model=str(current), reference_model=state.reference, prompts=str(prompts_file), reward=reward, output_dir=out,
                        max_steps=steps, lr_schedule="constant", max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        seed=cfg.seed + 7919 * round_number + s, logging_steps=1, progress=cfg.progress, sample_every=0, overwrite=True), workspace=ws)
        step += steps
        current = out
        if not cfg.audit_every or not audit_prompts:
            continue
        point = audit_policy(ws.database_url, state.project, out, state.reference, audit_prompts, ensemble, step=step, judge=judge,
                             item_meta=item_meta, cfg=cfg, seed=cfg.seed + 31 * round_number + s, round_number=round_number)
        points.append(point)
        state.audits.append(asdict(point))
        decision = watch_decision(history + points)
        say(f"round {round_number} audit at step {step}: d = {point.d:.2f}, people {point.human:.0%}, reward model {point.proxy:.0%}; {decision.reason}")
        if decision.stop:
            kept = (history + points)[decision.best]
            say(f"round {round_number}: the watch stops RL at step {step} and keeps the checkpoint {kept.checkpoint} (audit at d = {kept.d:.2f})")
            current = Path(kept.checkpoint)
            break
    reason = decision.reason if decision else "no audit"
    everything = history + points
    if points and not (decision and decision.stop) and (k := kept_at_end(everything)) != len(everything) - 1:
        kept = everything[k]
        reason = f"people judged an earlier checkpoint better ({kept.human:.0%} at d = {kept.d:.2f} against {everything[-1].human:.0%} now)"
        say(f"round {round_number}: {reason}: {kept.checkpoint} is kept")
        current = Path(kept.checkpoint)
    return {"policy": current, "audits": [asdict(p) for p in points], "stopped": bool(decision and decision.stop),
            "reason": reason, "fit": decision.fit.as_dict() if decision and decision.fit else None}


# ---------------------------------------------------------------------------------------------------------------
# Rounds
# ---------------------------------------------------------------------------------------------------------------


def refit(ws: Any, cfg: LoopConfig, state: LoopState, snapshot: dict[str, Any], out_dir: Path) -> Path:
    """The reward ensemble refit on ``snapshot`` (every round's judgments so far), from the first policy."""
    from tether.recipes.configs import RewardConfig

    fields = {"epochs": 2.0, "batch_size": 16, "max_length": 192, "eval_fraction": 0.1, "logging_steps": 5, **cfg.reward}
    base = RewardConfig(model=state.reference, data=f"snapshot:{snapshot['name']}", output_dir=out_dir / "member-0", seed=cfg.seed,
                        progress=cfg.progress, overwrite=True, **fields)
    train_members(base, cfg.members, out_dir, workspace=ws)
    return out_dir


def register_round(ws: Any, state: LoopState, round_number: int, snapshot: dict[str, Any], figures: dict[str, Any], *, new_policy: bool = True) -> dict[str, str | None]:
    """The round's reward model (its first member; the ensemble named in the data summary) and policy, registered
    with lineage: the snapshot's digest, the reward model the policy was trained against (its tether.json) and the
    parent policy. With ``new_policy`` False (the round kept an earlier policy) only the reward model is registered
    and the policy is the earlier one's version (None: the first policy, not registered by the loop)."""
    from tether.lifecycle.registry import register_model
    from tether.recipes.reward_specs import member_folders

    members = member_folders(Path(state.ensemble))
    rm = register_model(
        ws, members[0], name=state.reward_name, kind="reward", snapshot_name=snapshot["name"], snapshot_digest=snapshot["digest"],
        base_model=state.reference, metrics={k: v for k, v in figures.items() if k == "rm_accuracy_new_pairs" and v is not None},
        data_summary={"round": round_number, "pairs": snapshot["row_count"], "ensemble": [str(m) for m in members]},
        method=f"round {round_number} of tether loop: member 1 of {len(members)} separately seeded reward models on the union of the rounds' judgments",
    )
    if not new_policy:
        return {"reward_model": rm["version"], "policy": state.policy_versions.get(state.policy)}
    policy = register_model(
        ws, Path(state.policy), name=state.policy_name, kind="policy", base_model=state.reference,
        metrics={k: v for k, v in figures.items() if isinstance(v, (int, float)) and k in ("gold_win_rate", "win_rate", "violation_rate", "kl")},
        data_summary={"round": round_number, "parent_policy": state.policy_version, "snapshot": snapshot["name"], "reward_ensemble": state.ensemble},
        method=f"round {round_number} of tether loop: RL continued from {state.policy_version or 'the first policy'} against the conservative ensemble reward",
    )
    state.policy_versions[state.policy] = policy["version"]
    return {"reward_model": rm["version"], "policy": policy["version"]}


def run_round(ws: Any, cfg: LoopConfig, state: LoopState, folder: Path, *, round_number: int, prompts: Sequence[Any], rl_prompts: Path,
              audit_prompts: Sequence[Any], judge: Judge, item_meta: ItemMeta | None = None, evaluate: Callable[[Path], dict[str, Any]] | None = None,
              register: bool = True, say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """One round (module doc); updates ``state``; returns the round's record."""
    url, out = ws.database_url, folder / f"round-{round_number}"
    spent_before = judgments_in(url, state.project)
    ensemble = load_ensemble(state.ensemble) if state.ensemble else None
    mine = sample_replies(state.policy, prompts, cfg.candidates, cfg=cfg, seed=cfg.seed + 101 * round_number)
    theirs = sample_replies(state.reference, prompts, cfg.reference_replies, cfg=cfg, seed=cfg.seed + 103 * round_number)
    rows = propose_pairs(cfg, round_number, prompts, mine, theirs, ensemble)
    item_ids = queue_round(url, state.project, rows, item_meta)
    say(f"round {round_number}: {len(item_ids)} pairs of the policy's replies queued in {state.project} ({cfg.strategy})")
    judge(url, state.project)
    p_first = [r["meta"].get("p_pref", 0.5) for r in rows] if ensemble is not None else None
    accuracy = new_pair_accuracy(url, state.project, item_ids, p_first)
    snapshot, qc_report = round_snapshot(ws, state.project, round_number, keep_ties=cfg.keep_ties)
    flagged = sorted(r["annotator"] for r in qc_report["annotators"] if r["flags"])
    say(f"round {round_number}: snapshot {snapshot['name']} ({snapshot['row_count']} pairs, all rounds); QC flagged {', '.join(flagged) or 'nobody'}")
    state.ensemble = str(refit(ws, cfg, state, snapshot, out / "reward"))
    rl = rl_with_watch(ws, cfg, state, round_number=round_number, prompts_file=rl_prompts, audit_prompts=audit_prompts, out_dir=out,
                       judge=judge, item_meta=item_meta, say=say)
    parent_policy = state.policy
    state.policy, state.snapshot, state.rounds_done = str(rl["policy"]), snapshot["name"], round_number
    record: dict[str, Any] = {
        "round": round_number, "pairs_queued": len(item_ids), "rm_accuracy_new_pairs": accuracy, "snapshot": snapshot["name"],
        "snapshot_digest": snapshot["digest"], "snapshot_rows": snapshot["row_count"], "flagged": flagged, "parent_policy": parent_policy,
        "policy": state.policy, "reward_ensemble": state.ensemble, "watch": {k: v for k, v in rl.items() if k != "policy"},
    }
    if evaluate is not None:
        record.update(evaluate(Path(state.policy)))
    record["judgments_round"] = judgments_in(url, state.project) - spent_before
    record["judgments_total"] = judgments_in(url, state.project)
    # A round whose RL people judged worse hands on an earlier policy: it is not this round's, so it is not
    # registered again (its lineage is that of the round that trained it)
    record["kept_earlier_policy"] = not Path(state.policy).resolve().is_relative_to(out.resolve())
    if register:
        record["registry"] = register_round(ws, state, round_number, snapshot, record, new_policy=not record["kept_earlier_policy"])
        state.policy_version = record["registry"]["policy"]
    state.save(folder)
    with (folder / "rounds.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
    return record


def start_loop(ws: Any, cfg: LoopConfig, folder: Path, *, project: str, reference: str | Path, policy: str | Path,
               ensemble: str | Path | None = None, say: Callable[[str], None] = lambda _m: None) -> LoopState:
    """The loop's state in ``folder``: continued when it holds one, else started (the first reward ensemble fit on
    the project's judgments so far when none is given)."""
    state = LoopState.load(folder)
    if state is not None:
        if state.project != project:
            raise TetherError(f"{folder} holds a loop on project {state.project!r}, not {project!r}", fix="give another --out folder, or the same --project")
        return state
    state = LoopState(project=project, reference=str(reference), policy=str(policy), ensemble=str(ensemble) if ensemble else None)
    if state.ensemble is None:
        snapshot, _ = round_snapshot(ws, project, 0, keep_ties=cfg.keep_ties)
        say(f"round 0: the first reward ensemble ({cfg.members} members) on {snapshot['name']} ({snapshot['row_count']} pairs)")
        state.ensemble = str(refit(ws, cfg, state, snapshot, Path(folder) / "round-0" / "reward"))
        state.snapshot = snapshot["name"]
    state.save(folder)
    return state


def wait_for_people(url: str, project: str, *, poll_s: float = 30.0, timeout_s: float | None = None, say: Callable[[str], None] = print) -> None:
    """The judge when people answer in the web app: wait until no item of the project has an open slot."""
    import time

    from sqlalchemy import func, select

    from tether.store.db import session_scope
    from tether.store.tables import Item, Project

    started = time.monotonic()
    while True:
        with session_scope(url, readonly=True) as session:
            open_items = session.scalar(select(func.count(Item.id)).join(Project, Project.id == Item.project_id)
                                        .where(Project.name == project, Item.open_slots > 0))
        if not open_items:
            return
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise TetherError(f"{open_items} items of {project!r} still wait for judgments", fix="judge them in the web app (tether serve), then run tether loop again")
        say(f"waiting for people: {open_items} items of {project!r} still open (web app: tether serve)")
        time.sleep(poll_s)
