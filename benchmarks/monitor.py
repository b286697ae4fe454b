"""Time `tether monitor` over a million production records on SQLite and PostgreSQL.

For each database: bulk ingest of a JSONL file (COPY on PostgreSQL, executemany on SQLite), then the report
(30 daily windows; numeric columns aggregated from one SQL query with numpy, text checks and embeddings on a
2,000-record sample per window), and, side by side, the naive way: loading every record as an ORM object and
computing the same per-window reward/length figures in a Python loop. Drift is injected in the last days, so the
report must also raise its alerts.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/monitor.py --records 1000000
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/monitor.py --records 100000 --databases sqlite   # quick

PostgreSQL: postgresql+psycopg://root@127.0.0.1:5432/test (or TETHER_BENCH_POSTGRES_URL), in a fresh schema that
is dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.monitor_data import make_records  # noqa: E402

PG_URL = os.environ.get("TETHER_BENCH_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
START = datetime(2025, 3, 1, tzinfo=timezone.utc)


def write_traffic(path: Path, records: int, days: int, drift_from: int) -> None:
    """``records`` records over ``days`` days, written a day at a time (bounded memory); drift from ``drift_from``."""
    per_day = records // days
    with path.open("w", encoding="utf-8") as fh:
        for day in range(days):
            drift = {"reward_shift": -0.5, "length_growth": 2.5, "refusal_rate_after": 0.1} if day >= drift_from else {}
            chunk = make_records(per_day + (records % days if day == days - 1 else 0), days=1, seed=day,
                                 start=START + timedelta(days=day), drift_day=0 if drift else 99, mean_words=30, **drift)
            fh.writelines(json.dumps(r) + "\n" for r in chunk)


def naive_orm_report(url: str, window_s: float = 86400.0) -> tuple[float, int]:
    """The way not to do it: every record as an ORM object, windows and means in a Python loop."""
    from sqlalchemy import select

    from tether.store.db import session_scope
    from tether.store.tables import ProductionRecord

    start = time.perf_counter()
    sums: dict[int, list[float]] = {}
    with session_scope(url) as session:
        t0 = None
        for rec in session.scalars(select(ProductionRecord).order_by(ProductionRecord.ts).execution_options(yield_per=5000)):
            ts = rec.ts if rec.ts.tzinfo else rec.ts.replace(tzinfo=timezone.utc)
            t0 = t0 or ts
            w = int((ts - t0).total_seconds() // window_s)
            acc = sums.setdefault(w, [0.0, 0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += rec.reward or 0.0
            acc[2] += len(rec.prompt)
            acc[3] += len(rec.completion)
    return time.perf_counter() - start, len(sums)


def run(url: str, data: Path, label: str, repeats: int, naive: bool) -> dict:
    from tether.lifecycle.monitor import ReportOptions, build_report, hash_embedder, ingest_file
    from tether.store.db import session_scope, upgrade

    upgrade(url)
    t = time.perf_counter()
    with session_scope(url) as session:
        ingested = ingest_file(data, session=session)
    ingest_s = time.perf_counter() - t
    times, report = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        report = build_report(url, options=ReportOptions(window="1d", baseline="7d"), embed_fn=hash_embedder())
        times.append(time.perf_counter() - t)
    from tether.lifecycle.monitor import load_columns

    t = time.perf_counter()
    load_columns(url, ReportOptions())
    load_s = time.perf_counter() - t
    out = {
        "database": label,
        "records": ingested.inserted,
        "ingest_s": ingest_s,
        "ingest_per_s": ingested.inserted / ingest_s,
        "report_s_median": statistics.median(times),
        "report_s_all": times,
        "columns_query_s": load_s,
        "windows": len(report["windows"]),
        "alert_kinds": sorted({a["kind"] for a in report["alerts"]}),
        "alerts": len(report["alerts"]),
    }
    if naive:
        out["naive_orm_s"], _ = naive_orm_report(url)
        out["naive_over_tether_columns"] = out["naive_orm_s"] / load_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="report runs per database (median reported)")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--no-naive", action="store_true", help="skip the ORM-loop comparison")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tether-bench-monitor-"))
    data = work / "production.jsonl"
    t = time.perf_counter()
    write_traffic(data, args.records, args.days, drift_from=args.days - 5)
    print(f"generated {args.records:,} records ({data.stat().st_size / 1e6:.0f} MB JSONL) in {time.perf_counter() - t:.0f} s", flush=True)
    results = []
    for name in args.databases.split(","):
        if name == "sqlite":
            results.append(run(f"sqlite:///{work / 'bench.db'}", data, "sqlite", args.repeats, not args.no_naive))
        elif name == "postgres":
            import psycopg

            schema = f"bench_{uuid.uuid4().hex[:10]}"
            raw = PG_URL.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(raw, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
            try:
                results.append(run(f"{PG_URL}?options=-csearch_path%3D{schema}", data, "postgresql", args.repeats, not args.no_naive))
            finally:
                from tether.store.db import _ENGINES, dispose_engine

                for engine_url in [u for u in _ENGINES if schema in u]:
                    dispose_engine(engine_url)
                with psycopg.connect(raw, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        print(json.dumps(results[-1], indent=1), flush=True)
    print("\n| database | records | ingest | ingest rate | report (median) | columns query | naive ORM loop | ratio | alerts |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        naive = f"{r['naive_orm_s']:.1f} s" if "naive_orm_s" in r else "-"
        ratio = f"{r['naive_over_tether_columns']:.1f}x" if "naive_orm_s" in r else "-"
        print(f"| {r['database']} | {r['records']:,} | {r['ingest_s']:.0f} s | {r['ingest_per_s']:,.0f}/s | {r['report_s_median']:.1f} s | "
              f"{r['columns_query_s']:.1f} s | {naive} | {ratio} | {', '.join(r['alert_kinds'])} |")


if __name__ == "__main__":
    main()
