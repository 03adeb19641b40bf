"""Benchmark: the rater app under load, over HTTP on loopback, on SQLite and on PostgreSQL.

    .venv/bin/python benchmarks/bench_raters_load.py [--raters 50] [--per-rater 20] [--undo-every 4]
                                                     [--backends sqlite,postgresql]

1. For each backend: a fresh project (`tether raters init` with k = 3), 50 raters made through invites,
   enough pairs for every rater to get 20 (k = 3: 50 x 20 / 3 pairs, plus 10%).
2. The app runs as `tether raters serve` in its own process (single uvicorn worker, the shipped
   configuration), so the 50 client threads do not share its interpreter lock.
3. Every rater signs in, then all 50 at once run 20 rounds of GET /api/next + POST /api/ratings (one
   httpx client and thread each; the load driver is `run_load` in tests/raters/raterkit.py, shared with
   the smaller test). With undo in the mix: every 4th rating of the odd-numbered raters is taken back
   (POST /api/ratings/undo), the pair must come back first, and is rated again.
4. Checked: exactly raters x per-rater rating rows (no rating lost or duplicated by the undos), no 5xx,
   no pair with more than k raters.
   Reported: p50/p95 latency of each request kind, and ratings per second.

PostgreSQL comes from the `pgserver` wheel (a server started for this run, on a Unix socket).
Absolute figures depend on the machine and its load; results go to benchmarks/results/raters_load.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "raters"))
from raterkit import PASSWORD, LoadResult, make_queue, new_pg_database, run_load  # noqa: E402

from tether.raters.accounts import Accounts  # noqa: E402
from tether.raters.db import Assignment, Database, Rating, database_url  # noqa: E402
from tether.raters.security import load_or_create_secret  # noqa: E402
from tether.raters.service import RaterService  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(folder: Path, db_url: str | None, raters: int, per_rater: int) -> list[str]:
    """init the project, invite and activate the raters, import the pairs; returns the usernames."""
    argv = [sys.executable, "-m", "tether", "raters", "init", str(folder), "--overlap", "3"]
    subprocess.run(argv + (["--db", db_url] if db_url else []), check=True, capture_output=True)
    db = Database(database_url(folder, db_url))
    service, accounts = RaterService(db, folder), Accounts(db, load_or_create_secret(folder))
    names = [f"rater{i:03d}" for i in range(raters)]
    for name in names:
        accounts.accept_invite(accounts.invite(name), PASSWORD)  # the app's default argon2 cost
        service.acknowledge(accounts.add_user(name), "1")
    service.add_pairs(make_queue(int(raters * per_rater / 3 * 1.1) + 1))
    db.close()
    return names


def serve(folder: Path, db_url: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [sys.executable, "-m", "tether", "raters", "serve", str(folder), "--port", str(port)]
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(argv + (["--db", db_url] if db_url else []), stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/login", timeout=2)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)


def check(folder: Path, db_url: str | None, result: LoadResult, expected: int) -> dict:
    db = Database(database_url(folder, db_url))
    with db.read() as s:
        rows = s.scalar(select(func.count()).select_from(Rating))
        per_pair = Counter(s.scalars(select(Assignment.pair_id)))
    db.close()
    server_errors = sum(n for code, n in result.statuses.items() if code >= 500)
    ok = rows == expected and server_errors == 0 and not result.errors and max(per_pair.values()) <= 3
    return {"rating_rows": rows, "expected_rows": expected, "server_errors": server_errors,
            "client_errors": result.errors[:5], "max_raters_per_pair": max(per_pair.values()), "ok": ok}


def bench(backend: str, args: argparse.Namespace, pg_server) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"tether-bench-{backend}-"))
    db_url = new_pg_database(pg_server) if backend == "postgresql" else None
    names = prepare(folder / "project", db_url, args.raters, args.per_rater)
    proc, url = serve(folder / "project", db_url)
    try:
        result = run_load(url, names, args.per_rater, args.undo_every)
    finally:
        proc.terminate()
        proc.wait(10)
    row = check(folder / "project", db_url, result, args.raters * args.per_rater)
    if not row["ok"]:
        print((folder / "project" / "server.log").read_text()[-4000:], file=sys.stderr)
    pct = LoadResult.percentile
    both = [a + b for a, b in zip(result.next_ms, result.submit_ms)]
    row.update(backend=backend, seconds=round(result.seconds, 2), undone_and_rerated=result.undone,
               ratings_per_s=round(len(result.submit_ms) / result.seconds, 1),
               statuses=dict(result.statuses),
               **{f"{name}_p{q}_ms": round(pct(values, q), 1) for name, values in
                  (("next", result.next_ms), ("submit", result.submit_ms), ("round", both)) for q in (50, 95)})
    shutil.rmtree(folder, ignore_errors=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raters", type=int, default=50)
    p.add_argument("--per-rater", type=int, default=20)
    p.add_argument("--undo-every", type=int, default=4, help="odd raters undo and re-rate every n-th rating; 0: none")
    p.add_argument("--backends", default="sqlite,postgresql")
    args = p.parse_args()
    backends = args.backends.split(",")
    pg_server, pg_folder = None, None
    if "postgresql" in backends:
        import pgserver
        pg_folder = tempfile.mkdtemp(prefix="tether-pg-")
        pg_server = pgserver.get_server(pg_folder, cleanup_mode="stop")
    try:
        rows = [bench(backend, args, pg_server) for backend in backends]
    finally:
        if pg_server is not None:
            pg_server.cleanup()
            shutil.rmtree(pg_folder, ignore_errors=True)
    print(f"\n{args.raters} raters x {args.per_rater} ratings, concurrently over HTTP on loopback "
          f"({os.cpu_count()} CPU cores, one uvicorn worker):")
    print(f"{'backend':<11} {'rows':>6} {'undos':>6} {'5xx':>4} {'next p50/p95 ms':>16} {'submit p50/p95 ms':>18} {'ratings/s':>10}")
    for r in rows:
        print(f"{r['backend']:<11} {r['rating_rows']:>6} {r['undone_and_rerated']:>6} {r['server_errors']:>4} "
              f"{r['next_p50_ms']:>7} / {r['next_p95_ms']:<6} {r['submit_p50_ms']:>8} / {r['submit_p95_ms']:<7} "
              f"{r['ratings_per_s']:>10}  {'OK' if r['ok'] else 'FAILED'}")
    out = ROOT / "benchmarks" / "results" / "raters_load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    if not all(r["ok"] for r in rows):
        sys.exit("load check failed: " + json.dumps([r for r in rows if not r["ok"]]))


if __name__ == "__main__":
    main()
