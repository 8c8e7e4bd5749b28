"""Benchmark: downsampled metric series of a run with 1,000,000 metric points, over HTTP.

    python -m backend.bench_series [--database-url URL] [--keys 20] [--points 1000000] [--requests 50]

Builds a fresh database (SQLite in a temporary directory unless --database-url names an empty
PostgreSQL database), writes one run with ``--points`` metric points spread over ``--keys`` keys
through the data-access layer (as a worker does), starts a real uvicorn server and times
``GET /api/v1/metrics/series`` with ``max_points=500``: one key per request (the dashboard's case), all
keys in one request, and a live tail (``since_step``). Prints p50/p95/max per case; the goal is a p95
under 50 ms for one key. Also times a run whose 1,000,000 points are all in a single key (worst case).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fill(database_url: str, keys: int, points: int) -> tuple[int, int]:
    from backend import migrate, store
    from backend.db import Database

    migrate.upgrade(database_url)
    db = Database(database_url)
    steps = points // keys
    t0 = time.perf_counter()
    with db.write_session() as s:
        run = store.create_run(s, {"name": "bench"})
        rng = random.Random(0)
        for k in range(keys):
            rows = [
                (f"metric/{k:02d}", i, math.sin(i / 500) + rng.gauss(0, 0.1), 1.7e9 + i) for i in range(steps)
            ]
            rows[rng.randrange(steps)] = (f"metric/{k:02d}", rows[0][1], 50.0, None)
            store.write_metrics(s, run.id, rows)
        single = store.create_run(s, {"name": "bench-single-key"})
        for start in range(0, points, 100_000):
            store.write_metrics(
                s, single.id, [("loss", i, math.cos(i / 1000), None) for i in range(start, start + 100_000)]
            )
    print(f"wrote {points:,} + {points:,} points in {time.perf_counter() - t0:.1f}s", flush=True)
    db.dispose()
    return run.id, single.id


def _time(client: httpx.Client, params, n: int) -> list[float]:
    client.get("/metrics/series", params=params).raise_for_status()  # warm-up
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get("/metrics/series", params=params)
        out.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    return out


def _report(name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    p95 = ms[min(len(ms) - 1, math.ceil(0.95 * len(ms)) - 1)]
    print(
        f"{name:<58} p50 {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   max {ms[-1]:7.1f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url")
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        run_id, single_id = _fill(url, args.keys, args.points)
        env = {
            **os.environ,
            "KLQ_DATA_DIR": tmp,
            "KLQ_DATABASE_URL": url,
            "KLQ_AUTH_REQUIRED_FOR_READS": "false",
        }
        port = _free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "backend.main:create_app",
                "--factory",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=60)
            for _ in range(300):
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            per_key = args.points // args.keys
            print(f"run {run_id}: {args.keys} keys x {per_key:,} steps; max_points=500", flush=True)
            ms: list[float] = []
            for k in range(args.keys):
                ms += _time(
                    client,
                    {"run_id": run_id, "key": f"metric/{k:02d}", "max_points": 500},
                    max(1, args.requests // args.keys),
                )
            _report(f"one key ({per_key:,} points -> 500)", ms)
            _report(
                f"all {args.keys} keys in one request",
                _time(client, {"run_id": run_id, "max_points": 500}, max(5, args.requests // 10)),
            )
            _report(
                "live tail (since_step = last step - 100)",
                _time(
                    client, {"run_id": run_id, "key": "metric/00", "since_step": per_key - 101}, args.requests
                ),
            )
            _report(
                f"worst case: one key with {args.points:,} points -> 500",
                _time(client, {"run_id": single_id, "key": "loss", "max_points": 500}, 5),
            )
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
