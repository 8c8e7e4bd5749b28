"""Metric store throughput: this project's data-access layer against MLflow's tracking store.

    python bench/metrics_store.py                 # SQLite + PostgreSQL (if reachable) + MLflow
    python bench/metrics_store.py --quick         # 1/10 of the points, for a smoke run

Ingest: `--keys` x `--steps` points (default 20 x 50,000 = 1,000,000) of the same deterministic values
(`point_value`) go
  - through backend.store.write_metrics into SQLite (WAL, a fresh file) and PostgreSQL (a fresh database
    created and dropped here; --pg-url names the server), and
  - through MlflowClient().log_batch into MLflow's SQLite store (bench/.venv-mlflow, a subprocess),
in two ways each:
  per step  one call (one transaction) per training step with its 20 points: what klq's worker sink does
            (worker/sink.py: one write_metrics per iteration) and what mlflow.log_metrics does in a loop;
            timed on the first `--per-step-steps` steps (MLflow needs ~1 minute per 1,000 steps here)
  bulk      the whole 1,000,000 points in calls of `--bulk-steps` steps: 50 steps (1,000 points, the
            most MLflow's log_batch takes per call) for both, and 500 steps (10,000 points) for ours.
Reads, on the 1,000,000-point run: a 500-point downsampled series of one key (50,000 points), p50/p95
  - ours through the API's path in process (store.plot_points, as routers/metrics.py) and over HTTP from a
    real uvicorn server with its response cache off (GET /api/v1/metrics/series?max_points=500), also for
    one key holding all the points (--one-key, default on: the 1,000,000-point case),
  - MLflow's MlflowClient.get_metric_history (it has no server-side downsampling: all 50,000 points).
"""

from __future__ import annotations

import math


def point_value(k: int, step: int) -> float:
    """The value of key k at `step`, identical on both sides (no RNG state to keep in sync)."""
    return math.sin(step / 500 + k) + ((step * 7919 + k * 104729) % 1000) / 10000


# Everything below runs in the project's venv only (mlflow_runner.py imports just point_value).

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _rows(keys: int, steps: range) -> list[tuple[str, int, float, float]]:
    return [(f"metric/{k:02d}", step, point_value(k, step), 1.7e9 + step) for step in steps for k in range(keys)]


def ingest_ours(url: str, keys: int, steps: int, per_call_steps: int, name: str) -> dict:
    """write_metrics in calls of `per_call_steps` steps, each call its own transaction (commit)."""
    from backend import store
    from backend.db import Database

    db = Database(url)
    with db.write_session() as s:
        run_id = store.create_run(s, {"name": name}).id
    batches = [_rows(keys, range(start, min(steps, start + per_call_steps)))
               for start in range(0, steps, per_call_steps)]
    t0 = time.perf_counter()
    for rows in batches:
        with db.write_session() as s:
            store.write_metrics(s, run_id, rows)  # commits
    seconds = time.perf_counter() - t0
    db.dispose()
    points = keys * steps
    return {"run_id": run_id, "points": points, "calls": len(batches), "ingest_s": seconds,
            "points_per_s": points / seconds}


def reads_in_process(url: str, run_id: int, keys: int, n: int, max_points: int = 500) -> list[float]:
    """The series endpoint's work without HTTP (store.plot_points, as routers/metrics.py), one key per read."""
    from backend import store
    from backend.db import Database

    db = Database(url)
    out = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        with db.session() as s:
            pp = store.plot_points(s, run_id, f"metric/{i % keys:02d}", max_points=max_points)
        if i:
            out.append((time.perf_counter() - t0) * 1000)
        assert len(pp.points) <= max_points
    db.dispose()
    return out


def reads_http(url: str, data_dir: str, run_id: int, keys: int, n: int) -> list[float]:
    from series_http import serve, time_get

    ms: list[float] = []
    # without the API's response cache: every request reads the store (the cache would answer repeats of
    # the same URL from memory while nothing is written; api_load measures that)
    with serve(url, data_dir, {"KLQ_RESPONSE_CACHE_ENTRIES": "0"}) as (client, _port):
        per_key = max(1, n // keys)
        for k in range(keys):
            ms += time_get(client, {"run_id": run_id, "key": f"metric/{k:02d}", "max_points": 500}, per_key)
    return ms


def _mlflow(args, db_file: Path, steps: int, per_call_steps: int, reads: int) -> dict:
    python = HERE / ".venv-mlflow" / "bin" / "python"
    cmd = [str(python), str(HERE / "mlflow_runner.py"), "--db", str(db_file), "--keys", str(args.keys),
           "--steps", str(steps), "--per-call-steps", str(per_call_steps), "--reads", str(reads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(db_file.parent),
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
    raise SystemExit(f"MLflow runner failed (exit {proc.returncode})")


class PostgresDatabase:
    """A fresh database on the server of `admin_url`, dropped on exit."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"klq_bench_{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> str:
        import sqlalchemy as sa

        self.engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with self.engine.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        base = self.admin_url.rsplit("/", 1)[0] if self.admin_url.count("/") > 2 else self.admin_url
        return f"{base}/{self.name}"

    def __exit__(self, *exc) -> None:
        with self.engine.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.engine.dispose()


def _pg_reachable(admin_url: str) -> str | None:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(admin_url, connect_args={"connect_timeout": 3})
        with engine.connect() as c:
            version = c.exec_driver_sql("SHOW server_version").scalar()
        engine.dispose()
        return str(version)
    except Exception as err:  # noqa: BLE001 - any failure means "skip PostgreSQL", with the reason
        print(f"PostgreSQL at {admin_url} not reachable ({type(err).__name__}): skipped", flush=True)
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=20)
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--per-step-steps", type=int, default=1_000, help="steps timed in the per-step mode")
    p.add_argument("--reads", type=int, default=100, help="timed series reads per case")
    p.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                   help="admin URL of a PostgreSQL server ('' to skip)")
    p.add_argument("--skip-mlflow", action="store_true")
    p.add_argument("--one-key", action=argparse.BooleanOptionalAction, default=True,
                   help="also write all the points into one key of another run and time its reads")
    p.add_argument("--quick", action="store_true", help="1/10 of the steps")
    p.add_argument("--json", help="also write the raw results here")
    a = p.parse_args()
    if a.quick:
        a.steps //= 10
        a.per_step_steps = min(a.per_step_steps, a.steps // 5)
        a.reads = min(a.reads, 40)
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    from common import machine as _machine
    from common import percentile

    from backend import migrate

    if not a.skip_mlflow and not (HERE / ".venv-mlflow" / ".ready").exists():
        print("setting up MLflow's virtual environment (bench/setup_peer.sh mlflow) ...", flush=True)
        subprocess.run(["bash", str(HERE / "setup_peer.sh"), "mlflow"], check=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    points = a.keys * a.steps
    results: dict[str, dict] = {}
    reads: dict[str, list[float]] = {}
    pg_version = _pg_reachable(a.pg_url) if a.pg_url else None

    def ours(label: str, url: str, data_dir: str) -> None:
        migrate.upgrade(url)
        print(f"{label}: per step ({a.per_step_steps:,} steps) ...", flush=True)
        results[f"{label} per step"] = ingest_ours(url, a.keys, a.per_step_steps, 1, "per-step")
        for per_call in (50, 500):
            print(f"{label}: bulk {points:,} points, {per_call} steps per call ...", flush=True)
            results[f"{label} bulk/{per_call}"] = r = ingest_ours(url, a.keys, a.steps, per_call, f"bulk-{per_call}")
        run_id = r["run_id"]
        print(f"{label}: reads ...", flush=True)
        reads[f"{label} in process"] = reads_in_process(url, run_id, a.keys, a.reads)
        reads[f"{label} HTTP"] = reads_http(url, data_dir, run_id, a.keys, a.reads)
        if a.one_key:
            print(f"{label}: one key of {points:,} points (bulk, 10,000 per call), reads ...", flush=True)
            one = ingest_ours(url, 1, points, 10_000, "one-key")
            results[f"{label} one key/10000"] = one
            reads[f"{label} in process, 1 key"] = reads_in_process(url, one["run_id"], 1, a.reads)
            reads[f"{label} HTTP, 1 key"] = reads_http(url, data_dir, one["run_id"], 1, a.reads)

    with tempfile.TemporaryDirectory(prefix="klq-bench-store-") as tmp:
        ours("SQLite", f"sqlite:///{Path(tmp) / 'klq.db'}", tmp)
        if pg_version:
            with PostgresDatabase(a.pg_url) as url:
                ours("PostgreSQL", url, tmp)
        if not a.skip_mlflow:
            print(f"MLflow: per step ({a.per_step_steps:,} steps) ...", flush=True)
            results["MLflow per step"] = _mlflow(a, Path(tmp) / "mlflow-step.db", a.per_step_steps, 1, 0)
            print(f"MLflow: bulk {points:,} points, 50 steps (1,000 points) per call, then reads ...", flush=True)
            results["MLflow bulk/50"] = m = _mlflow(a, Path(tmp) / "mlflow-bulk.db", a.steps, 50, min(a.reads, 20))
            reads["MLflow get_metric_history"] = []
            results["MLflow reads"] = {k: m.get(k) for k in ("read_p50_ms", "read_p95_ms", "history_points")}

    print()
    print(f"# metrics_store  {started}  {_machine()}")
    print(f"{a.keys} keys x {a.steps:,} steps = {points:,} points; per-step mode timed on the first "
          f"{a.per_step_steps:,} steps ({a.keys * a.per_step_steps:,} points); PostgreSQL "
          f"{pg_version or 'skipped'}; MLflow {results.get('MLflow bulk/50', {}).get('mlflow', 'skipped')}")
    print()
    print(f"{'ingest':<26} {'points':>10} {'calls':>7} {'seconds':>9} {'points/s':>11}")
    for name, r in results.items():
        if "points_per_s" in r:
            print(f"{name:<26} {r['points']:>10,} {r['calls']:>7,} {r['ingest_s']:>9.2f} {r['points_per_s']:>11,.0f}")
    print()
    for mode, mkey in (("per step", "MLflow per step"), ("bulk/50", "MLflow bulk/50")):
        if mkey not in results:
            continue
        for db in ("SQLite", "PostgreSQL"):
            key = f"{db} {mode}"
            if key in results:
                ratio = results[key]["points_per_s"] / results[mkey]["points_per_s"]
                print(f"ingest ratio {key:<22} / {mkey:<16}: {ratio:7.1f}x   (goal >= 10x)")
    print()
    print(f"500-point series of one {a.steps:,}-point key (', 1 key': of the one {points:,}-point key)")
    print(f"{'':<40} {'p50 ms':>8} {'p95 ms':>8} {'n':>5}")
    for name, ms in reads.items():
        if ms:
            print(f"{name:<40} {statistics.median(ms):8.1f} {percentile(ms, 0.95):8.1f} {len(ms):>5}   (goal p95 < 50 ms)")
    if "MLflow reads" in results:
        m = results["MLflow reads"]
        print(f"{'MLflow get_metric_history (all points)':<40} {m['read_p50_ms']:8.1f} {m['read_p95_ms']:8.1f} "
              f"{min(a.reads, 20):>5}   ({m['history_points']:,} points, no downsampling)")
    if a.json:
        Path(a.json).write_text(json.dumps({"started": started, "machine": _machine(), "args": vars(a),
                                            "results": results, "reads_ms": reads}, indent=2))


if __name__ == "__main__":
    main()
