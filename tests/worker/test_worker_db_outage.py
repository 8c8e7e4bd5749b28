"""A database outage in the middle of a run, with real processes: a Celery worker (Redis broker) training a
run on a private PostgreSQL server that the test stops and starts again.

* A restart shorter than the retry budget: the training process waits and retries its writes, the worker
  keeps its child and its lease (heartbeats fail, then resume), and the run succeeds in one attempt with
  every metric step stored exactly once.
* An outage longer than KLQ_DB_RETRY_TIMEOUT: the run fails, and its reason says so.

The training process is paused (SIGSTOP) while the database goes down, so the outage always falls in the
middle of the run whatever the machine's speed; leases are long (60 s) so that no takeover (fencing, tested
elsewhere) can happen during the outage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from test_worker_faults import assert_every_step_once
from worker_testkit import REDIS_URL, Stack, make_stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

TERMINAL = ("succeeded", "failed", "cancelled")
LONG_LEASE = {"KLQ_LEASE_TIMEOUT": "60"}
OUTAGE_S = 5.0  # the least time the database stays down in the restart test (many heartbeat intervals)


@pytest.fixture
def outage_stack(tmp_path_factory, worker_assets, private_postgres, redis_prefix) -> Iterator[Stack]:
    """A stack on the private PostgreSQL server, with the shared Redis as broker (a private key prefix)."""
    gen = make_stack(
        "db-outage",
        "postgres",
        tmp_path_factory.mktemp("stack-db-outage"),
        worker_assets,
        broker_url=REDIS_URL,
        redis_prefix=redis_prefix,
        database_url=private_postgres.url,
    )
    stack = next(gen)
    try:
        yield stack
    finally:
        next(gen, None)


def _stop_database_mid_run(stack: Stack, client, worker, private_postgres, run_id: int, n: int):
    """Once the run has logged two iterations: pause its training process, stop the database, resume the
    process. Returns (the training process, the time the database went down)."""
    wait_for(
        lambda: client.get(f"/runs/{run_id}").json()["iteration"] >= 2, 120, f"run {run_id} to train", 0.05
    )
    trainers = worker.train_processes()
    assert len(trainers) == 1, (trainers, stack.diagnostics(run_id))
    trainer = trainers[0]
    trainer.suspend()
    try:
        run = client.get(f"/runs/{run_id}").json()
        assert run["status"] == "running" and run["iteration"] < n, run
        down_at = time.monotonic()
        private_postgres.stop()
    finally:
        trainer.resume()
    return trainer, down_at


def test_database_restart_mid_run(outage_stack: Stack, private_postgres) -> None:
    stack = outage_stack
    worker = stack.start_worker("main", env={**LONG_LEASE, "KLQ_DB_RETRY_TIMEOUT": "300"})
    n = 30
    with stack.client() as client:
        run_id = stack.create_run(client, iterations=n, checkpoint_interval=5, eval_interval=2)["id"]
        trainer, down_at = _stop_database_mid_run(stack, client, worker, private_postgres, run_id, n)
        worker_log_at = len(worker.log())
        # Both sides notice: the training process retries a write, the worker's heartbeat fails.
        wait_for(
            lambda: "the database is unreachable" in stack.train_log(run_id),
            60,
            "the training process to retry a write",
        )
        wait_for(
            lambda: "heartbeat failed, the database is unreachable" in worker.log(worker_log_at),
            60,
            "the worker's heartbeat to fail",
        )
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        assert trainer.is_running() and worker.alive()  # nobody gave up on the run during the outage
        private_postgres.start()
        outage = time.monotonic() - down_at

        run = stack.wait_status(client, run_id, TERMINAL, 300)
        assert run["status"] == "succeeded", (run, stack.diagnostics(run_id))
        assert run["attempts"] == 1 and run["iteration"] == n and run["error"] is None, run
        log = stack.train_log(run_id)
        assert log.count("training in") == 1 and f"succeeded after {n} iterations" in log, log
        assert "done, the database is back" in log, log
        assert "lease lost" not in worker.log(), worker.log()
        assert worker.log().count(f"run {run_id}: training on") == 1
        assert_every_step_once(stack, run_id, n, eval_interval=2)
        checkpoints = client.get(f"/runs/{run_id}/checkpoints").json()
        assert [c["step"] for c in checkpoints] == list(range(5, n + 1, 5))
        print(f"\ndatabase down for {outage:.1f} s; run {run_id}: {n} steps, each stored once, 1 attempt")


def test_database_outage_longer_than_retry_timeout_fails_run(outage_stack: Stack, private_postgres) -> None:
    stack = outage_stack
    worker = stack.start_worker("main", env={**LONG_LEASE, "KLQ_DB_RETRY_TIMEOUT": "8"})
    n = 30
    with stack.client() as client:
        run_id = stack.create_run(client, iterations=n, checkpoint_interval=5)["id"]
        _stop_database_mid_run(stack, client, worker, private_postgres, run_id, n)
        # The database stays down until the training process has given up; its outcome is recorded once
        # the database is back (that write has the same budget, 8 s, counted from the give-up).
        wait_for(
            lambda: "DatabaseUnavailable" in stack.train_log(run_id), 120, "the training process to give up"
        )
        private_postgres.start()
        run = stack.wait_status(client, run_id, TERMINAL, 120)
        assert run["status"] == "failed", (run, stack.diagnostics(run_id))
        assert run["error"].startswith(
            "the database was unreachable for more than 8 s (KLQ_DB_RETRY_TIMEOUT) while writing"
        ), run["error"]
        assert run["attempts"] == 1, run
        assert worker.alive()
