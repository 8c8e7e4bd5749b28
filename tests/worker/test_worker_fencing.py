"""Fencing with a real zombie: a worker and its training (judge) process are stopped with SIGSTOP until
their lease goes stale, another worker takes the run (judgement) over and finishes it, then the stopped
training (judge) process is continued on its own, its worker still stopped so that nothing stops it
for it. Every write it then tries is refused (backend.store.LeaseLost: the lease check is in the write's
transaction), it exits without touching the outcome, and no row of the run (judgement) changes; nor when
its worker is continued too."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time

import pytest
from sqlalchemy import text
from test_worker_faults import assert_every_step_once
from test_worker_runs import create_judgement, two_finished_runs, wait_judgement
from worker_testkit import Stack, Worker, process_gone, wait_for

pytestmark = pytest.mark.slow

TERMINAL = ("succeeded", "failed", "cancelled")


def lease_owner(stack: Stack, table: str, object_id: int) -> str | None:
    with stack.db.session() as session:
        return session.execute(
            text(f"SELECT lease_owner FROM {table} WHERE id = :i"), {"i": object_id}
        ).scalar_one()


def _open_transaction(stack: Stack) -> bool:
    """Whether some connection holds a transaction open (on SQLite: the write lock)."""
    if stack.server.kind == "sqlite":
        path = stack.db.url.split("sqlite:///", 1)[1]
        conn = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:  # database is locked
            return True
        finally:
            conn.close()
    with stack.db.session() as session:
        return bool(
            session.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        )


def freeze(stack: Stack, worker: Worker, child_pid: int) -> None:
    """SIGSTOP the worker (its process group) and its training/judge process (a group of its own), at a
    moment neither is inside a database transaction: a process stopped holding the SQLite write lock or
    a PostgreSQL row lock would block the takeover itself (a transaction lasts milliseconds, so the next
    try gets it)."""
    for _ in range(100):
        for pgid in (worker.pid, child_pid):
            os.killpg(pgid, signal.SIGSTOP)
        if not any(_open_transaction(stack) for _ in range(3)):
            return
        thaw(worker.pid, child_pid)
        time.sleep(0.05)
    raise AssertionError("could not stop the worker outside a database transaction")


def thaw(*pgids: int) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGCONT)


def run_rows(stack: Stack, run_id: int) -> dict:
    """Everything a training process writes for a run (its supervisor's system/* samples aside)."""
    with stack.db.session() as session:
        q = lambda sql: [tuple(r) for r in session.execute(text(sql), {"r": run_id}).all()]  # noqa: E731
        return {
            "run": q(
                "SELECT status, lease_owner, iteration, episodes, total_iterations, error, attempts, "
                "finished_at FROM runs WHERE id = :r"
            ),
            "metrics": q(
                "SELECT key, step, value, wall_time FROM metrics WHERE run_id = :r "
                "AND key NOT LIKE 'system/%' ORDER BY key, step"
            ),
            "samples": q(
                "SELECT step, prompt_id, response, created_at FROM samples WHERE run_id = :r ORDER BY 1, 2"
            ),
            "checkpoints": q(
                "SELECT step, path, is_final, created_at FROM checkpoints WHERE run_id = :r ORDER BY 1"
            ),
        }


def judgement_rows(stack: Stack, jid: int) -> dict:
    with stack.db.session() as session:
        q = lambda sql: [tuple(r) for r in session.execute(text(sql), {"j": jid}).all()]  # noqa: E731
        return {
            "judgement": q(
                "SELECT status, lease_owner, error, completed, wins_a, wins_b, ties, invalid, win_rate, "
                "finished_at, updated_at FROM judgements WHERE id = :j"
            ),
            "verdicts": q(
                'SELECT prompt_id, "order", verdict, raw_output, created_at FROM verdicts '
                "WHERE judgement_id = :j ORDER BY 1, 2"
            ),
        }


def test_a_zombie_trainer_writes_nothing_once_its_run_was_taken_over(
    stack: Stack, client, extra_workers
) -> None:
    n = 100_000  # iterations: only the rescuer's cancel ends it, however fast the machine trains
    zombie = stack.start_worker("fence")
    extra_workers.append(zombie)
    run_id = stack.create_run(client, "fence", iterations=n, checkpoint_interval=2, eval_interval=2)["id"]
    wait_for(
        lambda: client.get(f"/runs/{run_id}").json()["iteration"] >= 3, 120, f"run {run_id} to train", 0.05
    )
    owner = lease_owner(stack, "runs", run_id)
    (trainer,) = zombie.train_processes()
    freeze(stack, zombie, trainer.pid)
    try:
        stopped_at = client.get(f"/runs/{run_id}").json()["iteration"]
        assert stopped_at < n, "the run ended before its worker was stopped: make it longer"

        rescuer = stack.start_worker("fence")  # its reaper re-queues the run once the lease is stale
        extra_workers.append(rescuer)
        wait_for(
            lambda: lease_owner(stack, "runs", run_id) not in (None, owner)
            and client.get(f"/runs/{run_id}").json()["iteration"] >= stopped_at + 2,
            180,
            f"run {run_id} to be taken over and trained on by the rescuer",
        )
        assert client.post(f"/runs/{run_id}/cancel").status_code == 200  # ended by its new owner
        run = stack.wait_status(client, run_id, TERMINAL, 180)
        assert run["status"] == "cancelled" and run["attempts"] == 2, (run, stack.diagnostics(run_id))
        n = run["iteration"]
        assert lease_owner(stack, "runs", run_id) is None
        before = run_rows(stack, run_id)

        thaw(trainer.pid)  # the zombie goes on with its iteration; its worker, stopped, cannot stop it
        wait_for(lambda: process_gone(trainer), 120, "the zombie training process to exit")
        assert run_rows(stack, run_id) == before  # no metric, sample, checkpoint or progress written
        log = stack.train_log(run_id)
        # a refused write (LeaseLost), or a refused outcome if it was stopped mid-checkpoint and then
        # failed on the files the new owner moved (its own step-N.tmp-PID was removed by the resume)
        refused = (
            f"run {run_id} is no longer leased by {owner!r}: write refused",
            f"run {run_id}: this worker no",
            f"run {run_id} is now leased by ",  # seen first at an iteration boundary or before a checkpoint
        )
        assert any(line in log for line in refused), log[-3000:]
    finally:
        thaw(zombie.pid, trainer.pid)
    wait_for(zombie.idle, 60, "the zombie worker to end its task")  # its heartbeat finds the lease gone
    assert run_rows(stack, run_id) == before
    assert f"run {run_id}: training on" in rescuer.log()
    assert stack.train_log(run_id).count(f"run {run_id} cancelled after ") == 1  # set by the new owner
    assert_every_step_once(stack, run_id, n, eval_interval=2, finished=False)


def test_a_zombie_judge_writes_nothing_once_its_judgement_was_taken_over(
    stack: Stack, client, extra_workers
) -> None:
    run_a, run_b = two_finished_runs(stack, client)
    zombie = stack.start_worker("fence")
    extra_workers.append(zombie)
    jid = create_judgement(stack, client, run_a, run_b, role="fence")
    (judge,) = wait_for(zombie.train_processes, 60, f"judgement {jid}'s process to start", interval=0.05)
    wait_for(lambda: lease_owner(stack, "judgements", jid), 30, "the judge to hold the lease")
    freeze(stack, zombie, judge.pid)  # while it starts up: before it judged anything
    try:
        assert client.get(f"/judgements/{jid}").json()["completed"] == 0

        rescuer = stack.start_worker("fence")
        extra_workers.append(rescuer)
        judgement = wait_judgement(stack, client, jid, timeout=180)
        assert judgement["completed"] == 16
        before = judgement_rows(stack, jid)
        assert before["judgement"][0][:2] == ("succeeded", None) and len(before["verdicts"]) == 16

        thaw(judge.pid)  # it loads, generates and judges, then tries to save its verdicts and outcome
        wait_for(lambda: process_gone(judge), 180, "the zombie judge process to exit")
        assert judgement_rows(stack, jid) == before  # no verdict, count or status written
        log = (stack.data_dir / "judgements" / str(jid) / "judge.log").read_text()
        assert f"judgement {jid}: this worker no longer holds its lease" in log, log[-3000:]
    finally:
        thaw(zombie.pid, judge.pid)
    wait_for(zombie.idle, 60, "the zombie worker to end its task")
    assert judgement_rows(stack, jid) == before
