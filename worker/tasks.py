"""Celery tasks: `klq.train_run(run_id)` and `klq.run_judgement(judgement_id)`.

Delivery and ownership. Tasks are acknowledged early (on receipt) and ownership lives in the database:
a task first takes the run's lease (one conditional UPDATE), so a task delivered twice trains once; while
the job runs, this process renews the lease every `heartbeat_interval` seconds. If a worker dies, its
runs' heartbeats go stale and any live worker's reaper re-queues them (`requeue_stale_runs`) and sends
the task again; the new owner resumes from the last checkpoint. Late acks were the alternative, but a
Redis visibility timeout longer than the longest run (days) would also delay redelivery after a crash by
days, and the filesystem transport has no visibility timeout at all; the lease works the same on both.
Judgements have the same lease, heartbeats and reaping. A worker takes a message only when it has a free
slot (`NoPrefetch`): with early acks, a prefetched message would die with its worker.

Isolation. The work runs in a child process (`python -m worker.runner`, or `accelerate launch` for a
multi-GPU run) that gets the GPUs it was given through CUDA_VISIBLE_DEVICES and dies with this process
(PR_SET_PDEATHSIG), so a killed worker never leaves an orphan training on a GPU. CUDA is never
initialised in the worker process itself.

Modules. This one defines the two tasks and is what registers the worker on the Celery app
(worker/celery_app.py): the tasks, the `NoPrefetch` consumer step and the signal handlers, once per
process, when it is imported (`klq worker`, klqlab/cli.py, imports it before starting the worker). The
rest is in: worker/devices.py (the GPUs, `DEVICES`), worker/child.py (starting, stopping and measuring
the child process), worker/supervise.py (heartbeats, stall detection, cancel, graceful stop, the child's
end), worker/requeue.py (retry or fail, re-queue on shutdown, sending a task again), worker/reaper.py
(the reaper and the reconciler `redispatch_lost`), worker/experiments.py (starting an experiment's
judging), worker/shutdown.py (the shutting-down flag), worker/consumer.py (`NoPrefetch`) and
worker/database.py (`db()`). A name with a leading underscore there is the worker package's own, for
its modules, not for other packages.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import timedelta

from celery import signals

from backend import store
from backend.settings import get_settings
from worker.celery_app import JUDGE_TASK, TRAIN_TASK, app
from worker.consumer import NoPrefetch
from worker.database import db
from worker.devices import DEVICES
from worker.experiments import judge_experiment_of
from worker.reaper import _start_reaper, _stop_reaper, redispatch_lost
from worker.requeue import _send_again
from worker.shutdown import _on_shutting_down, _shutting_down
from worker.supervise import _supervise

# What other code and the tests import from here besides the tasks (klqlab/cli.py: DEVICES and app; the
# reconciler test: redispatch_lost; the graceful-stop test: _shutting_down).
__all__ = ["DEVICES", "app", "redispatch_lost", "run_judgement", "train_run"]

log = logging.getLogger("klq.worker")

app.steps["consumer"].add(NoPrefetch)
signals.worker_shutting_down.connect(_on_shutting_down)
signals.worker_ready.connect(_start_reaper)
signals.worker_shutdown.connect(_stop_reaper)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _handed_back(job: str, object_id: int) -> bool:
    """A worker that is shutting down claims nothing new: a message it still received (the filesystem
    transport's consumer may poll once more during a warm shutdown, and acks are early, so the message is
    gone) is sent again for another worker if its job is still queued, and dropped if not (a duplicate).
    Claiming it would count an attempt that a graceful stop then could not tell from a failed one."""
    if not _shutting_down.is_set():
        return False
    table, model = ("runs", store.Run) if job == "train" else ("judgements", store.Judgement)
    with db().session() as session:
        row = session.get(model, object_id)
        status, queue = (row.status, row.queue) if row is not None else (None, None)
    if status == "queued":
        log.warning("%s %s: worker shutting down: not claimed, sent again for another worker", job, object_id)
        _send_again(table, object_id, queue)
    return True


@app.task(name=TRAIN_TASK, acks_late=False, ignore_result=True)
def train_run(run_id: int) -> str:
    settings = get_settings()
    owner = _owner()
    if _handed_back("train", run_id):
        return "handed back"
    with db().session() as session:
        run = store.get_run(session, run_id)
        if run is None:
            return "deleted"
        num_gpus = int(run.config.get("num_gpus", 1)) if run.queue != "cpu" else 0
    try:
        # A worker without GPUs trains single-process runs on its CPU.
        gpus = DEVICES.take(num_gpus) if DEVICES.total or num_gpus > 1 else []
    except RuntimeError as err:
        with db().write_session() as session:
            run = store.get_run(session, run_id)
            if run is None or run.status != "queued":  # a duplicate delivery: not ours to fail
                return "skipped"
            store.finish_run(session, run_id, "failed", error=str(err))
        judge_experiment_of(run_id)
        return "failed"
    try:
        with db().write_session() as session:
            claimed = store.acquire_lease(
                session,
                run_id,
                owner,
                stale_after=timedelta(seconds=settings.lease_timeout),
                worker_host=socket.gethostname(),
                worker_gpu=",".join(gpus) or "cpu",
            )
        if not claimed:
            log.info("run %s is finished, cancelled or owned by a live worker: nothing to do", run_id)
            return "skipped"
        log.info("run %s: training on %s as %s", run_id, ",".join(gpus) or "cpu", owner)
        outcome = _supervise("train", run_id, owner, gpus, settings)
    finally:
        DEVICES.give_back(gpus)
    judge_experiment_of(run_id)
    return outcome


@app.task(name=JUDGE_TASK, acks_late=False, ignore_result=True)
def run_judgement(judgement_id: int) -> str:
    settings = get_settings()
    owner = _owner()
    if _handed_back("judge", judgement_id):
        return "handed back"
    gpus = DEVICES.take(1) if DEVICES.total else []
    try:
        with db().write_session() as session:
            if not store.acquire_judgement(
                session, judgement_id, owner, stale_after=timedelta(seconds=settings.lease_timeout)
            ):
                log.info(
                    "judgement %s is finished, cancelled or owned by a live worker: nothing to do",
                    judgement_id,
                )
                return "skipped"
        return _supervise("judge", judgement_id, owner, gpus, settings)
    finally:
        DEVICES.give_back(gpus)
