"""Synthetic annotators with known behaviour, answering through the same store path as people.

A simulated project holds pairwise items whose better answer (the hidden truth) is known. Each ``SimAnnotator``
asks ``tether.store.campaigns.next_assignment`` for its next item (an ``Assignment`` with a random shown order,
never an item it already had), looks at the two answers in the order shown, and answers through
``tether.store.campaigns.submit_judgment`` (item positions, the shown order, the time spent): the web app's own
store path for a person's answer. QC and aggregation then run on the store
as they would for real annotators, and their output can be checked against the truth.

Kinds of annotator: an honest one picks the better answer with probability ``accuracy``; a spammer answers at
random (and fast); a position-biased one picks the first-shown answer with probability ``position_bias`` and is
honest otherwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from tether.errors import TetherError

SOURCE = "sim"  # Judgment.source of simulated answers
ACTOR = "sim"  # audit actor


@dataclass(frozen=True)
class SimAnnotator:
    """A synthetic annotator. Pairwise truth is "a" or "b"; the shown order is random per assignment."""

    name: str
    accuracy: float = 0.8  # P(choosing the better answer) when answering honestly
    spam: bool = False  # answers "a" or "b" at random
    position_bias: float = 0.0  # P(choosing the first-shown answer whatever it says)
    tie_rate: float = 0.0  # P(answering "tie") when answering honestly
    median_time_s: float = 20.0  # time per judgment is log-normal around this

    @property
    def true_accuracy(self) -> float:
        """P(the answer equals the truth), over random shown orders."""
        if self.spam:
            return 0.5
        honest = (1 - self.tie_rate) * self.accuracy
        return self.position_bias * 0.5 + (1 - self.position_bias) * honest

    def answer(self, truth: str, shown_order: list[int], rng: random.Random) -> tuple[dict[str, Any], int]:
        """A judgment value (item positions, with a strength 1..3) and the time spent in ms."""
        if self.spam:
            choice = rng.choice(("a", "b"))
        elif rng.random() < self.position_bias:
            choice = "ab"[shown_order[0]]
        elif rng.random() < self.tie_rate:
            choice = "tie"
        else:
            wrong = "b" if truth == "a" else "a"
            choice = truth if rng.random() < self.accuracy else wrong
        time_ms = int(1000 * self.median_time_s * rng.lognormvariate(0.0, 0.4))
        strength = 0 if choice == "tie" else rng.choice((1, 2, 3))
        return {"choice": choice, "strength": strength}, max(time_ms, 200)


def default_crew() -> list[SimAnnotator]:
    """Three honest annotators of decreasing accuracy, a spammer and a position-biased one."""
    return [
        SimAnnotator("sim-expert", accuracy=0.95),
        SimAnnotator("sim-good", accuracy=0.82),
        SimAnnotator("sim-fair", accuracy=0.72),
        SimAnnotator("sim-biased", accuracy=0.9, position_bias=0.7),
        SimAnnotator("sim-spammer", spam=True, median_time_s=4.0),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Building and running a simulated project (through tether.store.campaigns, the web app's store path)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SimResult:
    """What a simulation produced: the project, the hidden truth per item id, judgments per annotator."""

    project: str
    truth: dict[int, str]
    judgments: dict[str, int] = field(default_factory=dict)


def create_project(*, session: Any, name: str, n_items: int, overlap: int, gold_rate: float, rng: random.Random) -> dict[int, str]:
    """A pairwise project (with strength) of ``n_items`` items, each with a hidden better answer; returns
    {item_id: "a" | "b"}. A ``gold_rate`` share of the items are gold items whose gold answer is the truth."""
    from sqlalchemy import select

    from tether.store import campaigns
    from tether.store.tables import Item

    project = campaigns.create_project(
        session, name=name, schema={"kind": "pairwise", "strength": True}, description="simulated annotators",
        guidelines="Pick the better answer.", overlap=overlap, gold_rate=gold_rate, actor=ACTOR,
    )
    rows = []
    for i in range(n_items):
        better = rng.choice("ab")
        row = {"prompt": f"Simulated prompt {i}", "completions": [f"Answer A to prompt {i}", f"Answer B to prompt {i}"],
               "meta": {"sim_truth": better}, "external_id": f"sim-{i}"}
        if rng.random() < gold_rate:
            row["gold"] = {"choice": better, "strength": 2}
        rows.append(row)
    campaigns.add_items(session, project=project, rows=rows, actor=ACTOR)
    return {item_id: meta["sim_truth"] for item_id, meta in session.execute(select(Item.id, Item.meta).where(Item.project_id == project.id))}


def ensure_users(*, session: Any, names: list[str]) -> None:
    """Annotator accounts for the simulated annotators (no password: they cannot log in)."""
    from sqlalchemy import select

    from tether.store.db import audit
    from tether.store.tables import User

    existing = set(session.scalars(select(User.name).where(User.name.in_(names))))
    for name in names:
        if name not in existing:
            user = User(name=name, role="annotator", meta={"simulated": True})
            session.add(user)
            session.flush()
            audit(session, "user.create", "user", user.id, actor_name=ACTOR, name=name, role="annotator")


def run_annotators(url: str, project_name: str, annotators: list[SimAnnotator], *, seed: int = 0,
                   max_judgments: int | None = None) -> dict[str, int]:
    """Let the annotators work through the project's queue in shuffled rounds, one transaction per request as
    in the web app, until none gets an item (or ``max_judgments`` were written). Each annotator keeps a
    simulated clock, so the store records the time it spent. Returns judgments per annotator."""
    from sqlalchemy import select

    from tether.store import campaigns
    from tether.store.db import session_scope
    from tether.store.tables import Item, Project, User

    rng = random.Random(seed)
    with session_scope(url) as session:
        ensure_users(session=session, names=[a.name for a in annotators])
    clock = dict.fromkeys((a.name for a in annotators), datetime.now(timezone.utc))
    done = dict.fromkeys((a.name for a in annotators), 0)
    active = list(annotators)
    total = 0
    while active and (max_judgments is None or total < max_judgments):
        rng.shuffle(active)
        for annotator in list(active):
            with session_scope(url) as session:
                project = session.scalars(select(Project).where(Project.name == project_name)).one()
                user = session.scalars(select(User).where(User.name == annotator.name)).one()
                now = clock[annotator.name]
                assignment = campaigns.next_assignment(session, project=project, user=user, now=now, rng=rng)
                if assignment is None:
                    active.remove(annotator)
                    continue
                truth = session.get(Item, assignment.item_id).meta["sim_truth"]
                value, time_ms = annotator.answer(truth, list(assignment.shown_order), rng)
                clock[annotator.name] = now + timedelta(milliseconds=time_ms)
                campaigns.submit_judgment(
                    session, assignment_id=assignment.id, user=user, value=value, time_spent_ms=time_ms,
                    source=SOURCE, now=clock[annotator.name], actor=f"{ACTOR}:{annotator.name}",
                )
            done[annotator.name] += 1
            total += 1
            if max_judgments is not None and total >= max_judgments:
                break
    return done


def simulate(url: str, *, name: str = "sim", n_items: int = 200, overlap: int = 3, gold_rate: float = 0.05,
             annotators: list[SimAnnotator] | None = None, seed: int = 0) -> SimResult:
    """Create a simulated project and have ``annotators`` (default: ``default_crew()``) judge every item
    ``overlap`` times through the store."""
    from tether.store.db import session_scope

    annotators = annotators if annotators is not None else default_crew()
    if overlap > len(annotators):
        raise TetherError(f"overlap {overlap} needs at least {overlap} annotators, got {len(annotators)}", fix="lower the overlap")
    with session_scope(url) as session:
        truth = create_project(session=session, name=name, n_items=n_items, overlap=overlap, gold_rate=gold_rate, rng=random.Random(seed))
    judgments = run_annotators(url, name, annotators, seed=seed + 1)
    return SimResult(project=name, truth=truth, judgments=judgments)


@dataclass(frozen=True)
class SimJudgment:
    """A judgment made in memory by ``simulate_offline`` (the fields QC and aggregation read)."""

    item_id: int
    annotator: str
    kind: str
    value: dict[str, Any]
    shown_order: list[int]
    time_spent_ms: int


def simulate_offline(*, n_items: int, overlap: int, annotators: list[SimAnnotator] | None = None,
                     seed: int = 0) -> tuple[list[SimJudgment], dict[int, str]]:
    """The same annotators without the store, for fast experiments: each item goes to ``overlap`` annotators
    drawn at random, shown in a random order. Returns (judgments, truth {item_id: "a" | "b"})."""
    annotators = annotators if annotators is not None else default_crew()
    if overlap > len(annotators):
        raise TetherError(f"overlap {overlap} needs at least {overlap} annotators, got {len(annotators)}", fix="lower the overlap")
    rng = random.Random(seed)
    judgments, truth = [], {}
    for item_id in range(n_items):
        truth[item_id] = rng.choice("ab")
        for annotator in rng.sample(annotators, overlap):
            shown = [0, 1]
            rng.shuffle(shown)
            value, time_ms = annotator.answer(truth[item_id], shown, rng)
            judgments.append(SimJudgment(item_id, annotator.name, "pairwise", value, shown, time_ms))
    return judgments, truth
