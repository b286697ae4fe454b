"""PII detection: precision and recall on the labeled set that tests/test_pii.py builds, Tether side by side with
two peers, plus throughput and what each finds in real dialogues (HH-RLHF helpful-base test, 2,354 texts).

Peers (benchmark-only, never imported by the package): ``commonregex`` (the classic regex collection: emails,
phones, card numbers, street addresses) and Google's ``phonenumbers`` (libphonenumber's matcher, phones only,
region US).

    .venv/bin/pip install commonregex phonenumbers
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pii.py --n 2000 --seeds 0 1 2

Spans are scored exactly (same kind, same start and end) and by overlap (same kind, overlapping).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_pii import GENERATORS, build_labeled_set, score_labeled_set  # noqa: E402
from tether.checks.pii import find_pii  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


def tether_detect(text: str) -> list[tuple[str, int, int]]:
    return [(m.kind, m.start, m.end) for m in find_pii(text) if m.kind in GENERATORS]


def commonregex_detect(text: str) -> list[tuple[str, int, int]]:
    import commonregex

    out = []
    for kind, pattern in (("email", commonregex.email), ("phone", commonregex.phone), ("card", commonregex.credit_card),
                          ("address", commonregex.street_address)):
        out.extend((kind, m.start(), m.end()) for m in pattern.finditer(text))
    return out


def phonenumbers_detect(text: str) -> list[tuple[str, int, int]]:
    import phonenumbers

    return [("phone", m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, "US")]


DETECTORS = {"tether": tether_detect, "commonregex": commonregex_detect, "phonenumbers": phonenumbers_detect}


def hh_texts() -> list[str]:
    if not HH.exists():
        return []
    with gzip.open(HH, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["chosen"] for line in fh]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="labeled texts per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    sets = [build_labeled_set(args.n, seed=s) for s in args.seeds]
    print(f"labeled set: {len(sets)} x {args.n} texts; gold spans per kind:",
          {k: sum(1 for ex in sets[0] for g in ex[1] if g[0] == k) for k in GENERATORS})
    rows = []
    for name, detect in DETECTORS.items():
        kinds = ["phone"] if name == "phonenumbers" else list(GENERATORS)
        for mode in ("exact", "overlap"):
            per_kind = {k: {"precision": [], "recall": []} for k in kinds}
            for examples in sets:
                scores = score_labeled_set(examples, overlap=mode == "overlap", detect=detect)
                for k in kinds:
                    per_kind[k]["precision"].append(scores[k]["precision"])
                    per_kind[k]["recall"].append(scores[k]["recall"])
            for k in kinds:
                rows.append((name, mode, k, statistics.mean(per_kind[k]["precision"]), statistics.mean(per_kind[k]["recall"])))
        texts = [t for t, _ in sets[0]]
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for t in texts:
                detect(t)
            times.append(time.perf_counter() - start)
        rows.append((name, "speed", "-", len(texts) / statistics.median(times), None))

    print("\n| detector | scoring | kind | precision | recall |")
    print("|---|---|---|---|---|")
    for name, mode, kind, p, r in rows:
        if mode == "speed":
            continue
        print(f"| {name} | {mode} | {kind} | {p:.3f} | {r:.3f} |")
    print("\n| detector | labeled texts/s (median of 3) |")
    print("|---|---|")
    for name, mode, _, speed, _ in rows:
        if mode == "speed":
            print(f"| {name} | {speed:,.0f} |")

    texts = hh_texts()
    if not texts:
        print(f"\n(HH-RLHF not found at {HH}: real-text scan skipped)")
        return
    print(f"\nreal text: {len(texts):,} HH-RLHF helpful-base dialogues ({sum(map(len, texts)) / 1e6:.1f} M chars)")
    print("| detector | texts/s | spans found by kind |")
    print("|---|---|---|")
    found_tether = []
    for name, detect in DETECTORS.items():
        start = time.perf_counter()
        found = [(i, span) for i, t in enumerate(texts) for span in detect(t)]
        seconds = time.perf_counter() - start
        counts: dict[str, int] = {}
        for _, (kind, _, _) in found:
            counts[kind] = counts.get(kind, 0) + 1
        print(f"| {name} | {len(texts) / seconds:,.0f} | {json.dumps(counts, sort_keys=True)} |")
        if name == "tether":
            found_tether = found
    print("\nevery span Tether finds in HH-RLHF (judge them by eye):")
    for i, (kind, start, end) in found_tether:
        context = texts[i][max(0, start - 30) : end + 30].replace("\n", " ")
        print(f"  {kind:8s} {texts[i][start:end]!r:45s} ...{context}...")


if __name__ == "__main__":
    main()
