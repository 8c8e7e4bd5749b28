"""A queued run (and judgement) whose broker message was lost before any worker took it (Redis restarted
without AOF, a purged queue) is sent again by the reaper's reconciler (worker.tasks.redispatch_lost,
KLQ_REQUEUE_QUEUED_AFTER, 3 s in these tests) and trains exactly once. The messages are deleted straight
from the broker: the Redis list of the queue, or the message files of the filesystem transport."""

from __future__ import annotations

import ast
import subprocess
import sys
import time

import pytest
from test_worker_faults import assert_every_step_once
from test_worker_runs import create_judgement, two_finished_runs, wait_judgement
from worker_testkit import REDIS_URL, REPO, Stack, wait_for

pytestmark = pytest.mark.slow


def delete_messages(stack: Stack, queue: str, *, keep: bool = False) -> int:
    """Delete every message waiting in `queue` (keep=True: only count them); returns how many there were."""
    if stack.redis_prefix is None:  # kombu's filesystem transport: one file <time>_<uuid>.<queue>.msg each
        files = list((stack.data_dir / "broker" / "messages").glob(f"*.{queue}.msg"))
        for path in files if not keep else []:
            path.unlink()
        return len(files)
    import redis

    conn = redis.Redis.from_url(REDIS_URL)
    try:
        key = stack.redis_prefix + queue  # the queue's list, under the stack's global_keyprefix
        count = conn.llen(key)
        if not keep:
            conn.delete(key)
        return count
    finally:
        conn.close()


def resends(stack: Stack, what: str, object_id: int) -> int:
    marker = f"{what} {object_id}: queued for over"
    return sum(w.log().count(marker) for w in stack.workers)


def test_a_lost_message_is_sent_again_and_trains_once(
    stack: Stack, client, main_worker, extra_workers
) -> None:
    run_a, run_b = two_finished_runs(stack, client)
    n = 6
    run_id = stack.create_run(client, "lost", iterations=n, checkpoint_interval=3)["id"]
    jid = create_judgement(stack, client, run_a, run_b, role="lost")
    assert delete_messages(stack, stack.queues["lost"]) == 2  # no worker listens on "lost" yet
    lost_at = time.monotonic()
    assert client.get(f"/runs/{run_id}").json()["status"] == "queued"

    worker = stack.start_worker("lost")
    extra_workers.append(worker)
    ready_at = time.monotonic()
    wait_for(
        lambda: client.get(f"/runs/{run_id}").json()["status"] != "queued",
        120,
        f"run {run_id} to leave the queue",
        interval=0.1,
    )
    started_at = time.monotonic()
    print(
        f"\n[{stack.name}] lost message -> running: {started_at - lost_at:.1f} s "
        f"(worker ready {ready_at - lost_at:.1f} s after the loss; KLQ_REQUEUE_QUEUED_AFTER=3, reap every 1 s)"
    )
    run = stack.wait_status(client, run_id, ("succeeded", "failed", "cancelled"), 180)
    assert run["status"] == "succeeded" and run["attempts"] == 1, (run, stack.diagnostics(run_id))
    assert_every_step_once(stack, run_id, n, eval_interval=2)
    log = stack.train_log(run_id)
    assert log.count("training in") == 1 and f"succeeded after {n} iterations" in log, log

    judgement = wait_judgement(stack, client, jid, timeout=180)
    assert judgement["completed"] == 16 and judgement["verdicts_total"] == 16
    # Re-sent once each: the re-sent message is then counted in the broker, so the job is not sent again
    # while it waits (a reaper pass landing between a worker's taking a message and its lease may send one
    # harmless duplicate more).
    assert 1 <= resends(stack, "run", run_id) <= 2, stack.diagnostics(run_id)
    assert 1 <= resends(stack, "judgement", jid) <= 2, stack.diagnostics(run_id)
    wait_for(worker.idle, 60, "the worker to end its tasks")
    assert worker.log().count(f"run {run_id}: training on") == 1


def reconcile_once(stack: Stack) -> list:
    """One reconciler pass (worker.tasks.redispatch_lost) in a process of its own on the stack's settings."""
    code = "from backend.settings import get_settings\nfrom worker.tasks import redispatch_lost\n"
    code += "print(redispatch_lost(get_settings()))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=stack.env, check=True, timeout=60, capture_output=True
    )
    return ast.literal_eval(out.stdout.decode().strip().splitlines()[-1])


def test_a_job_waiting_its_turn_is_not_sent_again(stack: Stack, client) -> None:
    """A queued job whose message is in the broker (no worker free; here none on its queue) is waiting,
    not lost: the reconciler leaves it alone however long it waits; once its message is gone, it is sent
    again, once per KLQ_REQUEUE_QUEUED_AFTER."""
    run_id = stack.create_run(client, "idle", iterations=1, checkpoint_interval=1)["id"]
    try:
        time.sleep(3.5)  # older than KLQ_REQUEUE_QUEUED_AFTER (3 s): a candidate from now on
        assert ("runs", run_id) not in reconcile_once(stack)
        assert client.get(f"/runs/{run_id}").json()["status"] == "queued"
        delete_messages(stack, stack.queues["idle"])
        sent = wait_for(lambda: resends(stack, "run", run_id), 30, "a reaper to send the run again")
        assert sent == 1 and ("runs", run_id) not in reconcile_once(stack)  # re-sent, and now in the broker
    finally:
        assert client.post(f"/runs/{run_id}/cancel").json()["status"] == "cancelled"
