"""Load test of the annotation queue: N concurrent simulated annotators against `tether serve` on loopback.

First every annotator signs in through the web form at once (``POST /login``: the sign-in throttle, a session row),
all from one address as an office behind one NAT would; none may be refused. Then each annotator (an asyncio task
with its own annotate-scoped API token, as a labeling pipeline holds) loops a bounded number of times: ask for the
next item (``POST /api/v1/projects/{id}/next``), think, answer it (``POST /api/v1/assignments/{id}/judgment``).
Reported per database (SQLite file, PostgreSQL fresh schema): p50 / p99 latency of sign-in, "next" and "submit" as
the client sees them, throughput, errors, and the integrity checks that must read 0: judgments acknowledged but
missing from the store (lost), two judgments for one (item, annotator) or one assignment (duplicated), items past
their overlap. The exit status is 1 when a check fails, an annotator could not sign in, or a request errored.

There is no peer here (TRL has no annotation server); the figures stand alone. The client and the server share
the machine, so on a small machine the client's own CPU shows up in the latencies.

    .venv/bin/python benchmarks/annotate_load.py --annotators 200 --per-annotator 4 --think-ms 10000 --db both --repeat 2

``--lookup N`` times the next-item lookup alone on a project of N items whose first three quarters are full: the
open-slots index (schema 0002) against the id-order scan of schema 0001, which it replaced.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (uvicorn workers), from /proc."""
    total = 0.0
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


PASSWORD = "load-test-password"


def prepare(url: str, n_annotators: int, n_items: int, overlap: int) -> tuple[int, list[str]]:
    """Schema, one project of ``n_items`` pairs, ``n_annotators`` annotators with annotate-scoped tokens (through the
    store functions; names load0000, load0001, ...)."""
    from tether.store import accounts, campaigns
    from tether.store.db import session_scope, upgrade

    upgrade(url)
    with session_scope(url) as session:
        project = campaigns.create_project(session, name="load", schema={"kind": "pairwise"}, guidelines="# Pick the better answer",
                                            overlap=overlap, assignment_ttl_s=3600)
        rows = [{"prompt": f"question {i}: what is {i} * 3?", "chosen": f"{3 * i}", "rejected": f"{3 * i + 1}"} for i in range(n_items)]
        campaigns.add_items(session, project=project, rows=rows, max_items=n_items)
        tokens = []
        for i in range(n_annotators):
            user = accounts.create_user(session, name=f"load{i:04d}", role="annotator", password=PASSWORD, password_profile="cheapest")
            tokens.append(accounts.issue_token(session, user=user, label="load", scope="annotate"))
        return project.id, tokens


def app_ms(response) -> float:
    """The server's own time for a request (its Server-Timing header), in ms."""
    timing = response.headers.get("server-timing", "")
    try:
        return float(timing.split("dur=", 1)[1])
    except (IndexError, ValueError):
        return float("nan")


async def annotator(client, project_id: int, token: str, per_annotator: int, think_ms: float, rng: random.Random, out: dict,
                    ramp_s: float = 0.0) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    if ramp_s > 0:  # people do not all click at the same instant: starts spread over the ramp
        await asyncio.sleep(rng.uniform(0, ramp_s))
    for _ in range(per_annotator):  # bounded
        start = time.perf_counter()
        try:
            response = await client.post(f"/api/v1/projects/{project_id}/next", headers=headers)
        except Exception as exc:  # a transport error counts, the run goes on
            out["errors"].append(f"next: {type(exc).__name__}")
            return
        out["next_ms"].append((time.perf_counter() - start) * 1000)
        out["next_app_ms"].append(app_ms(response))
        if response.status_code == 204:
            return
        if response.status_code != 200:
            out["errors"].append(f"next: HTTP {response.status_code}")
            return
        task = response.json()
        if think_ms > 0:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think_ms / 1000)
        value = rng.choice([{"choice": "a", "strength": rng.choice([1, 2, 3])}, {"choice": "b", "strength": 2}, {"choice": "tie"}])
        body = {"value": value, "time_spent_ms": int(think_ms)}
        start = time.perf_counter()
        try:
            response = await client.post(f"/api/v1/assignments/{task['assignment_id']}/judgment", json=body, headers=headers)
        except Exception as exc:
            out["errors"].append(f"submit: {type(exc).__name__}")
            continue
        out["submit_ms"].append((time.perf_counter() - start) * 1000)
        out["submit_app_ms"].append(app_ms(response))
        if response.status_code == 201:
            out["acked"].append(response.json()["judgment_id"])
        else:
            out["errors"].append(f"submit: HTTP {response.status_code}")


async def sign_in(client, name: str, out: dict) -> None:
    """The web sign-in of one annotator: the form (for its CSRF token), then the POST; a 303 is a session."""
    import re

    try:
        form = await client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        start = time.perf_counter()
        response = await client.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": token})
    except Exception as exc:
        out["errors"].append(f"sign-in: {type(exc).__name__}")
        return
    out["sign_in_ms"].append((time.perf_counter() - start) * 1000)
    if response.status_code != 303:
        out["sign_in_refused"].append(response.status_code)


async def drive(base: str, project_id: int, tokens: list[str], per_annotator: int, think_ms: float, seed: int, ramp_s: float = 0.0) -> dict:
    """All annotators at once; each has its own HTTP client (one keep-alive connection), as each person has their
    own browser. One shared client would spend most of the client's CPU managing a pool of hundreds of connections."""
    import httpx

    out: dict = {"next_ms": [], "submit_ms": [], "next_app_ms": [], "submit_app_ms": [], "acked": [], "errors": [],
                 "sign_in_ms": [], "sign_in_refused": []}
    # Made before the clock and the ramp start: making one costs 20 to 50 ms of CPU (its TLS context), and made
    # inside the annotators' tasks they held the event loop for the whole ramp, so that most first requests left
    # together when it was done: a burst that the server had to queue (first "next" p50 0.5 s, p99 1.1 s).
    clients = [httpx.AsyncClient(base_url=base, timeout=120) for _ in tokens]
    try:
        # Everyone signs in at once (a burst from one address), before the annotating clock starts.
        await asyncio.gather(*(sign_in(client, f"load{i:04d}", out) for i, client in enumerate(clients)))
        start = time.perf_counter()
        await asyncio.gather(*(
            annotator(client, project_id, token, per_annotator, think_ms, random.Random(seed + i), out, ramp_s)
            for i, (client, token) in enumerate(zip(clients, tokens))
        ))
        out["wall_s"] = time.perf_counter() - start
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    return out


def integrity(url: str, project_id: int, acked: list[int], overlap: int) -> dict:
    from sqlalchemy import func, select

    from tether.store.db import session_scope
    from tether.store.tables import Item, Judgment

    with session_scope(url) as session:
        in_project = select(Item.id).where(Item.project_id == project_id)
        stored = set(session.scalars(select(Judgment.id).where(Judgment.item_id.in_(in_project))).all())
        dup_pairs = session.execute(
            select(Judgment.item_id, Judgment.user_id).where(Judgment.item_id.in_(in_project))
            .group_by(Judgment.item_id, Judgment.user_id).having(func.count() > 1)
        ).all()
        dup_assign = session.execute(
            select(Judgment.assignment_id).where(Judgment.item_id.in_(in_project))
            .group_by(Judgment.assignment_id).having(func.count() > 1)
        ).all()
        over = session.execute(
            select(Judgment.item_id).where(Judgment.item_id.in_(in_project)).group_by(Judgment.item_id).having(func.count() > overlap)
        ).all()
    return {
        "stored": len(stored),
        "lost": len(set(acked) - stored),
        "duplicated": len(dup_pairs) + len(dup_assign),
        "over_overlap": len(over),
        "unacknowledged": len(stored - set(acked)),
    }


def run_one(db: str, args: argparse.Namespace) -> dict:
    """One full run on ``db``: fresh database, server subprocess, load, integrity check."""
    tmp = Path(tempfile.mkdtemp(prefix=f"tether-load-{db}-"))
    env = {**os.environ, "TETHER_HOME": str(tmp / "ws"), "TETHER_PASSWORD_PROFILE": "cheapest", "MLFLOW_DISABLE_TELEMETRY": "true"}
    schema = None
    if db == "sqlite":
        env.pop("TETHER_DATABASE_URL", None)
        url = f"sqlite:///{tmp / 'ws' / 'tether.db'}"
    else:
        import psycopg

        schema = f"load_{uuid.uuid4().hex[:10]}"
        raw = args.pg_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(raw, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        url = f"{args.pg_url}{'&' if '?' in args.pg_url else '?'}options=-csearch_path%3D{schema}"
        env["TETHER_DATABASE_URL"] = url
    subprocess.run([sys.executable, "-m", "tether", "init", str(tmp / "ws")], env=env, check=True, capture_output=True)
    n_items = math.ceil(args.annotators * args.per_annotator / args.overlap) + args.annotators
    project_id, tokens = prepare(url, args.annotators, n_items, args.overlap)
    port = free_port()
    log = (tmp / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "tether", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--workers", str(args.workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/login", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("tether serve did not start:\n" + (tmp / "serve.log").read_text())
            time.sleep(0.2)
        cpu_before, client_before, load_before = process_cpu_s(server.pid), time.process_time(), os.getloadavg()[0]
        ramp_s = args.think_ms / 1000 if args.ramp_s is None else args.ramp_s
        out = asyncio.run(drive(base, project_id, tokens, args.per_annotator, args.think_ms, args.seed, ramp_s))
        out["server_cpu_s"] = process_cpu_s(server.pid) - cpu_before
        out["client_cpu_s"] = time.process_time() - client_before
        out["load"] = (load_before + os.getloadavg()[0]) / 2
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    checks = integrity(url, project_id, out["acked"], args.overlap)
    from tether.store.db import dispose_engine

    dispose_engine(url)
    if schema is not None:
        import psycopg

        with psycopg.connect(args.pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    requests = len(out["next_ms"]) + len(out["submit_ms"])
    return {
        "db": db,
        "annotators": args.annotators,
        "think_ms": args.think_ms,
        "sign_in_p50": statistics.median(out["sign_in_ms"]) if out["sign_in_ms"] else float("nan"),
        "sign_in_p99": percentile(out["sign_in_ms"], 99),
        "sign_in_refused": len(out["sign_in_refused"]),
        "next_p50": statistics.median(out["next_ms"]) if out["next_ms"] else float("nan"),
        "next_p99": percentile(out["next_ms"], 99),
        "submit_p50": statistics.median(out["submit_ms"]) if out["submit_ms"] else float("nan"),
        "submit_p99": percentile(out["submit_ms"], 99),
        "app_p99": percentile(out["next_app_ms"] + out["submit_app_ms"], 99),
        "app_p50": statistics.median(out["next_app_ms"] + out["submit_app_ms"]) if out["next_app_ms"] else float("nan"),
        "requests": requests,
        "req_per_s": requests / out["wall_s"],
        "judgments": len(out["acked"]),
        "server_cpu_ms": 1000 * out["server_cpu_s"] / max(requests, 1),
        "client_cpu_ms": 1000 * out["client_cpu_s"] / max(requests, 1),
        "load": out["load"],
        "errors": len(out["errors"]),
        "error_kinds": sorted(set(out["errors"]))[:5],
        **checks,
    }


def _scan_candidate():
    """The next-item lookup of schema 0001, kept here as the peer: items in id order, each with a count of its
    active assignments, until one is below the overlap."""
    from sqlalchemy import and_, bindparam, exists, func, or_, select

    from tether.store.tables import Assignment, Item, ItemCompletion

    now = bindparam("now", type_=Assignment.__table__.c.expires_at.type)
    holds = or_(Assignment.state == "done", and_(Assignment.state == "pending", or_(Assignment.expires_at.is_(None), Assignment.expires_at > now)))
    never_given = ~exists().where(Assignment.item_id == Item.id, Assignment.user_id == bindparam("user_id"))
    n_completions = select(func.count()).select_from(ItemCompletion).where(ItemCompletion.item_id == Item.id).correlate(Item).scalar_subquery()
    active = select(func.count()).select_from(Assignment).where(Assignment.item_id == Item.id, holds).correlate(Item).scalar_subquery()
    return (select(Item.id, n_completions)
            .where(Item.project_id == bindparam("project_id"), Item.is_gold.is_(False), never_given, active < bindparam("overlap"))
            .order_by(Item.id).limit(1).with_for_update(skip_locked=True, of=Item))


def lookup_run(db: str, args: argparse.Namespace) -> dict:
    """Time the next-item lookup alone on a big project whose first ``--lookup-full`` items are full (overlap 3):
    the open-slots index (schema 0002) against the id-order scan of schema 0001. Median of 30, in ms."""
    from datetime import datetime, timezone

    from sqlalchemy import insert, select

    from tether.store import campaigns
    from tether.store.campaigns import queue
    from tether.store.db import dispose_engine, session_scope, upgrade
    from tether.store.tables import Assignment, Item, User

    url, cleanup = fresh_database(db, args)
    try:
        upgrade(url)
        with session_scope(url) as session:
            project = campaigns.create_project(session, name="lookup", schema={"kind": "pairwise"}, overlap=3)
            rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(args.lookup)]
            campaigns.add_items(session, project=project, rows=rows, max_items=args.lookup)
            users = [User(name=f"u{i}", role="annotator") for i in range(4)]
            session.add_all(users)
            session.flush()
            ids = session.scalars(select(Item.id).where(Item.project_id == project.id).order_by(Item.id)).all()
            at = datetime.now(timezone.utc)
            session.execute(insert(Assignment), [
                {"item_id": i, "user_id": u.id, "state": "done", "shown_order": [0, 1], "created_at": at} for i in ids[: args.lookup_full] for u in users[:3]
            ])
            campaigns.recount_open_slots(session, project_id=project.id)
            params = {"project_id": project.id, "user_id": users[3].id, "overlap": 3}
        with session_scope(url) as session:
            session.connection().exec_driver_sql("ANALYZE")
        out = {"db": db}
        for name, statement in (("scan", _scan_candidate()), ("index", queue._CANDIDATE[False])):
            times = []
            with session_scope(url) as session:
                for _ in range(30):  # bounded
                    start = time.perf_counter()
                    found = session.execute(statement, {**params, "now": datetime.now(timezone.utc)}).first()
                    times.append((time.perf_counter() - start) * 1000)
            assert found[0] == ids[args.lookup_full], (name, found)
            out[name] = statistics.median(times)
        return out
    finally:
        dispose_engine(url)
        cleanup()


def fresh_database(db: str, args: argparse.Namespace):
    """(URL of an empty database, cleanup): a SQLite file, or a new schema on the PostgreSQL server."""
    tmp = Path(tempfile.mkdtemp(prefix=f"tether-lookup-{db}-"))
    if db == "sqlite":
        return f"sqlite:///{tmp / 'tether.db'}", lambda: None
    import psycopg

    schema = f"lookup_{uuid.uuid4().hex[:10]}"
    raw = args.pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def cleanup() -> None:
        with psycopg.connect(raw, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    return f"{args.pg_url}{'&' if '?' in args.pg_url else '?'}options=-csearch_path%3D{schema}", cleanup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=200, help="concurrent simulated annotators")
    parser.add_argument("--per-annotator", type=int, default=10, help="items each annotator judges (bounded loop)")
    parser.add_argument("--think-ms", type=float, default=2000, help="mean think time between next and submit (uniform 0.5x..1.5x); 0 = saturate")
    parser.add_argument("--ramp-s", type=float, default=None,
                        help="spread the annotators' first request over this many seconds (default: the think time; 0 = all at once)")
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="tether serve --workers")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--pg-url", default=os.environ.get("TETHER_TEST_POSTGRES_URL", DEFAULT_PG))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, choices=range(1, 11), metavar="1..10",
                        help="run the whole thing this many times back to back (each on a fresh database)")
    parser.add_argument("--lookup", type=int, default=0,
                        help="instead of the load test: time the next-item lookup alone on a project of this many items")
    parser.add_argument("--lookup-full", type=int, default=None, help="with --lookup: how many of the first items are full (default 3/4)")
    args = parser.parse_args()
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    if args.lookup:
        if args.lookup_full is None:
            args.lookup_full = args.lookup * 3 // 4
        if not 0 <= args.lookup_full < args.lookup <= 200_000:
            raise SystemExit("--lookup must be 1..200000 and --lookup-full below it")
        print(f"next-item lookup: {args.lookup} items, the first {args.lookup_full} full (overlap 3), median of 30; load {os.getloadavg()[0]:.1f}")
        for db in dbs:
            r = lookup_run(db, args)
            print(f"{db:<9} id-order scan (0001) {r['scan']:8.2f} ms   open-slots index (0002) {r['index']:8.3f} ms   ratio {r['scan'] / r['index']:.0f}x")
        return
    if args.annotators < 1 or args.annotators > 2000 or args.per_annotator < 1 or args.per_annotator > 1000:
        raise SystemExit("--annotators must be 1..2000 and --per-annotator 1..1000")
    ramp = args.think_ms / 1000 if args.ramp_s is None else args.ramp_s
    print(f"annotate_load: {args.annotators} annotators x {args.per_annotator} items, think {args.think_ms:.0f} ms, ramp {ramp:.0f} s, overlap {args.overlap}, "
          f"workers {args.workers}, CPUs {os.cpu_count()}")
    print(f"uptime: {uptime()}")
    header = (f"{'db':<9}{'sign-in p50':>12}{'sign-in p99':>12}{'refused':>8}{'next p50':>10}{'next p99':>10}{'submit p50':>12}{'submit p99':>12}"
              f"{'req/s':>8}{'judgments':>11}{'errors':>8}{'lost':>6}{'dup':>5}{'over':>6}{'srv CPU/req':>13}{'cli CPU/req':>13}{'load':>6}"
              f"{'app p50':>10}{'app p99':>10}")
    print(header)
    failed = False
    for _ in range(args.repeat):  # bounded
        for db in dbs:
            r = run_one(db, args)
            print(f"{r['db']:<9}{r['sign_in_p50']:>10.1f}ms{r['sign_in_p99']:>10.1f}ms{r['sign_in_refused']:>8}"
                  f"{r['next_p50']:>8.1f}ms{r['next_p99']:>8.1f}ms{r['submit_p50']:>10.1f}ms{r['submit_p99']:>10.1f}ms"
                  f"{r['req_per_s']:>8.0f}{r['judgments']:>11}{r['errors']:>8}{r['lost']:>6}{r['duplicated']:>5}{r['over_overlap']:>6}"
                  f"{r['server_cpu_ms']:>11.1f}ms{r['client_cpu_ms']:>11.1f}ms{r['load']:>6.1f}{r['app_p50']:>8.1f}ms{r['app_p99']:>8.1f}ms")
            if r["error_kinds"]:
                print(f"  errors: {r['error_kinds']}")
            if r["unacknowledged"]:
                print(f"  {r['unacknowledged']} judgments stored whose reply the client did not get (timeouts)")
            failed |= bool(r["lost"] or r["duplicated"] or r["over_overlap"] or r["sign_in_refused"] or r["errors"])
    print(f"uptime: {uptime()}")
    if failed:
        print("FAILED: a judgment was lost, duplicated or past its overlap, a sign-in was refused, or a request errored")
        sys.exit(1)


def uptime() -> str:
    """What `uptime` prints (the box's load averages), for the record of every run."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


if __name__ == "__main__":
    main()
