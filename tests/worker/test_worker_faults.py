"""Faults with real processes: a worker SIGKILLed mid-run (the run resumes from its checkpoint on another
worker, every metric step stored exactly once), a task delivered twice (one worker trains), a Redis
restart mid-run (the run finishes and the worker keeps consuming)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from worker_testkit import Stack, make_stack, metric_steps, process_gone, wait_for

pytestmark = pytest.mark.slow

# klq.trainer.STATE_FILE: written last, so its presence marks a complete checkpoint
STATE_FILE = "trainer_state.pt"
# Iterations of a run that only a cancel ends: whatever the machine's speed, it is still going when the
# fault is injected and while the test watches it; the test cancels it once it has seen what it needs.
LONG = 100_000


def complete_checkpoints(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    return sorted(
        int(p.name.removeprefix("step-"))
        for p in root.glob("step-*")
        if re.fullmatch(r"step-\d+", p.name) and (p / STATE_FILE).exists()
    )


def assert_every_step_once(
    stack: Stack, run_id: int, n: int, eval_interval: int, *, finished: bool = True
) -> None:
    """Training metrics have each step 1..n exactly once, evaluation metrics each eval step exactly once
    (a run that finished evaluates at its last step too; a cancelled one does not)."""
    steps = metric_steps(stack, run_id)
    trained = {k: v for k, v in steps.items() if not k.startswith("system/")}
    every = list(range(1, n + 1))
    evals = [s for s in every if s % eval_interval == 0 or (finished and s == n)]
    per_iteration = [k for k, v in trained.items() if v[0] == 1]
    assert "objective/scores" in per_iteration and "loss/q_avg" in per_iteration, sorted(trained)
    for key, got in trained.items():
        assert got == (every if key in per_iteration else evals), (key, got)
    # system metrics are sampled by the supervising worker between iterations: never beyond the run
    assert all(0 <= s <= n for k, v in steps.items() if k.startswith("system/") for s in v)
    with stack.db.session() as session:
        samples = session.execute(
            text(
                "SELECT step, COUNT(*) FROM samples WHERE run_id = :r AND kind = 'eval' GROUP BY step ORDER BY step"
            ),
            {"r": run_id},
        ).all()
        train_steps = session.execute(
            text("SELECT DISTINCT step FROM samples WHERE run_id = :r AND kind = 'train'"), {"r": run_id}
        ).scalars()
        assert set(train_steps) <= set(every)  # training rollouts' token records: only of iterations trained
    assert [tuple(r) for r in samples] == [(s, 8) for s in evals]


def cancel(stack: Stack, client, run_id: int) -> dict:
    r = client.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"], r.text
    run = stack.wait_status(client, run_id, ("succeeded", "failed", "cancelled"), 300)
    assert run["status"] == "cancelled", (run, stack.diagnostics(run_id))
    return run


def test_sigkilled_worker_run_resumes_from_checkpoint(stack: Stack, client, extra_workers) -> None:
    victim = stack.start_worker("kill")
    extra_workers.append(victim)
    run_id = stack.create_run(client, "kill", iterations=LONG, checkpoint_interval=2, eval_interval=2)["id"]
    run_dir = stack.run_dir(run_id)

    def past_a_checkpoint() -> bool:
        run = client.get(f"/runs/{run_id}").json()
        assert run["status"] in ("queued", "running"), (run, stack.diagnostics(run_id))
        # kill between checkpoints, so that steps after the checkpoint are logged twice (once per attempt)
        return run["iteration"] >= 3 and run["iteration"] % 2 == 1 and bool(complete_checkpoints(run_dir))

    wait_for(
        lambda: client.get(f"/runs/{run_id}").json()["status"] == "running", 300, "the run to start", 0.05
    )
    # A second run queued behind it: the busy worker must leave its message in the broker (no prefetch),
    # or that message would die with the worker and the run would stay queued for ever.
    behind = stack.create_run(client, "kill", iterations=1, checkpoint_interval=1)["id"]
    wait_for(past_a_checkpoint, 300, f"run {run_id} to pass a checkpoint", interval=0.05)
    assert len(re.findall(r"Task klq\.train_run\[[0-9a-f-]+\] received", victim.log())) == 1, victim.log()
    trainers = victim.train_processes()
    assert len(trainers) == 1, trainers
    victim.kill_group()
    killed_at = time.time()
    # PR_SET_PDEATHSIG: the training process (in a process group of its own) dies with its worker
    wait_for(lambda: process_gone(trainers[0]), 10, "the killed worker's training process to exit", 0.05)
    resume_from = complete_checkpoints(run_dir)[-1]
    with stack.db.session() as session:
        iteration_at_kill = session.execute(
            text("SELECT iteration FROM runs WHERE id = :r"), {"r": run_id}
        ).scalar_one()
    assert 2 <= resume_from <= iteration_at_kill
    with stack.db.write_session() as session:  # as if it died between writing the checkpoint and recording it
        session.execute(
            text("DELETE FROM checkpoints WHERE run_id = :r AND step = :s"), {"r": run_id, "s": resume_from}
        )
        session.commit()
    assert client.get(f"/runs/{run_id}").json()["status"] == "running"  # nobody has noticed yet

    # A new worker: a reaper (its own, or the shared worker's) re-queues the run once its heartbeat is
    # older than KLQ_LEASE_TIMEOUT, and the new worker takes it and resumes from the checkpoint.
    rescuer = stack.start_worker("kill")
    extra_workers.append(rescuer)

    def resumed_past_the_kill() -> bool:
        run = client.get(f"/runs/{run_id}").json()
        assert run["status"] in ("queued", "running"), (run, stack.diagnostics(run_id))
        # the second attempt re-logged the steps after its checkpoint, and went on past the kill
        return run["attempts"] == 2 and run["iteration"] >= iteration_at_kill + 2

    wait_for(resumed_past_the_kill, 300, f"run {run_id} to resume past iteration {iteration_at_kill}")
    run = cancel(stack, client, run_id)
    n = run["iteration"]
    assert run["attempts"] == 2 and n >= iteration_at_kill + 2 and run["error"] is None
    reaped = [w for w in stack.workers if f"run {run_id}: its worker stopped sending heartbeats" in w.log()]
    assert len(reaped) == 1, stack.diagnostics(run_id)
    assert f"run {run_id}: training on" in rescuer.log()

    log = stack.train_log(run_id)
    assert log.count("training in") == 2 and "resume=False" in log and "resume=True" in log, log
    assert f"cancelled after {n} iterations" in log

    assert_every_step_once(stack, run_id, n, eval_interval=2, finished=False)
    # Steps up to the checkpoint are the first attempt's, the rest were (re)written by the second one:
    # it resumed from exactly that checkpoint.
    with stack.db.session() as session:
        walls = dict(
            session.execute(
                text("SELECT step, wall_time FROM metrics WHERE run_id = :r AND key = 'objective/scores'"),
                {"r": run_id},
            ).all()
        )
    assert all(walls[s] < killed_at for s in range(1, resume_from + 1))
    assert all(walls[s] > killed_at for s in range(resume_from + 1, n + 1))

    checkpoints = client.get(f"/runs/{run_id}/checkpoints").json()
    # every second step (the deleted row recorded again from its files), and the step it was cancelled at
    assert [c["step"] for c in checkpoints] == sorted({*range(2, n + 1, 2), n})
    assert not [c for c in checkpoints if c["is_final"]]
    behind_run = stack.wait_status(client, behind, ("succeeded", "failed", "cancelled"), 300)
    assert behind_run["status"] == "succeeded" and behind_run["attempts"] == 1, behind_run


def test_task_delivered_twice_trains_once(stack: Stack, client, extra_workers) -> None:
    first = stack.start_worker("dup", wait=False)
    second = stack.start_worker("dup", wait=False)
    extra_workers.extend([first, second])
    for w in (first, second):
        stack.wait_ready(w)
    run_id = stack.create_run(client, "dup", iterations=LONG, checkpoint_interval=5)["id"]  # delivery 1
    stack.send_task("klq.train_run", run_id, "dup")  # delivery 2 of the same task

    skip = f"run {run_id} is finished, cancelled or owned by a live worker: nothing to do"
    trainers_seen: set[int] = set()
    skipped_while_running = False

    def skipped_and_trained() -> bool:
        nonlocal skipped_while_running
        for w in (first, second):
            trainers_seen.update(p.pid for p in w.train_processes())
        skipped = skip in first.log() + second.log()
        run = client.get(f"/runs/{run_id}").json()
        assert run["status"] in ("queued", "running"), (run, stack.diagnostics(run_id))
        skipped_while_running |= skipped and run["status"] == "running"
        return skipped_while_running and run["iteration"] >= 2

    wait_for(skipped_and_trained, 300, f"the duplicate of run {run_id} to be skipped while it trains", 0.1)
    run = cancel(stack, client, run_id)
    assert run["attempts"] == 1, (run, stack.diagnostics(run_id))
    n = run["iteration"]

    received = re.compile(r"Task klq\.train_run\[[0-9a-f-]+\] received")
    wait_for(
        lambda: first.log().count(skip) + second.log().count(skip) == 1, 60, "the duplicate to be skipped"
    )
    trained = [w for w in (first, second) if f"run {run_id}: training on" in w.log()]
    assert len(trained) == 1, stack.diagnostics(run_id)
    # The busy worker takes no second message, so the idle one got the duplicate while the run was
    # trained, and found the lease held by a live worker.
    assert skip not in trained[0].log() and skipped_while_running, stack.diagnostics(run_id)
    assert len(received.findall(first.log() + second.log())) == 2  # both deliveries reached a worker
    assert len(trainers_seen) == 1  # one training process in all
    log = stack.train_log(run_id)
    assert log.count("training in") == 1 and f"cancelled after {n} iterations" in log
    assert_every_step_once(stack, run_id, n, eval_interval=2, finished=False)


@pytest.mark.postgres
@pytest.mark.redis
def test_redis_restart_mid_run(tmp_path_factory, worker_assets, private_redis) -> None:
    gen = make_stack(
        "private-redis",
        "postgres",
        tmp_path_factory.mktemp("stack-private-redis"),
        worker_assets,
        broker_url=private_redis.url,
    )
    stack = next(gen)
    try:
        worker = stack.start_worker("main")
        with stack.client() as client:
            run_id = stack.create_run(client, iterations=LONG, checkpoint_interval=4)["id"]
            wait_for(
                lambda: client.get(f"/runs/{run_id}").json()["iteration"] >= 2, 300, f"run {run_id} to start"
            )
            private_redis.kill()
            time.sleep(1.0)  # a short outage (no assertion depends on its length)
            private_redis.start()  # same port, empty (no persistence)
            restarted_at = client.get(f"/runs/{run_id}").json()["iteration"]

            def trained_on() -> bool:
                run = client.get(f"/runs/{run_id}").json()
                assert run["status"] == "running", (run, stack.diagnostics(run_id))
                return run["iteration"] >= restarted_at + 2

            wait_for(trained_on, 300, f"run {run_id} to train on after the restart")
            run = cancel(stack, client, run_id)
            assert run["attempts"] == 1
            assert_every_step_once(stack, run_id, run["iteration"], eval_interval=2, finished=False)

            # Both the API (producer) and the worker (consumer) reconnected: a new run goes through.
            after = stack.create_run(client, iterations=1, checkpoint_interval=1)["id"]
            run = stack.wait_status(client, after, ("succeeded", "failed", "cancelled"), 300)
            assert run["status"] == "succeeded", (run, stack.diagnostics(after))
            assert worker.alive()
    finally:
        next(gen, None)
