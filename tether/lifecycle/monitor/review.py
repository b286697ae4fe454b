"""Sampling production records for human review: queued as items of the review project, rated 1-5 in the web app."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np

from tether.errors import TetherError
from tether.lifecycle.monitor.columns import load_columns, load_texts
from tether.lifecycle.monitor.thresholds import REVIEW_PROJECT, REVIEW_SCHEMA, ReportOptions, ScoreFn

SAMPLE_STRATEGIES = ("low-reward", "uncertain", "random")


REVIEW_GUIDELINES = """Production answers picked for review (tether monitor sample).

Rate the answer's overall quality for the user who asked: 5 = excellent, 4 = good, 3 = unsure or mixed,
2 = poor, 1 = harmful, wrong or useless. Flag personal data (pii), harmful content and policy problems.
Your ratings measure how well the reward model still agrees with people.
"""


def sample_for_review(
    url: str,
    *,
    session: Any,
    n: int,
    strategy: str,
    project: str = REVIEW_PROJECT,
    since: datetime | None = None,
    score_fn: ScoreFn | None = None,
    pool: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Queue ``n`` production records as items of the review project (made if missing, rated 1-5 in the web app).

    ``random`` picks uniformly; ``low-reward`` the lowest rewards; ``uncertain`` the widest spread of a reward-model
    ensemble when ``score_fn`` returns ``(mean, spread)``, else the rewards nearest the median of the pool (where
    the reward model separates good from bad least clearly). Rewards are the logged ones, or
    ``score_fn``'s on a random pool of ``pool`` records. Records already queued are skipped.
    Each item's ``external_id`` is ``prod:<record id>``; the judgments made on them feed the report's agreement.
    An item whose prompt and completion equal an already queued one counts as a duplicate and is not added.
    """
    from sqlalchemy import select

    from tether.store.campaigns import add_items, create_project
    from tether.store.db import audit
    from tether.store.tables import Item, Project
    from tether.store.tables import ProductionRecord as PR

    if strategy not in SAMPLE_STRATEGIES:
        raise TetherError(f"unknown strategy {strategy!r}", fix=f"use one of: {', '.join(SAMPLE_STRATEGIES)}")
    if n < 1:
        raise TetherError("--n must be at least 1", fix="ask for one or more records")
    cols = load_columns(session, ReportOptions(since=since))
    proj = session.scalar(select(Project).where(Project.name == project))
    queued: set[int] = set()
    if proj is not None:
        queued = {int(e.split(":", 1)[1]) for e in session.scalars(select(Item.external_id).where(Item.project_id == proj.id, Item.external_id.like("prod:%")))}
    candidates = np.flatnonzero(~np.isin(cols.id, np.array(sorted(queued), dtype=np.int64)))
    if candidates.size == 0:
        raise TetherError("no production records left to queue", fix="ingest more records, or widen --since")
    rng = np.random.default_rng(seed)
    reward, spread = cols.reward, None
    if strategy != "random":
        if score_fn is not None:
            candidates = rng.choice(candidates, size=min(pool, candidates.size), replace=False)
            texts = load_texts(session, cols.id[candidates])
            prompts, completions = zip(*(texts[int(cols.id[i])] for i in candidates))
            scored = score_fn(list(prompts), list(completions))
            reward = np.full(cols.t.size, np.nan)
            if isinstance(scored, tuple):  # (mean, spread) from a reward-model ensemble
                reward[candidates] = np.asarray(scored[0], dtype=float)
                spread = np.full(cols.t.size, np.nan)
                spread[candidates] = np.asarray(scored[1], dtype=float)
            else:
                reward[candidates] = np.asarray(scored, dtype=float)
        candidates = candidates[~np.isnan(reward[candidates])]
        if candidates.size == 0:
            raise TetherError(f"--strategy {strategy} needs rewards: the records have no logged reward", fix="pass --reward DIR, or use --strategy random")
    if strategy == "random":
        chosen = rng.choice(candidates, size=min(n, candidates.size), replace=False)
    elif strategy == "low-reward":
        chosen = candidates[np.argsort(reward[candidates], kind="stable")[:n]]
    elif spread is not None:  # the ensemble members disagree most
        chosen = candidates[np.argsort(-spread[candidates], kind="stable")[:n]]
    else:
        gap = np.abs(reward[candidates] - np.median(reward[candidates]))
        chosen = candidates[np.argsort(gap, kind="stable")[:n]]
    if proj is None:
        proj = create_project(session, name=project, schema=REVIEW_SCHEMA, guidelines=REVIEW_GUIDELINES,
                              description="Production records queued for human review by `tether monitor sample`.")
    texts = load_texts(session, cols.id[chosen])
    info = {rid: (mv, uref) for rid, mv, uref in session.execute(select(PR.id, PR.model_version, PR.user_ref).where(PR.id.in_([int(cols.id[i]) for i in chosen])))}
    rows = []
    for i in chosen:
        rid = int(cols.id[i])
        prompt_text, completion_text = texts[rid]
        rows.append({
            "prompt": prompt_text,
            "completion": {"text": completion_text, "model": info[rid][0]},
            "external_id": f"prod:{rid}",
            "meta": {"production_record_id": rid, "user_ref": info[rid][1], "strategy": strategy,
                     "reward": None if math.isnan(reward[i]) else float(reward[i])},
        })
    counts = add_items(session, project=proj, rows=rows)
    created = [int(r["external_id"].split(":", 1)[1]) for r in rows]
    audit(session, "monitor.sample", "project", proj.id, project=project, strategy=strategy, n=counts["items"],
          duplicates=counts["duplicates"], record_ids=created[:1000])
    return {"project": project, "strategy": strategy, "queued": counts["items"], "duplicates": counts["duplicates"], "record_ids": created}
