"""Active learning: for the same label budget, does `tether collect select` beat random choice?

Pool-based and simulated: the "human" label is the data set's own. Each round does what the product does:

1. a reward ensemble of the kind `tether train reward --ensemble K` trains: K Bradley-Terry heads on one frozen
   backbone (here all-MiniLM-L6-v2 sentence embeddings of the responses, cached), each head fit on its own
   Poisson(1) bootstrap weights of the labeled pairs (as tether/train_reward.py does), its rewards normalized by
   their spread over the labeled chosen responses (as tether/reward.py does);
2. the unlabeled pairs scored with ``tether.qc.preference_stats`` (per-pair ensemble mean and spread of
   P(first preferred));
3. a batch chosen by ``tether.qc.select_candidates`` with the same diversity guard as `tether collect select`
   (at most one pair per prompt per batch), then "labeled" and added.

Strategies (``tether.qc.SELECT_STRATEGIES``): random (a seeded shuffle: the peer, no active learning), uncertainty
(ensemble-mean P nearest 0.5), disagreement (largest spread of the members' P), certainty (P farthest from 0.5).
Every strategy starts from the same random seed set (a warm start) on the same fixed test set; test accuracy is the
ensemble mean's. Data (`--data`): HH-RLHF helpful-base test pairs (default; one crowdworker label each; the one
set here a response-embedding model learns from), harmless-base, PandaLM items with a majority of three
annotators, or FineGrainedRLHF QA feedback (four answers per question, so the per-prompt guard matters). Pool and
test are split by prompt. `--labels teacher` keeps the pairs and features but draws the labels from a
Bradley-Terry teacher (the full-data ensemble) with a set mean agreement: a control where the model can represent
the truth and all label noise is the Bradley-Terry kind.

It prints the test accuracy after each round (mean ± sd over seeds), the labels each strategy needs to reach a
target accuracy (median over seeds), the mean accuracy over the rounds minus random's (paired by seed), and how
often the full-pool ensemble agrees with the labels each strategy bought.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/active_learning.py --data hh-helpful
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/active_learning.py --data hh-helpful --labels teacher --teacher-agreement 0.75
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tether.qc import SELECT_STRATEGIES, preference_stats, select_candidates

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "bench-out" / "active_learning"
ASSISTANT = "\n\nAssistant:"


@dataclass
class Pairs:
    """Preference pairs: ``first[i]`` vs ``second[i]``, ``label[i]`` = 1 when the first is preferred, ``group[i]``
    the prompt (the diversity guard's unit and the split's)."""

    first: list[str]
    second: list[str]
    label: np.ndarray  # (N,) int
    group: list[str]


def _shown_order(chosen: list[str], rejected: list[str], groups: list[str]) -> Pairs:
    """Each pair shown in a seeded random order, so that 'first' carries no signal."""
    first_is_chosen = np.random.default_rng(12345).random(len(chosen)) < 0.5
    first = [c if f else r for c, r, f in zip(chosen, rejected, first_is_chosen)]
    second = [r if f else c for c, r, f in zip(chosen, rejected, first_is_chosen)]
    return Pairs(first, second, first_is_chosen.astype(np.int64), groups)


def load_hh(split: str) -> Pairs:
    """HH-RLHF test pairs: the final responses alone are embedded (the two share the context, and a long context
    would push the responses past the truncation). Identical pairs are dropped."""
    chosen, rejected, groups = [], [], []
    with gzip.open(DATA / "hh-rlhf" / split / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            cut = row["chosen"].rfind(ASSISTANT)
            prompt = row["chosen"][: cut + len(ASSISTANT)]
            if row["chosen"] == row["rejected"] or not row["rejected"].startswith(prompt):
                continue
            chosen.append(row["chosen"][cut + len(ASSISTANT):].strip())
            rejected.append(row["rejected"][len(prompt):].strip())
            groups.append(prompt)
    return _shown_order(chosen, rejected, groups)


def load_pandalm() -> Pairs:
    """PandaLM's items with a majority winner among its three annotators (ties and splits left out)."""
    chosen, rejected, groups = [], [], []
    for row in json.loads((DATA / "pandalm" / "testset-v1.json").read_text()):
        votes = [row[k] for k in ("annotator1", "annotator2", "annotator3")]
        winner = max((1, 2), key=votes.count)
        if votes.count(winner) >= 2:
            texts = [str(row["response1"]), str(row["response2"])]  # 6 records hold a boolean: its text
            chosen.append(texts[winner - 1])
            rejected.append(texts[2 - winner])
            groups.append(f"{row['instruction']}\n{row['input']}")
    return _shown_order(chosen, rejected, groups)


def load_qa_feedback() -> Pairs:
    """FineGrainedRLHF dev feedback: the six pairwise preferences among four answers per question (1v2, 1v3, 1v4,
    2v3, 2v4, 3v4), 'none' left out."""
    order = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
    chosen, rejected, groups = [], [], []
    for row in json.loads((DATA / "qa-feedback" / "dev_feedback.json").read_text()):
        for (i, j), pref in zip(order, row["preference"]):
            if pref in (1, 2):
                win, lose = (i, j) if pref == 1 else (j, i)
                chosen.append(row[f"prediction {win}"])
                rejected.append(row[f"prediction {lose}"])
                groups.append(row["question"])
    return _shown_order(chosen, rejected, groups)


def embed(texts: list[str], max_length: int = 128) -> np.ndarray:
    """MiniLM embeddings from ``tether.lifecycle.monitor.minilm_embedder`` (mean-pooled, L2-normalized), (N, 384), cached
    per text under bench-out/ (the first run of a data set embeds its texts: minutes on 2 CPU cores)."""
    path = CACHE / f"minilm-{max_length}.npz"
    cache: dict[str, np.ndarray] = {}
    if path.exists():
        saved = np.load(path)
        cache = dict(zip(saved["keys"].tolist(), saved["emb"]))
    keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items(), key=lambda kv: len(kv[1]))
    if missing:
        from tether.lifecycle.monitor import minilm_embedder

        start = time.perf_counter()
        vectors = minilm_embedder(max_length=max_length)([t for _, t in missing])  # sorted by length: less padding
        cache.update({k: v for (k, _), v in zip(missing, vectors)})
        print(f"embedded {len(missing)} texts in {time.perf_counter() - start:.0f} s")
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(path, keys=np.array(list(cache)), emb=np.stack(list(cache.values())))
    return np.stack([cache[k] for k in keys]).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: the reward ensemble (linear Bradley-Terry heads on frozen embeddings, bootstrap weights)


def fit_head(x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float, w0: np.ndarray | None = None) -> np.ndarray:
    """One head: P(first preferred) = sigmoid(w . x), x = e(first) - e(second) (N, D); weighted, L2-regularized
    MLE of the Bradley-Terry loss, -sum_i weight_i log sigmoid(sign_i w . x_i) + l2/2 |w|^2."""
    from scipy.optimize import minimize

    sign = 2 * y - 1  # (N,) +1 / -1

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = sign * (x @ w)
        nll = (weight * np.logaddexp(0, -z)).sum()
        grad = -(x * (weight * sign / (1 + np.exp(z)))[:, None]).sum(0)
        return nll + 0.5 * l2 * w @ w, grad + l2 * w

    w0 = np.zeros(x.shape[1]) if w0 is None else w0
    return minimize(loss, w0, jac=True, method="L-BFGS-B", options={"maxiter": 200}).x


def fit_ensemble(e_first: np.ndarray, e_second: np.ndarray, y: np.ndarray, *, members: int, l2: float,
                 rng: np.random.Generator, warm: np.ndarray | None = None) -> np.ndarray:
    """K heads, each on Poisson(1) bootstrap weights of the labeled pairs, then scaled so that each head's rewards
    have unit spread over the labeled chosen responses (the product's normalization). Returns W (K, D)."""
    x = e_first - e_second
    chosen = np.where(y[:, None] == 1, e_first, e_second)  # (N, D)
    heads = []
    for k in range(members):
        weight = rng.poisson(1.0, len(y)).astype(np.float64) if members > 1 else np.ones(len(y))
        w = fit_head(x, y, weight, l2, None if warm is None else warm[k])
        heads.append(w / max(float((chosen @ w).std()), 1e-12))
    return np.stack(heads)


# ---------------------------------------------------------------------------------------------------------------
# One run


def teacher_labels(e1: np.ndarray, e2: np.ndarray, heads: np.ndarray, agreement: float) -> tuple[np.ndarray, np.ndarray]:
    """A controlled label set on the same pairs: a Bradley-Terry "annotator" whose preference is the full-data
    ensemble's, P(first preferred) = sigmoid(beta * z), z = mean head reward difference, with beta set so that a
    label agrees with the teacher's own preferred answer with probability ``agreement`` on average.
    Returns (sampled labels (N,), the teacher's preferred answer (N,)); the noise is all aleatoric and the model
    class can represent the truth, the textbook setting for uncertainty sampling."""
    z = (heads @ e1.T - heads @ e2.T).mean(0)  # (N,)
    lo, hi = 1e-3, 1e3
    for _ in range(100):  # bisection on log beta: agreement grows with beta
        beta = np.sqrt(lo * hi)
        if np.mean(1 / (1 + np.exp(-beta * np.abs(z)))) < agreement:
            lo = beta
        else:
            hi = beta
    p_first = 1 / (1 + np.exp(-beta * z))
    return (np.random.default_rng(54321).random(len(z)) < p_first).astype(np.int64), (z > 0).astype(np.int64)


def run(strategy: str, seed: int, pool: tuple[np.ndarray, np.ndarray, np.ndarray, list[str]],
        test: tuple[np.ndarray, np.ndarray, np.ndarray], *, start: int, batch: int, budget: int, l2: float,
        members: int, full_agrees: np.ndarray) -> tuple[list[tuple[int, float]], float]:
    """One active-learning run; returns [(labels used, test accuracy)] after each round, and the share of the
    selected pairs (after the seed set) whose label agrees with the full-pool ensemble (``full_agrees`` (N,)):
    how learnable the labels a strategy buys are."""
    e1, e2, y, groups = pool
    t1, t2, ty = test
    rng = np.random.default_rng(seed)
    labeled = list(rng.choice(len(y), start, replace=False))  # the same seed set for every strategy
    fit_rng = np.random.default_rng(seed + 1000)  # bootstrap weights: the same draws for every strategy
    curve, agree = [], []
    while True:
        idx = np.array(labeled)
        heads = fit_ensemble(e1[idx], e2[idx], y[idx], members=members, l2=l2, rng=fit_rng)  # (K, D)
        p_test, _ = preference_stats(heads @ t1.T, heads @ t2.T)  # (T,)
        curve.append((len(labeled), float(((p_test > 0.5) == ty).mean())))
        if len(labeled) >= budget:
            return curve, float(np.mean(agree))
        unlabeled = np.setdiff1d(np.arange(len(y)), idx)
        p_mean, p_spread = preference_stats(heads @ e1[unlabeled].T, heads @ e2[unlabeled].T)  # (U,), (U,)
        picks = select_candidates(strategy, min(batch, budget - len(labeled)), p_mean=p_mean, p_spread=p_spread,
                                  groups=[groups[i] for i in unlabeled], max_per_group=1, seed=int(rng.integers(1 << 31)))
        labeled += [int(unlabeled[i]) for i in picks]
        agree += [bool(full_agrees[unlabeled[i]]) for i in picks]


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in curve if acc >= target), None)


DEFAULTS = {  # start, batch, budget, test pairs, l2
    "pandalm": (40, 20, 400, 200, 1.0),
    "hh-helpful": (100, 50, 1000, 700, 10.0),
    "hh-harmless": (100, 50, 1000, 700, 10.0),
    "qa-feedback": (100, 50, 1000, 600, 3.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="hh-helpful", choices=list(DEFAULTS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--start", type=int, default=None, help="random labels before the first selection (warm start)")
    parser.add_argument("--batch", type=int, default=None, help="labels asked per round")
    parser.add_argument("--budget", type=int, default=None, help="labels in all")
    parser.add_argument("--test", type=int, default=None, help="held-out test pairs (whole prompts)")
    parser.add_argument("--l2", type=float, default=None, help="L2 strength of each head's fit")
    parser.add_argument("--members", type=int, default=5, help="ensemble size K")
    parser.add_argument("--target", type=float, default=None,
                        help="target test accuracy (default: 0.5 + 90%% of the full-pool ensemble's gain over chance)")
    parser.add_argument("--strategies", default="random,uncertainty,disagreement,certainty", help=f"of: {', '.join(SELECT_STRATEGIES)}")
    parser.add_argument("--labels", default="human", choices=["human", "teacher"],
                        help="human: the data set's own labels; teacher: sampled from a Bradley-Terry teacher (the full-data ensemble), "
                             "test accuracy against the teacher's preferred answer")
    parser.add_argument("--teacher-agreement", type=float, default=0.75, help="--labels teacher: mean P(label = teacher's preference)")
    parser.add_argument("--json", default=None, help="write the curves here")
    args = parser.parse_args()
    for name, value in zip(("start", "batch", "budget", "test", "l2"), DEFAULTS[args.data]):
        if getattr(args, name) is None:
            setattr(args, name, value)

    if args.data == "pandalm":
        pairs = load_pandalm()
    elif args.data == "qa-feedback":
        pairs = load_qa_feedback()
    else:
        pairs = load_hh(args.data.replace("hh-", "") + "-base")
    e1, e2 = embed(pairs.first), embed(pairs.second)  # (N, 384) each
    test_label = pairs.label
    if args.labels == "teacher":
        teacher = fit_ensemble(e1, e2, pairs.label, members=args.members, l2=args.l2, rng=np.random.default_rng(1))
        pairs.label, test_label = teacher_labels(e1, e2, teacher, args.teacher_agreement)
    # Split by prompt: whole prompts go to the test set until it holds --test pairs.
    prompts = sorted(set(pairs.group))
    np.random.default_rng(12345).shuffle(prompts)
    test_prompts: set[str] = set()
    count = {g: 0 for g in prompts}
    for g in pairs.group:
        count[g] += 1
    n_test = 0
    for g in prompts:
        if n_test >= args.test:
            break
        test_prompts.add(g)
        n_test += count[g]
    is_test = np.array([g in test_prompts for g in pairs.group])
    tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    pool = (e1[tr], e2[tr], pairs.label[tr], [pairs.group[i] for i in tr])
    test = (e1[te], e2[te], test_label[te])
    full = fit_ensemble(e1[tr], e2[tr], pairs.label[tr], members=args.members, l2=args.l2, rng=np.random.default_rng(0))
    full_acc = float(((preference_stats(full @ test[0].T, full @ test[1].T)[0] > 0.5) == test[2]).mean())
    full_agrees = (preference_stats(full @ pool[0].T, full @ pool[1].T)[0] > 0.5) == pool[2]  # (pool,)
    target = args.target if args.target is not None else round(0.5 + 0.9 * (full_acc - 0.5), 3)
    print(f"{args.data} ({args.labels} labels): {len(pairs.label)} pairs (pool {len(tr)}, test {len(te)}, {len(prompts)} prompts); "
          f"full-pool ensemble test accuracy {full_acc:.4f}; target {target}")
    print(f"start {args.start}, batch {args.batch}, budget {args.budget}, K = {args.members}, l2 {args.l2}, {args.seeds} seeds")

    strategies = args.strategies.split(",")
    curves: dict[str, list[list[tuple[int, float]]]] = {s: [] for s in strategies}
    learnable: dict[str, list[float]] = {s: [] for s in strategies}
    start_time = time.perf_counter()
    for seed in range(args.seeds):
        for strategy in strategies:
            curve, agree = run(strategy, seed, pool, test, start=args.start, batch=args.batch, budget=args.budget,
                               l2=args.l2, members=args.members, full_agrees=full_agrees)
            curves[strategy].append(curve)
            learnable[strategy].append(agree)
    print(f"{args.seeds} seeds x {len(strategies)} strategies in {time.perf_counter() - start_time:.0f} s\n")

    budgets = [n for n, _ in curves[strategies[0]][0]]
    print("labels  " + "  ".join(f"{s:>15}" for s in strategies) + "   (test accuracy, mean ± sd over seeds)")
    for k, n in enumerate(budgets):
        cells = [np.array([c[k][1] for c in curves[s]]) for s in strategies]
        print(f"{n:>6}  " + "  ".join(f"{a.mean():>8.4f} ± {a.std(ddof=1) if len(a) > 1 else 0:.3f}" for a in cells))
    print(f"\nlabels to reach test accuracy {target} (per seed; median; never reached within the budget counts as > {args.budget}):")
    medians = {}
    for s in strategies:
        reached = [labels_to_reach(c, target) for c in curves[s]]
        medians[s] = float(np.median([r if r is not None else np.inf for r in reached]))
        print(f"  {s:<13} {reached}  median {medians[s]:g}")
    if "random" in strategies:
        for s in strategies:
            if s != "random" and np.isfinite(medians[s]):
                print(f"  random / {s}: {medians['random'] / medians[s]:.2f}x labels")
        # A steadier summary than one crossing point: the mean test accuracy over the rounds after the seed set
        # (area under the learning curve), paired by seed against random.
        print("\nmean test accuracy over the rounds after the seed set, minus random's (paired by seed; mean ± s.e.):")
        aulc = {s: np.array([np.mean([acc for _, acc in c[1:]]) for c in curves[s]]) for s in strategies}
        for s in strategies:
            if s != "random":
                diff = aulc[s] - aulc["random"]
                print(f"  {s:<13} {diff.mean():+.4f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}   "
                      f"({(diff > 0).sum()} of {len(diff)} seeds above random)")
    print(f"\nselected pairs whose label the full-pool ensemble agrees with (mean over seeds; all pool pairs: {full_agrees.mean():.3f}):")
    for s in strategies:
        print(f"  {s:<13} {np.mean(learnable[s]):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "target": target, "full_accuracy": full_acc, "curves": curves}))


if __name__ == "__main__":
    main()
