"""Synthetic production traffic with drift injected on demand (used by tests/test_monitor.py and benchmarks/).

Each record has a latent quality q ~ N(0, 1); the logged reward is q plus noise, and a fifth of the records carry a
thumbs label drawn with P(up) = sigmoid(2 q), so the reward agrees with people (AUC ~ 0.8) until told otherwise.
Prompts come from a few everyday topics; completions are filler sentences of a random length, with small base
rates of refusals, PII and degenerate repetition. Drift starts at ``drift_day`` (0-based) and stays.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

TOPICS = {
    "cooking": ["How long should I roast a chicken at 200C?", "What can I cook with rice, eggs and spinach?",
                "How do I keep pasta from sticking together?", "Is it safe to freeze cooked rice?",
                "What spices go well with roasted carrots?", "How do I make a sourdough starter?"],
    "travel": ["What should I pack for a week in Lisbon in spring?", "Is the train faster than flying from Paris to Lyon?",
               "How early should I arrive at the airport for a domestic flight?", "Which neighbourhood is quiet to stay in Rome?",
               "Do I need a visa to visit Japan for two weeks?", "What is a good day trip from Barcelona?"],
    "coding": ["How do I reverse a list in Python?", "What does a segmentation fault mean in C?",
               "How can I speed up a slow SQL query with joins?", "Why does my React component render twice?",
               "How do I read a CSV file with pandas?", "What is the difference between a process and a thread?"],
    "fitness": ["How many rest days should I take when running?", "What is a good beginner push-up routine?",
                "Should I stretch before or after a workout?", "How much protein do I need to build muscle?",
                "Is walking every day enough exercise?", "How do I avoid knee pain when cycling?"],
}
# A topic absent from the baseline, for the "new prompt topic" drift. Each is cut to the length of the prompt it
# replaces, so that the prompt-length distribution stays put and only the content moves.
NEW_TOPIC = ["Can my landlord keep the deposit for normal wear and tear in the flat?",
             "How do I contest a parking fine in court if the sign was hidden?",
             "Is a verbal agreement a binding contract for a private car sale?",
             "What happens if I break my lease after three months of a year lease?",
             "Can my employer read my private messages on a work laptop legally?",
             "How do I file a small claims case against a builder who left the job?"]

FILLER = ("Here is a clear answer. First, consider the main point. Then check the details that matter for you. "
          "A simple approach works well in most cases. Keep notes of what you try. Adjust as you learn more. ").split()
REFUSAL = "I'm sorry, but I can't help with that request."
PII_LINE = "You can reach our agent at jane.roe@example.com or (415) 555-0132."
REPEAT = "the the the the the the the the the the the the the the"


def make_records(
    n: int,
    days: int = 8,
    seed: int = 0,
    start: datetime = datetime(2025, 3, 1, tzinfo=timezone.utc),
    drift_day: int = 5,
    reward_shift: float = 0.0,
    new_topic_share: float = 0.0,
    length_growth: float = 1.0,
    refusal_rate: float = 0.02,
    refusal_rate_after: float | None = None,
    pii_rate: float = 0.005,
    pii_rate_after: float | None = None,
    repetition_rate: float = 0.005,
    decouple_reward: bool = False,
    feedback_share: float = 0.2,
    mean_words: float = 60.0,
) -> list[dict]:
    """``n`` records spread uniformly over ``days`` days; the drift arguments act from ``drift_day`` on."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, days * 86400.0, n))
    day = (t // 86400).astype(int)
    after = day >= drift_day
    quality = rng.normal(0, 1, n)
    noise = rng.normal(0, 0.7, n)
    reward = quality + noise
    if decouple_reward:  # the reward model stops tracking what people like
        reward = np.where(after, rng.normal(0, 1, n), reward)
    reward = reward + np.where(after, reward_shift, 0.0)
    thumbs_up = rng.random(n) < 1 / (1 + np.exp(-2 * quality))
    has_feedback = rng.random(n) < feedback_share
    words = np.maximum(5, rng.normal(mean_words, mean_words / 4, n)).astype(int)
    # growing length: ramps from 1 at drift_day to length_growth at the last day
    ramp = np.clip((t / 86400 - drift_day) / max(days - drift_day, 1), 0, 1)
    words = (words * (1 + (length_growth - 1) * ramp * after)).astype(int)
    refuse_p = np.where(after & (refusal_rate_after is not None), refusal_rate_after or 0.0, refusal_rate)
    pii_p = np.where(after & (pii_rate_after is not None), pii_rate_after or 0.0, pii_rate)
    refuse = rng.random(n) < refuse_p
    pii = rng.random(n) < pii_p
    repeat = rng.random(n) < repetition_rate
    new_topic = after & (rng.random(n) < new_topic_share)
    topic_names = list(TOPICS)
    topic_pick = rng.integers(0, len(topic_names), n)
    prompt_pick = rng.integers(0, 6, n)
    word_picks = rng.integers(0, len(FILLER), 4096 + int(words.max()))
    offsets = rng.integers(0, 4096, n)
    records = []
    for i in range(n):
        prompt = TOPICS[topic_names[topic_pick[i]]][prompt_pick[i]]
        if new_topic[i]:
            prompt = NEW_TOPIC[prompt_pick[i]][: len(prompt)]
        if refuse[i]:
            completion = REFUSAL
        else:
            k = int(words[i])
            completion = " ".join(FILLER[j] for j in word_picks[offsets[i] : offsets[i] + k])
            if pii[i]:
                completion += " " + PII_LINE
            if repeat[i]:
                completion += " " + REPEAT
        record = {
            "ts": (start + timedelta(seconds=float(t[i]))).isoformat(),
            "prompt": prompt,
            "completion": completion,
            "model_version": "policy-v1",
            "user_ref": f"u{int(rng.integers(0, 500))}",
            "reward": round(float(reward[i]), 5),
        }
        if has_feedback[i]:
            record["feedback"] = {"thumbs": bool(thumbs_up[i])}
        records.append(record)
    return records


def write_jsonl(records: list[dict], path: Path) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    return path


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))
