"""Does the demo's policy answer *this* request? Two measurements on finished `tether demo` runs (analysis only: it
reads the task's hidden gold and style markers, which training never does).

1. The SFT policy's conditioning: of its polished replies (the "good" style of tether.demo.task, short, polite,
   with some request's next step), the share that give the step of the request asked (on-topic) rather than of
   another kind of request (off-topic), on ``--prompts`` held-out requests.
2. Reward models' topic sense: on ``--prompts`` held-out requests, a good reply written for the request against a
   good reply written for another kind of request (same customer name, same slots), the share where each reward
   model (a folder, or an ensemble folder of member-* folders) scores the on-topic reply higher. 0.5 is blind.

    python benchmarks/topic.py --run tether-demo/artifacts/demo/support-demo-1 [--reward DIR ...] [--seed 0]

Without ``--reward`` it probes every reward folder of the run (the first ensemble or model and each loop round's).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def conditioning(task, policy_dir: Path, prompts: list[str], *, seed: int) -> dict:
    from tether.lifecycle.evaluate_policy import load_policy, sample

    model, tokenizer = load_policy(policy_dir)
    texts, _ = sample(model, tokenizer, prompts, max_new_tokens=64, temperature=1.0, batch_size=64, seed=seed)
    styles = [task.style_of(t, p) for p, t in zip(prompts, texts)]
    on, off = styles.count("good"), styles.count("off_topic")
    return {"replies": len(styles), "on_topic_good": on / len(styles), "off_topic": off / len(styles), "on_topic_share_of_polished": on / max(1, on + off)}


def topic_sense(task, reward_dir: Path, requests: list, *, seed: int) -> dict:
    from tether.demo.task import GOOD
    from tether.recipes.reward_specs import load_reward

    rng = random.Random(seed)
    prompts, on, off = [], [], []
    for r in requests:
        other = rng.choice([c for c in GOOD if c != r.category])
        prompts.append(r.prompt)
        on.append(rng.choice(GOOD[r.category]).format(**r.slots))
        off.append(rng.choice(GOOD[other]).format(**r.slots))
    spec = f"ensemble:{reward_dir}" if any(reward_dir.glob("member-*")) else str(reward_dir)
    reward = load_reward([spec], device="cpu")
    a, b = reward.members(prompts, on), reward.members(prompts, off)  # (N, K)
    return {"pairs": len(prompts), "members": [round(float(x), 3) for x in (a > b).float().mean(0)], "mean": round(float((a.mean(1) > b.mean(1)).float().mean()), 3)}


def reward_folders(run: Path) -> list[Path]:
    found = [p for p in (run / "models" / "reward-ensemble", run / "models" / "reward") if p.is_dir()]
    found += sorted((run / "loop").glob("round-*/reward"), key=lambda p: int(p.parent.name.split("-")[1]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a demo run folder: tether-demo/artifacts/demo/support-demo-N")
    parser.add_argument("--reward", type=Path, action="append", help="reward folders to probe (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (its task)")
    parser.add_argument("--prompts", type=int, default=200)
    args = parser.parse_args()
    if not (args.run / "models" / "sft").is_dir():
        parser.error(f"{args.run} is not a finished demo run (no models/sft in it); give tether-demo/artifacts/demo/support-demo-N")
    from tether.demo.task import DemoTask

    task = DemoTask(args.seed)
    requests = task.requests(args.prompts, "topic-probe")
    out = {"sft": conditioning(task, args.run / "models" / "sft", [r.prompt for r in requests], seed=args.seed)}
    for folder in args.reward or reward_folders(args.run):
        out[str(folder)] = topic_sense(task, folder, requests, seed=args.seed)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
