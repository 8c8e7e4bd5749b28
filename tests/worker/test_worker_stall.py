"""A hung training process is noticed: a real child stopped by SIGSTOP logs no iteration for
KLQ_STALL_TIMEOUT_S, so its worker SIGKILLs it (a stopped process ignores SIGTERM) and re-queues the run,
which resumes from its last checkpoint; a child killed outright (as by the OOM killer) is retried the same
way; after KLQ_MAX_ATTEMPTS attempts the run fails with a reason that says what happened."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from worker_testkit import Stack, process_gone, wait_for

pytestmark = pytest.mark.slow

# Generous against a loaded 2-core machine: a tiny iteration takes well under a second.
STALL_TIMEOUT_S = 12
STALL_ENV = {"KLQ_STALL_TIMEOUT_S": str(STALL_TIMEOUT_S), "KLQ_MAX_ATTEMPTS": "3"}


def run_row(stack: Stack, run_id: int) -> dict:
    with stack.db.session() as session:
        row = session.execute(
            text(
                "SELECT status, iteration, attempts, lease_owner, progress_at, last_error, error FROM runs "
                "WHERE id = :r"
            ),
            {"r": run_id},
        ).one()
    return dict(row._mapping)


def _database_locked(stack: Stack, run_id: int) -> bool:
    """Whether a writer would have to wait: the stopped child is inside a write transaction."""
    if stack.server.kind == "sqlite":
        path = stack.server.database_url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, timeout=0.5, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    with stack.db.write_session() as session:
        try:
            session.execute(text("SELECT id FROM runs WHERE id = :r FOR UPDATE NOWAIT"), {"r": run_id})
            return False
        except OperationalError:
            return True
        finally:
            session.rollback()


def hang(stack: Stack, proc, run_id: int) -> None:
    """SIGSTOP the training process at a moment it holds no database lock. (One stopped inside its write
    transaction blocks every writer; the supervisor bounds its lock waits and still kills it, but other
    workers' reapers may then see a stale heartbeat first and re-queue the run by the other path, which
    this test does not mean to exercise.)"""
    for _ in range(100):
        os.kill(proc.pid, signal.SIGSTOP)
        if not _database_locked(stack, run_id):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the training process was inside a transaction every time it was stopped")


def the_trainer(worker, attempt: int):
    procs = wait_for(worker.train_processes, 60, f"the training process of attempt {attempt}")
    assert len(procs) == 1, procs
    return procs[0]


def test_hung_training_is_killed_and_resumed_then_fails_after_max_attempts(
    stack: Stack, client, extra_workers
) -> None:
    worker = stack.start_worker("stall", env=STALL_ENV)
    extra_workers.append(worker)
    run_id = stack.create_run(client, "stall", iterations=100_000, checkpoint_interval=2, eval_interval=2)["id"]
    run_dir = stack.run_dir(run_id)

    def progressed(attempt: int, beyond: int = 0):
        """The attempt has logged an iteration of its own (progress_at is reset when a worker claims the
        run), beyond `beyond`, and a checkpoint exists."""

        def check() -> bool:
            row = run_row(stack, run_id)
            assert row["status"] in ("queued", "running"), (row, stack.diagnostics(run_id))
            assert row["attempts"] <= attempt, (row, stack.diagnostics(run_id))
            has_checkpoint = any((run_dir / "checkpoints").glob("step-*/trainer_state.pt"))
            return (
                row["attempts"] == attempt
                and row["progress_at"] is not None
                and row["iteration"] > beyond
                and has_checkpoint
            )

        return check

    # attempt 1: the process hangs after a checkpoint
    wait_for(progressed(1, beyond=2), 120, f"run {run_id} to pass a checkpoint")
    first = the_trainer(worker, 1)
    hang(stack, first, run_id)
    hung_at = run_row(stack, run_id)["iteration"]
    wait_for(lambda: process_gone(first), 6 * STALL_TIMEOUT_S, "the hung process to be killed")
    row = wait_for(
        lambda: (r := run_row(stack, run_id))["attempts"] == 2 and r["status"] == "running" and r, 60, "attempt 2"
    )
    assert row["last_error"].startswith(
        f"attempt 1: no progress for {STALL_TIMEOUT_S} s at iteration {hung_at}; last lines of its log:"
    ), row
    assert f"run {run_id}: no progress for {STALL_TIMEOUT_S} s at iteration {hung_at}: killing" in worker.log()

    # attempt 2 resumes from the checkpoint; its process is killed outright (as the OOM killer would)
    wait_for(progressed(2), 120, f"run {run_id} to progress in attempt 2")
    second = the_trainer(worker, 2)
    assert second.pid != first.pid
    second.kill()
    row = wait_for(
        lambda: (r := run_row(stack, run_id))["attempts"] == 3 and r["status"] == "running" and r, 60, "attempt 3"
    )
    assert re.match(
        r"attempt 2: the training process exited with code -9 \(killed by SIGKILL: out of memory\?\) "
        r"at iteration \d+; last lines of its log:",
        row["last_error"],
    ), row

    # attempt 3 hangs too: the run fails, saying what happened, instead of being retried for ever
    wait_for(progressed(3), 120, f"run {run_id} to progress in attempt 3")
    third = the_trainer(worker, 3)
    hang(stack, third, run_id)
    hung_at = run_row(stack, run_id)["iteration"]
    run = stack.wait_status(client, run_id, ("failed", "succeeded", "cancelled"), 6 * STALL_TIMEOUT_S)
    assert run["status"] == "failed", run
    assert run["error"].startswith(
        f"no progress for {STALL_TIMEOUT_S} s at iteration {hung_at}; stopped after 3 attempts; "
        "last lines of its log:\n"
    ), run["error"]
    assert run["attempts"] == 3 and run["last_error"].startswith("attempt 3: no progress"), run
    assert process_gone(third)
    log = stack.train_log(run_id)
    assert log.count("training in") == 3 and "resume=False" in log and log.count("resume=True") == 2, log
    assert worker.alive()
    with contextlib.suppress(ProcessLookupError):  # nothing is left stopped
        os.kill(third.pid, signal.SIGCONT)
