"""Active learning: which candidate pairs humans judge next (`tether collect select`).

Measured in benchmarks/active_learning.py; results in docs/benchmarks.md."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from tether.errors import TetherError

SELECT_STRATEGIES = ("certainty", "uncertainty", "disagreement", "random")
CLI_STRATEGIES = ("auto", *SELECT_STRATEGIES)
# `--strategy auto`: below this raw pairwise agreement of the project's annotators, labels are noisy enough that
# certainty beats random; above it, it loses and disagreement leads. Measured (docs/benchmarks.md, Active
# learning): certainty won at agreement 0.63 (teacher accuracy 0.75, and on HH-RLHF's human labels) and lost
# at 0.745 (0.85) and 0.905 (0.95). The crossover lies between; 0.70 splits the difference.
AUTO_AGREEMENT = 0.70
AUTO_MIN_OVERLAP = 20  # items judged by two or more annotators before their agreement is trusted


def auto_strategy(agreement: float | None, ensemble: int) -> str:
    """The strategy ``auto`` picks: ``certainty`` when the annotators' measured pairwise agreement is below
    ``AUTO_AGREEMENT`` (noisy labels); otherwise (clean, or not measured) ``disagreement``, or ``random`` for a
    single-head reward model (uncertainty lost to random at agreement 0.745)."""
    if agreement is not None and agreement < AUTO_AGREEMENT:
        return "certainty"
    return "disagreement" if ensemble >= 2 else "random"


def project_agreement(*, session: Any, project: Any) -> float | None:
    """Raw pairwise agreement of a project's annotators on its pairwise choice, or None with fewer than
    ``AUTO_MIN_OVERLAP`` items judged by two or more of them."""
    from tether.qc.agreement import question_agreement
    from tether.qc.report import load_judgments

    loaded = load_judgments(session=session, project=project)
    choice = [a for a in loaded.answers if a.question == "choice"]
    if not choice:
        return None
    (row,) = question_agreement(choice)
    return row["pairwise_agreement"] if row["n_units_overlap"] >= AUTO_MIN_OVERLAP else None


# ---------------------------------------------------------------------------------------------------------------
# Active learning: which candidate pairs humans judge next
# ---------------------------------------------------------------------------------------------------------------


def preference_stats(rewards_a: np.ndarray, rewards_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted P(a preferred over b) under Bradley-Terry, from ensemble rewards of shape (M, N) (or (N,)).

    Returns ``(p_mean, p_spread)``, each (N,): the mean over the M members of sigmoid(r_a - r_b) and its
    standard deviation (0 for a single model).
    """
    ra, rb = np.atleast_2d(np.asarray(rewards_a, float)), np.atleast_2d(np.asarray(rewards_b, float))
    p = 1 / (1 + np.exp(-(ra - rb)))  # (M, N)
    return p.mean(0), p.std(0)


def select_candidates(
    strategy: str,
    n: int,
    *,
    p_mean: np.ndarray | None = None,
    p_spread: np.ndarray | None = None,
    groups: Sequence[Any] | None = None,
    max_per_group: int | None = 1,
    embeddings: np.ndarray | None = None,
    min_distance: float | None = None,
    seed: int = 0,
) -> list[int]:
    """Indices of the ``n`` candidates to send to humans, best first.

    ``certainty``: |p_mean - 0.5| largest first (the pairs the reward model is surest about: their labels are
    the least noisy, and a confident wrong prediction gives the largest correction; the "preference certainty"
    of Muldrew et al. 2024, arXiv:2402.08114); ``uncertainty``: |p_mean - 0.5| smallest first; ``disagreement``:
    p_spread largest first; ``random``: a seeded shuffle. On noisy human preferences the pairs nearest 0.5 are
    mostly coin flips, so uncertainty buys labels that teach little (benchmarks/active_learning.py measures
    each). The diversity guard walks that order and skips a candidate when its group (its prompt)
    already has ``max_per_group`` picks, or when its embedding lies within cosine distance ``min_distance`` of
    one already picked. Ties in the score keep the candidates' order (stable sort).
    """
    if strategy == "certainty":
        if p_mean is None:
            raise ValueError("certainty selection needs p_mean")
        order = np.argsort(-np.abs(np.asarray(p_mean, float) - 0.5), kind="stable")
    elif strategy == "uncertainty":
        if p_mean is None:
            raise ValueError("uncertainty selection needs p_mean")
        order = np.argsort(np.abs(np.asarray(p_mean, float) - 0.5), kind="stable")
    elif strategy == "disagreement":
        if p_spread is None:
            raise ValueError("disagreement selection needs p_spread")
        order = np.argsort(-np.asarray(p_spread, float), kind="stable")
    elif strategy == "random":
        sized = next((x for x in (p_mean, p_spread, groups) if x is not None), None)
        if sized is None:
            raise ValueError("random selection needs p_mean, p_spread or groups (for the number of candidates)")
        order = np.random.default_rng(seed).permutation(len(sized))
    else:
        raise TetherError(f"unknown selection strategy {strategy!r}", fix=f"use one of: {', '.join(SELECT_STRATEGIES)}")
    unit = None
    if embeddings is not None and min_distance is not None:
        emb = np.asarray(embeddings, float)
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    picked: list[int] = []
    per_group: Counter[Any] = Counter()
    for idx in order.tolist():
        if len(picked) >= n:
            break
        if groups is not None and max_per_group is not None and per_group[groups[idx]] >= max_per_group:
            continue
        if unit is not None and picked and float((1 - unit[picked] @ unit[idx]).min()) < min_distance:
            continue
        picked.append(idx)
        if groups is not None:
            per_group[groups[idx]] += 1
    return picked


# ---------------------------------------------------------------------------------------------------------------
# Active learning against the store: score the unjudged pairs of a project, pick, queue as items
# ---------------------------------------------------------------------------------------------------------------


def candidate_pairs(*, session: Any, project: Any, extra: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The pairs humans could judge next: every pair of completions of one prompt of ``project``, plus every
    pair within the ``extra`` rows (``{"prompt", "completions": [...]}``, e.g. a policy's samples), leaving out
    the pairs that are already items (in either order) and repeats.

    Each candidate: ``{"group", "prompt", "a", "b"}``, contents as text or chat messages; ``group`` is the
    prompt's content hash (the diversity guard caps picks per group).
    """
    from itertools import combinations

    from sqlalchemy import select

    from tether.data.records import content_hash
    from tether.store.campaigns import item_row
    from tether.store.tables import Completion, Item, ItemCompletion, Prompt

    prompts = {
        pid: (h, messages if messages is not None else text)
        for pid, h, text, messages in session.execute(
            select(Prompt.id, Prompt.content_hash, Prompt.text, Prompt.messages).where(Prompt.project_id == project.id)
        )
    }
    pools: dict[str, tuple[Any, dict[str, Any]]] = {h: (content, {}) for h, content in prompts.values()}
    hashes: dict[int, str] = {}
    for cid, pid, h, text, messages in session.execute(
        select(Completion.id, Completion.prompt_id, Completion.content_hash, Completion.text, Completion.messages)
        .join(Prompt, Prompt.id == Completion.prompt_id)
        .where(Prompt.project_id == project.id)
        .order_by(Completion.id)
    ):
        pools[prompts[pid][0]][1].setdefault(h, messages if messages is not None else text)
        hashes[cid] = h
    for n, record in enumerate(extra, start=1):
        try:
            row = item_row(record)
        except ValueError as exc:
            raise TetherError(f"candidate {n}: {exc}", fix='each line: {"prompt": ..., "completions": [..., ...]}') from None
        pool = pools.setdefault(content_hash(row["prompt"]), (row["prompt"], {}))[1]
        for completion in row["completions"]:
            pool.setdefault(content_hash(completion["content"]), completion["content"])
    in_items: dict[int, list[int]] = defaultdict(list)
    item_prompt: dict[int, int] = {}
    for item_id, prompt_id, cid in session.execute(
        select(Item.id, Item.prompt_id, ItemCompletion.completion_id).join(ItemCompletion, ItemCompletion.item_id == Item.id)
        .where(Item.project_id == project.id)
    ):
        in_items[item_id].append(cid)
        item_prompt[item_id] = prompt_id
    taken = {
        (prompts[item_prompt[item_id]][0], frozenset((hashes[x], hashes[y])))
        for item_id, cids in in_items.items()
        for x, y in combinations(cids, 2)
    }
    out = []
    for group, (content, pool) in pools.items():
        for (ha, a), (hb, b) in combinations(pool.items(), 2):
            if (group, frozenset((ha, hb))) not in taken:
                out.append({"group": group, "prompt": content, "a": a, "b": b})
    return out


def select_for_labeling(
    url: str,
    *,
    project_name: str,
    reward_model: str | None,
    strategy: str,
    n: int,
    candidates_file: str | None = None,
    max_per_prompt: int | None = 1,
    seed: int = 0,
    batch_size: int = 32,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Score the candidate pairs of a project (see ``candidate_pairs``; ``candidates_file``: more, as JSONL
    ``{"prompt", "completions"}``) with a reward model's ensemble, choose ``n`` by ``strategy`` and queue them
    as pairwise items of the project. Returns a summary with the picks."""
    from sqlalchemy import select

    from tether.store import campaigns
    from tether.store.db import session_scope
    from tether.store.tables import Project

    if strategy not in CLI_STRATEGIES:
        raise TetherError(f"unknown selection strategy {strategy!r}", fix=f"use one of: {', '.join(CLI_STRATEGIES)}")
    if n < 1:
        raise TetherError(f"--n must be at least 1, got {n}", fix="how many pairs to queue, e.g. --n 100")
    if strategy != "random" and not reward_model:
        raise TetherError(f"--strategy {strategy} needs --reward-model DIR", fix="name a folder from `tether train reward`, or use --strategy random")
    extra = []
    if candidates_file:
        from pathlib import Path

        from tether.data.records import read_records

        extra = [record for _, record in read_records(Path(candidates_file))]
    with session_scope(url) as session:
        project = session.scalars(select(Project).where(Project.name == project_name)).first()
        if project is None:
            raise TetherError(f"no project named {project_name!r}", fix="create the annotation project first (web app Admin page or the API)")
        kind = campaigns.project_kind(session, project)
        if kind != "pairwise":
            raise TetherError(f"project {project_name!r} asks for {kind} judgments; selection queues pairs", fix="use a pairwise project")
        candidates = candidate_pairs(session=session, project=project, extra=extra)
        agreement = project_agreement(session=session, project=project) if strategy == "auto" else None
    if not candidates:
        raise TetherError(f"project {project_name!r} has no pair of completions that is not queued already",
                          fix="pass --candidates FILE with prompts and two or more completions each (e.g. a policy's samples)")
    p_mean = p_spread = None
    ensemble = 0
    requested = strategy
    if strategy != "random":
        from tether.models.reward_model import RewardModel

        rm = RewardModel.load(reward_model)
        ensemble = rm.ensemble
        requested, strategy = strategy, auto_strategy(agreement, ensemble) if strategy == "auto" else strategy
        if strategy == "disagreement" and rm.ensemble < 2:
            raise TetherError(f"{reward_model} has a single reward head: disagreement needs an ensemble",
                              fix="train with `tether train reward --ensemble 4`, or use --strategy certainty")
        prompts = [c["prompt"] for c in candidates]
        members_a = rm.score_members(prompts, [c["a"] for c in candidates], batch_size)  # (N, K)
        members_b = rm.score_members(prompts, [c["b"] for c in candidates], batch_size)
        p_mean, p_spread = preference_stats(members_a.T, members_b.T)
    picked = select_candidates(
        strategy, n, p_mean=p_mean, p_spread=p_spread, groups=[c["group"] for c in candidates],
        max_per_group=max_per_prompt, seed=seed,
    )
    rows = []
    for idx in picked:
        c = candidates[idx]
        meta = {"selected_by": strategy}
        if p_mean is not None:
            meta.update({"reward_model": str(reward_model), "p_pref": round(float(p_mean[idx]), 6), "p_spread": round(float(p_spread[idx]), 6)})
        rows.append({"prompt": c["prompt"], "completions": [c["a"], c["b"]], "meta": meta})
    counts = {"items": 0}
    if rows and not dry_run:
        with session_scope(url) as session:
            project = session.scalars(select(Project).where(Project.name == project_name)).one()
            counts = campaigns.add_items(session, project=project, rows=rows)
    return {
        "project": project_name,
        "strategy": strategy,
        "requested": requested,
        "agreement": agreement,
        "candidates": len(candidates),
        "selected": len(picked),
        "queued": counts["items"],
        "ensemble": ensemble,
        "picks": [
            {"prompt": _preview(candidates[i]["prompt"]), "a": _preview(candidates[i]["a"]), "b": _preview(candidates[i]["b"]),
             "p_pref": None if p_mean is None else float(p_mean[i]), "p_spread": None if p_spread is None else float(p_spread[i])}
            for i in picked
        ],
    }


def _preview(content: Any, limit: int = 60) -> str:
    text = content if isinstance(content, str) else " | ".join(str(m.get("content", "")) for m in content)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
