"""Benchmark: downsampled metric series of a run with 1,000,000 metric points, over HTTP.

    python bench/series_http.py [--database-url URL] [--keys 20] [--points 1000000] [--requests 50]

(Moved here from backend/bench_series.py; bench/metrics_store.py reuses `serve`, `time_get` and
`report` for its HTTP reads.)

Builds a fresh database (SQLite in a temporary directory unless --database-url names an empty
PostgreSQL database), writes one run with ``--points`` metric points spread over ``--keys`` keys
through the data-access layer (as a worker does), starts a real uvicorn server and times
``GET /api/v1/metrics/series`` with ``max_points=500``: one key per request (the dashboard's case), all
keys in one request, and a live tail (``since_step``). Prints p50/p95/max per case; the goal is a p95
under 50 ms for one key. Also times a run whose 1,000,000 points are all in a single key (worst case).
"""

from __future__ import annotations

import argparse
import contextlib
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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


def time_get(client: httpx.Client, params, n: int, path: str = "/metrics/series") -> list[float]:
    """Milliseconds of `n` GETs of `path` (after one warm-up request)."""
    client.get(path, params=params).raise_for_status()  # warm-up
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path, params=params)
        out.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    return out


def percentile(ms: list[float], q: float) -> float:
    ms = sorted(ms)
    return ms[min(len(ms) - 1, max(0, math.ceil(q * len(ms)) - 1))]


def report(name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    print(
        f"{name:<58} p50 {statistics.median(ms):7.1f} ms   p95 {percentile(ms, 0.95):7.1f} ms   max {ms[-1]:7.1f} ms",
        flush=True,
    )


SERVER_PIDS: dict[int, int] = {}  # port -> pid of the uvicorn process serve() started (CPU accounting)


@contextlib.contextmanager
def serve(database_url: str, data_dir: str, extra_env: dict[str, str] | None = None, workers: int = 1):
    """A real uvicorn server (backend.main:create_app) on a free loopback port; yields an httpx client
    for /api/v1 (reads need no token) and the port. Stopped (SIGTERM, then kill) on exit."""
    env = {
        **os.environ,
        "KLQ_DATA_DIR": data_dir,
        "KLQ_DATABASE_URL": database_url,
        "KLQ_AUTH_REQUIRED_FOR_READS": "false",
        **(extra_env or {}),
    }
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "backend.main:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--workers", str(workers)],
        env=env, cwd=ROOT, stderr=subprocess.DEVNULL,
    )
    SERVER_PIDS[port] = server.pid
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=60)
    try:
        for _ in range(600):
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"the API server exited with {server.returncode}")
            time.sleep(0.1)
        yield client, port
    finally:
        SERVER_PIDS.pop(port, None)
        client.close()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


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
        with serve(url, tmp) as (client, _port):
            per_key = args.points // args.keys
            print(f"run {run_id}: {args.keys} keys x {per_key:,} steps; max_points=500", flush=True)
            ms: list[float] = []
            for k in range(args.keys):
                ms += time_get(
                    client,
                    {"run_id": run_id, "key": f"metric/{k:02d}", "max_points": 500},
                    max(1, args.requests // args.keys),
                )
            report(f"one key ({per_key:,} points -> 500)", ms)
            report(
                f"all {args.keys} keys in one request",
                time_get(client, {"run_id": run_id, "max_points": 500}, max(5, args.requests // 10)),
            )
            report(
                "live tail (since_step = last step - 100)",
                time_get(
                    client, {"run_id": run_id, "key": "metric/00", "since_step": per_key - 101}, args.requests
                ),
            )
            report(
                f"worst case: one key with {args.points:,} points -> 500",
                time_get(client, {"run_id": single_id, "key": "loss", "max_points": 500}, 5),
            )


if __name__ == "__main__":
    main()
