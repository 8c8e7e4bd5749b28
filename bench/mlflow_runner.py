"""MLflow's side of bench/metrics_store.py: ingest through MlflowClient().log_batch into MLflow's SQLite
store, then time get_metric_history. Runs in bench/.venv-mlflow (bench/setup_peer.sh mlflow); prints one
line `RESULT {json}`.

The points are the same as on our side (bench/metrics_store.point_value: a deterministic function of key
and step): `--keys` keys x `--steps` steps, written one log_batch call per step (`--per-call-steps 1`,
what mlflow.log_metrics in a training loop does) or several steps per call (at most 1,000 metrics per
call: MLflow's limit for log_batch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from metrics_store import point_value  # noqa: E402  (stdlib-only helper shared with our side)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True, help="SQLite file for MLflow's tracking store")
    p.add_argument("--keys", type=int, default=20)
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--per-call-steps", type=int, default=1)
    p.add_argument("--reads", type=int, default=20, help="get_metric_history calls to time")
    a = p.parse_args()

    import logging

    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    uri = f"sqlite:///{a.db}"
    t0 = time.perf_counter()
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(f"bench-{os.getpid()}-{a.per_call_steps}")
    setup_s = time.perf_counter() - t0
    run = client.create_run(exp)
    run_id = run.info.run_id
    keys = [f"metric/{k:02d}" for k in range(a.keys)]
    if a.per_call_steps * a.keys > 1000:
        raise SystemExit("MLflow's log_batch takes at most 1000 metrics per call")
    # Build the entities before the clock starts (our side builds its tuples outside the clock too).
    batches = []
    for start in range(0, a.steps, a.per_call_steps):
        batch = []
        for step in range(start, min(a.steps, start + a.per_call_steps)):
            ts = int((1.7e9 + step) * 1000)
            batch.extend(Metric(key, point_value(k, step), ts, step) for k, key in enumerate(keys))
        batches.append(batch)
    t0 = time.perf_counter()
    for batch in batches:
        client.log_batch(run_id, metrics=batch)
    ingest_s = time.perf_counter() - t0
    points = a.steps * a.keys

    reads = []
    n_points = None
    for i in range(a.reads + 1):
        key = keys[i % len(keys)]
        t = time.perf_counter()
        history = client.get_metric_history(run_id, key)
        ms = (time.perf_counter() - t) * 1000
        if i:  # the first is a warm-up
            reads.append(ms)
        n_points = len(history)
    reads.sort()
    print("RESULT " + json.dumps({
        "mlflow": mlflow.__version__, "points": points, "calls": len(batches), "ingest_s": ingest_s,
        "points_per_s": points / ingest_s, "setup_s": setup_s, "history_points": n_points,
        "read_p50_ms": statistics.median(reads) if reads else None,
        "read_p95_ms": reads[min(len(reads) - 1, math.ceil(0.95 * len(reads)) - 1)] if reads else None,
    }), flush=True)


if __name__ == "__main__":
    main()
