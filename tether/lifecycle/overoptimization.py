"""The over-optimization watch: people audit the policy's samples during RL, and a stop rule reads the curve.

Gao et al. 2022 ("Scaling Laws for Reward Model Overoptimization") measure the distance a policy has moved as
d = sqrt(KL(policy || initial policy)) and find the gold (human) reward gain follows

- RL:          gold(d) = d (alpha - beta log d), peaking at d* = exp(alpha / beta - 1);
- best-of-n:   gold(d) = d (alpha - beta d),     peaking at d* = alpha / (2 beta),

while the proxy (the reward model's) keeps rising. ``fit_gao`` fits either form by least squares (scipy);
``watch_decision`` is the stop rule of ``tether loop``: stop (and keep the best audited checkpoint) once the
audited d has passed the forecast peak, or when the proxy rose while people's judgment fell.

An *audit* (``audit_batch``) queues pairs (the policy's reply, the reference's reply to the same prompt) as items
of a feedback project through the store functions the web app uses (``tether.store.campaigns.add_items``); the
``judge`` answers them (people in the web app; in the demo, the simulated annotators through
``next_assignment`` and ``submit_judgment``); the answers are read back with ``list_judgments``. The figures
are flat ``audit/*`` keys: ``audit/d``, ``audit/kl``, ``audit/human_win_rate`` (the policy's reply preferred,
ties half), ``audit/proxy_win_rate`` (the reward model's verdict on the same pairs), ``audit/judgments``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tether.errors import TetherError

FORMS = ("rl", "bon")


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: Gao et al.'s functional forms, the fit, the forecast peak
# ---------------------------------------------------------------------------------------------------------------


def bon_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n nats (Stiennon et al. 2020, App. G; Gao et al. 2022 Eq. 2)."""
    return math.log(n) - (n - 1) / n


def gao_curve(d: Any, alpha: float, beta: float, form: str = "rl") -> np.ndarray:
    """The gold gain at distance d = sqrt(KL): RL d (alpha - beta log d), best-of-n d (alpha - beta d). (N,)."""
    d = np.asarray(d, dtype=np.float64)
    if form == "rl":
        safe = np.where(d > 0, d, 1.0)
        return np.where(d > 0, d * (alpha - beta * np.log(safe)), 0.0)
    if form == "bon":
        return d * (alpha - beta * d)
    raise ValueError(f"unknown form {form!r}; valid: {', '.join(FORMS)}")


@dataclass(frozen=True)
class GaoFit:
    """A fitted form: alpha, beta, the residuals' root mean square, the points used, and the forecast peak d*."""

    form: str
    alpha: float
    beta: float
    rmse: float
    n: int

    @property
    def peak_d(self) -> float:
        """d* where the fitted gold gain peaks (inf when beta <= 0: no peak in sight)."""
        if self.beta <= 0:
            return math.inf
        if self.form == "rl":
            return math.exp(min(self.alpha / self.beta - 1, 50.0))
        return self.alpha / (2 * self.beta)

    def as_dict(self) -> dict[str, float | str | int]:
        return {"form": self.form, "alpha": self.alpha, "beta": self.beta, "rmse": self.rmse, "n": self.n, "peak_d": self.peak_d}


def fit_gao(d: Sequence[float], gain: Sequence[float], form: str = "rl") -> GaoFit:
    """Least-squares fit of ``gain`` (gold minus its value at d = 0) against ``d`` = sqrt(KL), by
    ``scipy.optimize.least_squares``; points at d = 0 carry no information on alpha, beta (the form is 0 there)
    and are dropped. Needs two points with d > 0."""
    from scipy.optimize import least_squares

    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; valid: {', '.join(FORMS)}")
    x, y = np.asarray(d, dtype=np.float64), np.asarray(gain, dtype=np.float64)
    keep = x > 1e-9
    x, y = x[keep], y[keep]
    if len(x) < 2:
        raise TetherError(f"fitting Gao et al.'s {form} form needs two points with d > 0, got {len(x)}", fix="audit at more steps")

    def residuals(params: np.ndarray) -> np.ndarray:
        return gao_curve(x, params[0], params[1], form) - y

    solution = least_squares(residuals, x0=np.array([1.0, 0.1]), method="lm")
    alpha, beta = (float(v) for v in solution.x)
    return GaoFit(form, alpha, beta, float(np.sqrt(np.mean(residuals(solution.x) ** 2))), int(len(x)))


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: the stop rule
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class AuditPoint:
    """One audit: the optimizer step, d = sqrt(KL), people's win-rate of the policy against the reference, the
    proxy's on the same pairs, and where the checkpoint is."""

    step: int
    d: float
    human: float
    proxy: float
    checkpoint: str = ""
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """What the watch says after an audit: stop or go on, why, which audit's checkpoint to keep, the fit."""

    stop: bool
    reason: str
    best: int  # index of the audit whose checkpoint to keep (best by the fit where it peaks, else by win-rate)
    fit: GaoFit | None


def watch_decision(points: Sequence[AuditPoint], *, min_points: int = 3, tolerance: float = 0.05) -> Decision:
    """The stop rule. People's gain is ``human - 0.5`` (the reference against itself wins half).

    Stop when (1) Gao et al.'s RL form, fitted to the audits so far (at least ``min_points`` with d > 0), puts
    its peak d* at or below the latest audit's d (the peak is passed), or (2) the proxy rose while people's
    win-rate fell, each by more than ``tolerance``, between the last two audits. Keep the checkpoint of the audit
    whose people's judgment is best: by the fit where it has a peak (its value at each audit's d: an audit of
    a dozen prompts is a noisy win-rate, the fit pools them all), else by the audits' own win-rates."""
    if not points:
        return Decision(False, "no audit yet", -1, None)
    best = max(range(len(points)), key=lambda i: (points[i].human, -i))
    fit = None
    usable = [p for p in points if p.d > 1e-9]
    if len(usable) >= max(2, min_points):
        fit = fit_gao([p.d for p in usable], [p.human - 0.5 for p in usable], "rl")
        if math.isfinite(fit.peak_d):
            fitted = gao_curve(np.array([max(p.d, 1e-9) for p in points]), fit.alpha, fit.beta, "rl")
            best = max(range(len(points)), key=lambda i: (round(float(fitted[i]), 9), -i))
        if points[-1].d >= fit.peak_d:
            return Decision(True, f"the forecast peak of people's judgment (d* = {fit.peak_d:.2f}) is passed at d = {points[-1].d:.2f}", best, fit)
    if len(points) >= 2:
        before, now = points[-2], points[-1]
        if now.proxy - before.proxy > tolerance and before.human - now.human > tolerance:
            return Decision(True, f"the reward model's win-rate rose ({before.proxy:.2f} -> {now.proxy:.2f}) while people's fell ({before.human:.2f} -> {now.human:.2f})", best, fit)
    peak = f"; forecast peak d* = {fit.peak_d:.2f}" if fit is not None and math.isfinite(fit.peak_d) else ""
    return Decision(False, f"people's judgment still rising or within noise at d = {points[-1].d:.2f}{peak}", best, fit)


def kept_at_end(points: Sequence[AuditPoint], *, tolerance: float = 0.05) -> int:
    """Which audit's checkpoint a round that ran to its end (the watch never stopped it) keeps: the latest, unless
    an earlier one won people's judgment by more than ``tolerance`` (then the best, the first of equals): RL that
    people judged worse than before is not handed on. -1 when there is no audit."""
    if not points:
        return -1
    best = max(range(len(points)), key=lambda i: (points[i].human, -i))
    return best if points[best].human > points[-1].human + tolerance else len(points) - 1


# ---------------------------------------------------------------------------------------------------------------
# An audit through the store (plumbing)
# ---------------------------------------------------------------------------------------------------------------

Judge = Callable[[str, str], Any]  # judge(database_url, project_name): answers the project's open items


def ensure_project(url: str, name: str, *, guidelines: str, overlap: int, actor: str) -> None:
    """A pairwise feedback project (with strength) named ``name``, made if missing."""
    from sqlalchemy import select

    from tether.store import campaigns
    from tether.store.db import session_scope
    from tether.store.tables import Project

    with session_scope(url) as session:
        if session.scalar(select(Project.id).where(Project.name == name)) is None:
            campaigns.create_project(
                session, name=name, schema={"kind": "pairwise", "strength": True}, guidelines=guidelines,
                description="tether loop: which reply follows the guidelines better?", overlap=overlap, gold_rate=0.0, actor=actor,
            )


def queue_pairs(url: str, project: str, rows: Sequence[dict[str, Any]], *, actor: str) -> list[int]:
    """Queue pairwise ``rows`` ({"prompt", "completions": [a, b], "meta"}) through ``campaigns.add_items``;
    returns the ids of the items that hold them (new or already there), in row order."""
    from sqlalchemy import select

    from tether.store import campaigns
    from tether.store.db import session_scope
    from tether.store.tables import Item, Project

    tags = [str(r.get("external_id")) for r in rows]
    with session_scope(url) as session:
        proj = session.scalars(select(Project).where(Project.name == project)).one()
        campaigns.add_items(session, project=proj, rows=list(rows), actor=actor)
        ids = dict(session.execute(select(Item.external_id, Item.id).where(Item.project_id == proj.id, Item.external_id.in_(tags))).all())
    return [ids[t] for t in tags if t in ids]


def human_preferences(url: str, project: str, item_ids: Sequence[int]) -> dict[int, list[float]]:
    """Per item, each judgment's preference for the item's first completion (1, tie 0.5, 0), read with
    ``campaigns.list_judgments`` (values in item positions; superseded judgments left out)."""
    from sqlalchemy import select

    from tether.store import campaigns
    from tether.store.db import session_scope
    from tether.store.tables import Project

    wanted = set(item_ids)
    out: dict[int, list[float]] = {i: [] for i in item_ids}
    rows: list[dict[str, Any]] = []
    with session_scope(url, readonly=True) as session:
        project_id = session.scalar(select(Project.id).where(Project.name == project))
        after = 0
        while True:
            page = campaigns.list_judgments(session, project_id=project_id, after_id=after, limit=5000)
            if not page:
                break
            rows += page
            after = page[-1]["id"]
    superseded = {r["supersedes_id"] for r in rows if r["supersedes_id"] is not None}
    for r in rows:
        if r["item_id"] in wanted and r["id"] not in superseded and r["source"] != "review":
            choice = (r["value"] or {}).get("choice")
            out[r["item_id"]].append({"a": 1.0, "b": 0.0}.get(choice, 0.5))
    return out


def audit_batch(
    url: str,
    project: str,
    *,
    step: int,
    prompts: Sequence[Any],
    policy_texts: Sequence[str],
    reference_texts: Sequence[str],
    proxy_policy: Sequence[float],
    proxy_reference: Sequence[float],
    kl: float,
    judge: Judge,
    item_meta: Callable[[Any, str, str], dict[str, Any]] | None = None,
    actor: str = "loop",
    tag: str = "",
) -> dict[str, float]:
    """Send one audit batch to people and read their verdict: each prompt's (policy reply, reference reply) is
    an item (identical replies are skipped), ``judge(url, project)`` answers the queue, and the figures come back
    as ``audit/*`` (see the module doc). ``item_meta(prompt, a, b)`` adds to each item's meta; ``tag`` makes the
    items' external ids unique across runs that count steps afresh (a loop's rounds)."""
    rows, keep = [], []
    for i, (prompt, a, b) in enumerate(zip(prompts, policy_texts, reference_texts)):
        if a == b:
            continue
        meta = {"audit_step": step, **(item_meta(prompt, a, b) if item_meta is not None else {})}
        rows.append({"prompt": prompt, "completions": [{"text": a, "model": "policy"}, {"text": b, "model": "reference"}],
                     "external_id": f"audit-{tag}{step}-{i}", "meta": meta})
        keep.append(i)
    item_ids = queue_pairs(url, project, rows, actor=actor) if rows else []
    judge(url, project)
    votes = human_preferences(url, project, item_ids)
    per_item = [float(np.mean(v)) for v in votes.values() if v]
    proxy = [1.0 if proxy_policy[i] > proxy_reference[i] else 0.5 if proxy_policy[i] == proxy_reference[i] else 0.0 for i in keep]
    identical = len(prompts) - len(rows)
    # an identical pair is a tie to people and to the proxy alike
    human = (sum(per_item) + 0.5 * identical) / max(1, len(per_item) + identical)
    return {
        "audit/step": float(step),
        "audit/kl": float(kl),
        "audit/d": math.sqrt(max(kl, 0.0)),
        "audit/human_win_rate": human,
        "audit/proxy_win_rate": (sum(proxy) + 0.5 * identical) / max(1, len(proxy) + identical),
        "audit/items": float(len(item_ids)),
        "audit/judgments": float(sum(len(v) for v in votes.values())),
    }


# ---------------------------------------------------------------------------------------------------------------
# Best-of-n: the baseline a tuned policy should beat (Gao et al.'s other form)
# ---------------------------------------------------------------------------------------------------------------


def best_of_n(model: Any, tokenizer: Any, prompts: Sequence[Any], reward: Any, n: int, *, max_new_tokens: int = 64,
              temperature: float = 1.0, batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Sample ``n`` replies per prompt and keep the one ``reward`` (a ``tether.recipes.reward_specs.Reward``: any
    SPECs, conservative ensembles included) scores highest. Its KL to the sampling policy is ``bon_kl(n)``.

    Returns {"completions": (P,) the kept replies, "scores": (P,) their rewards, "all_scores": (P, n),
    "kl": bon_kl(n)}."""
    import torch

    from tether.models.sampling import sample_rollout

    if n < 1:
        raise TetherError(f"--best-of {n}: n must be at least 1", fix="give --best-of 1 or more")
    torch.manual_seed(seed)
    kept, kept_scores, all_scores = [], [], []
    per_batch = max(1, batch_size // n)
    for start in range(0, len(prompts), per_batch):
        chunk = list(prompts[start : start + per_batch])
        with torch.no_grad():
            rollout = sample_rollout(model, tokenizer, chunk, group_size=n, max_new_tokens=max_new_tokens, temperature=temperature)
        texts = [t.strip() for t in rollout.completion_texts]
        scores, _ = reward.score(rollout.prompts, rollout.prompt_texts, texts)
        grid = scores.view(len(chunk), n)  # (p, n): a prompt's n replies are consecutive rows
        best = grid.argmax(dim=1)
        for p in range(len(chunk)):
            kept.append(texts[p * n + int(best[p])])
            kept_scores.append(float(grid[p, best[p]]))
        all_scores += grid.tolist()
    return {"completions": kept, "scores": kept_scores, "all_scores": all_scores, "kl": bon_kl(n)}
