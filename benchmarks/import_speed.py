"""Import throughput of `tether data import` on SQLite and PostgreSQL, beside Hugging Face `datasets` reading the
same file (what TRL users load their data with; it builds an Arrow table and writes no database, so the ratio
"vs datasets" = Tether's wall time / datasets' wall time is the price of a transactional, de-duplicated store, not a
like-for-like race).

Each (data set, backend) pair is imported ``--repeats`` times into a fresh database (a new SQLite file; a new
PostgreSQL schema) and the median is reported. Rates count the whole import: reading, parsing, hashing, inserts
and the commit. "cpu s" is this process's CPU time (the PostgreSQL server's is not in it): on a shared machine the
wall time also holds the waits for a CPU, and judgments per CPU-second is what an idle core would reach.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/import_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/test"


def synthetic_files(folder: Path, rows: int) -> dict[str, Path]:
    """A TRL file of ``rows`` pairs (unique prompts) and a PandaLM-shaped file of ``rows`` items x 3 votes."""
    rng = random.Random(0)
    words = "the model answer should be helpful honest and harmless when a user asks about data privacy".split()

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    trl = folder / f"trl-{rows}.jsonl"
    with trl.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(json.dumps({"prompt": f"{i}: {text(30)}", "chosen": text(60), "rejected": text(60)}) + "\n")
    panda = folder / f"pandalm-like-{rows}.json"
    records = [
        {"idx": i, "instruction": f"{i % (rows // 6 + 1)}: {text(20)}", "input": "", "response1": text(40), "response2": text(40),
         "annotator1": rng.choice((0, 1, 2)), "annotator2": rng.choice((0, 1, 2)), "annotator3": rng.choice((0, 1, 2))}
        for i in range(rows)
    ]
    panda.write_text(json.dumps(records), encoding="utf-8")
    return {f"synthetic TRL ({rows:,} pairs)": trl, f"synthetic PandaLM-like ({rows:,} items x 3)": panda}


def fresh_sqlite(folder: Path) -> str:
    from tether.store.db import upgrade

    url = f"sqlite:///{folder / f'{uuid.uuid4().hex}.db'}"
    upgrade(url)
    return url


def fresh_postgres(base: str) -> tuple[str, str]:
    import psycopg

    from tether.store.db import upgrade

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{base}?options=-csearch_path%3D{schema}"
    upgrade(url)
    return url, schema


def drop_postgres(base: str, url: str, schema: str) -> None:
    import psycopg

    from tether.store.db import dispose_engine

    dispose_engine(url)
    with psycopg.connect(base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def time_import(url: str, path: Path) -> tuple[float, float, object]:
    """(wall seconds, this process's CPU seconds, ImportResult) of one import and its commit."""
    from tether.store.db import session_scope
    from tether.store.importer import import_file

    start, cpu = time.perf_counter(), time.process_time()
    with session_scope(url) as session:
        result = import_file(path, "bench", session=session)
    return time.perf_counter() - start, time.process_time() - cpu, result


def time_datasets(path: Path, folder: Path) -> float | str:
    try:
        import datasets
    except ImportError:
        return "not installed"
    datasets.disable_progress_bars()
    start = time.perf_counter()
    try:
        table = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(folder / f"hf-{uuid.uuid4().hex}"))
        len(table)
    except Exception as exc:  # noqa: BLE001 - report what the peer does with the file
        return f"fails: {type(exc).__name__}"
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20000, help="records of each synthetic file")
    parser.add_argument("--postgres", default=DEFAULT_PG, help="PostgreSQL URL ('none' to skip)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {
            "HH-RLHF helpful-base test": SHARED / "hh-rlhf/helpful-base/test.jsonl.gz",
            "PandaLM test set": SHARED / "pandalm/testset-v1.json",
            "qa-feedback dev": SHARED / "qa-feedback/dev_feedback.json",
            **synthetic_files(folder, args.rows),
        }
        files = {k: v for k, v in files.items() if v.exists()}
        backends = ["sqlite"] + ([] if args.postgres in ("", "none") else ["postgresql"])
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; median of {args.repeats}")
        print(f"{'data':<42} {'backend':<10} {'records':>7} {'judgments':>9} {'wall s':>7} {'records/s':>9} "
              f"{'judgments/s':>11} {'cpu s':>6} {'judg/cpu-s':>10} {'datasets s':>10} {'vs datasets':>11}")
        for label, path in files.items():
            peer = [time_datasets(path, folder) for _ in range(args.repeats)]
            peer_s = statistics.median(peer) if all(isinstance(p, float) for p in peer) else peer[0]
            for backend in backends:
                times, cpus = [], []
                for _ in range(args.repeats):
                    if backend == "sqlite":
                        url = fresh_sqlite(folder)
                        seconds, cpu, result = time_import(url, path)
                    else:
                        url, schema = fresh_postgres(args.postgres)
                        try:
                            seconds, cpu, result = time_import(url, path)
                        finally:
                            drop_postgres(args.postgres, url, schema)
                    times.append(seconds)
                    cpus.append(cpu)
                median, cpu = statistics.median(times), statistics.median(cpus)
                ratio = f"{median / peer_s:.1f}x" if isinstance(peer_s, float) else "-"
                peer_text = f"{peer_s:.3f}" if isinstance(peer_s, float) else peer_s
                print(f"{label:<42} {backend:<10} {result.records:>7,} {result.judgments:>9,} {median:>7.2f} "
                      f"{result.records / median:>9,.0f} {result.judgments / median:>11,.0f} {cpu:>6.2f} "
                      f"{result.judgments / cpu:>10,.0f} {peer_text:>10} {ratio:>11}", flush=True)


if __name__ == "__main__":
    main()
