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
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from celery import bootsteps, signals
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from backend import store
from backend.db import Database, unavailable_reason
from backend.dispatch import DispatchError, send_judgement, send_train_run, waiting_messages
from backend.logfiles import judgement_log_path, run_log_path
from backend.models import utcnow
from backend.settings import get_settings
from worker.celery_app import JUDGE_TASK, TRAIN_TASK, app

log = logging.getLogger("klq.worker")

_db: Database | None = None


def db() -> Database:
    global _db
    if _db is None:
        _db = Database.from_settings()
    return _db


# ------------------------------------------------------------------------------------------------ GPUs


class DevicePool:
    """The GPUs this worker may hand out (KLQ_WORKER_GPUS, else all it sees); one run per GPU."""

    def __init__(self, devices: list[str]) -> None:
        self.total = len(devices)
        self.free = list(devices)
        self.lock = threading.Condition()

    def take(self, n: int) -> list[str]:
        """n GPUs, waiting while other jobs of this worker hold them (a run on several GPUs leaves
        Celery slots without a GPU); RuntimeError if this worker can never give n."""
        with self.lock:
            if n > self.total:
                raise RuntimeError(f"needs {n} GPU(s) but this worker has {self.total}")
            self.lock.wait_for(lambda: n <= len(self.free))
            taken, self.free = self.free[:n], self.free[n:]
            return taken

    def give_back(self, devices: list[str]) -> None:
        with self.lock:
            self.free.extend(devices)
            self.lock.notify_all()


def detect_gpus() -> list[str]:
    configured = os.environ.get("KLQ_WORKER_GPUS")
    if configured is not None:
        return [d.strip() for d in configured.split(",") if d.strip()]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


DEVICES = DevicePool(detect_gpus())


# --------------------------------------------------------------------------------------- child process


try:  # resolved here: between fork and exec (in a process with threads) the child must not dlopen
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux/glibc: no parent-death signal
    _prctl = None


def _die_with_parent(parent: int) -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1 (fires when the forking thread exits)
        if os.getppid() != parent:  # the worker died before the signal was armed
            os._exit(1)
    os.setpgrp()  # its own process group, so a stop reaches accelerate's children too


def _child_command(job: str, object_id: int, owner: str, gpus: list[str]) -> list[str]:
    runner = ["-m", "worker.runner", job, str(object_id), "--owner", owner]
    if len(gpus) > 1:
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(len(gpus)),
            *runner,
        ]
    return [sys.executable, *runner]


def _start_child(job: str, object_id: int, owner: str, gpus: list[str], log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpus), PYTHONUNBUFFERED="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            _child_command(job, object_id, owner, gpus),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )


def _stop_child(child: subprocess.Popen, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _system_metrics(child: subprocess.Popen, gpus: list[str]) -> dict[str, float]:
    """CPU and memory of the training process, and utilisation/memory of its GPUs."""
    metrics: dict[str, float] = {}
    try:
        import psutil

        proc = psutil.Process(child.pid)
        procs = [proc, *proc.children(recursive=True)]
        metrics["system/cpu_percent"] = sum(p.cpu_percent(interval=None) for p in procs)
        metrics["system/rss_gb"] = sum(p.memory_info().rss for p in procs) / 2**30
    except Exception:  # the process may have just exited
        pass
    if gpus:
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    f"--id={','.join(gpus)}",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            rows = [[float(x) for x in line.split(",")] for line in out.splitlines() if line.strip()]
            metrics["system/gpu_util_percent"] = sum(r[0] for r in rows) / len(rows)
            metrics["system/gpu_memory_gb"] = sum(r[1] for r in rows) / 1024
        except (OSError, subprocess.SubprocessError, ValueError, ZeroDivisionError):
            pass
    return metrics


# ------------------------------------------------------------------------------------------- no prefetch


class NoPrefetch(bootsteps.StartStopStep):
    """Take a message from the broker only when a slot is free to run it.

    With early acks, Celery's prefetch (even at multiplier 1) reserves one more message per slot while
    a task runs: a worker training a run holds the next run's message in memory. If that worker dies,
    the held message is lost (the filesystem transport has already deleted it; Redis restores it only
    after its visibility timeout, an hour) and that run stays queued, since the reaper only re-queues
    runs that were running. This is Celery's `worker_disable_prefetch`, which Celery applies to Redis
    only, applied to every kombu transport (the filesystem transport polls `qos.can_consume()` too)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c) -> None:
        from celery.worker import state

        qos = c.task_consumer.channel.qos
        can_consume = qos.can_consume

        def only_when_free() -> bool:
            limit = getattr(c.controller, "max_concurrency", None) or c.pool.num_processes
            return len(state.reserved_requests) < limit and can_consume()

        qos.can_consume = only_when_free


app.steps["consumer"].add(NoPrefetch)


# ----------------------------------------------------------------------------------------------- tasks


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


class _OutageTolerated:
    """Around one heartbeat: an unreachable database (backend.db.unavailable_reason) is logged and swallowed,
    so a database restart neither kills the child (which retries its own writes, worker/sink.py) nor ends
    the task. The lease outlives an outage shorter than KLQ_LEASE_TIMEOUT; after a longer one another
    worker may have taken the run over, and the first heartbeat that gets through says so (lease lost)."""

    def __init__(self, what: str) -> None:
        self.what, self.failed = what, False

    def __enter__(self) -> _OutageTolerated:
        return self

    def __exit__(self, _type, err, _tb) -> bool:
        reason = unavailable_reason(err) if err is not None else None
        self.failed = reason is not None
        if self.failed:
            log.warning("%s: heartbeat failed, the database is unreachable (%s); trying again", self.what, reason)
        return self.failed


class _ProgressWatch:
    """Stall detection for one attempt: the child's last progress (runs.progress_at: an iteration logged;
    judgements.progress_at: verdicts saved), as read with each heartbeat. Hung means no progress for
    KLQ_STALL_TIMEOUT_S since the previous report or, before the attempt's first report (loading or
    downloading models, building assets, the first iteration, a judge's responses), for
    KLQ_STARTUP_TIMEOUT_S since the child started."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.started = utcnow()
        self.last: datetime | None = None  # None: no progress yet in this attempt (store.leases.acquire resets it)
        self.where = ""

    def saw(self, row, job: str) -> None:
        if row is None:
            return
        self.last = row.progress_at
        self.where = (
            f"at iteration {row.iteration}"
            if job == "train"
            else f"with {row.completed} of {row.total or '?'} prompts judged"
        )

    def stalled(self) -> str | None:
        """Why the child counts as hung, or None."""
        now = utcnow()
        if self.last is None:
            limit = self.settings.startup_timeout_s
            if limit and (now - self.started).total_seconds() > limit:
                return f"no progress report within {limit:g} s of starting {self.where}".rstrip()
            return None
        limit = self.settings.stall_timeout_s
        if limit and (now - self.last).total_seconds() > limit:
            return f"no progress for {limit:g} s {self.where}"
        return None


def _bound_lock_waits(session, settings) -> None:
    """A heartbeat must not wait for ever on a row lock held by its own child if that child hangs inside a
    transaction (PostgreSQL waits without limit; SQLite gives up after its busy timeout): the wait is cut
    short, the beat skipped, and the stall check still runs."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = {max(1000, int(settings.heartbeat_interval * 1000))}"))


def _is_lock_wait(err: OperationalError) -> bool:
    message = str(err.orig if getattr(err, "orig", None) is not None else err).lower()
    return "lock" in message  # PostgreSQL: "canceling statement due to lock timeout"; SQLite: "database is locked"


def _kill_child(child: subprocess.Popen) -> None:
    """SIGKILL the child's process group at once: a hung (or SIGSTOPped) process may ignore SIGTERM."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _send_again(table: str, object_id: int, queue: str) -> bool:
    """Send a re-queued run's or judgement's task to the broker; if the broker refuses, leave it for the
    reaper to send again (store.unqueue_unsent)."""
    what = "run" if table == "runs" else "judgement"
    try:
        (send_train_run if table == "runs" else send_judgement)(object_id, queue)
        return True
    except DispatchError:
        log.warning("%s %s: could not be sent to the broker; the next reaper pass tries again", what, object_id)
        with db().write_session() as session:
            store.unqueue_unsent(session, table, object_id)
        return False


def _retry_or_fail(job: str, object_id: int, owner: str, reason: str, log_path: Path, settings) -> str:
    """An attempt that went wrong (hung, killed, crashed): re-queue the job to resume from its last
    checkpoint (stored verdicts), or fail it once it has had KLQ_MAX_ATTEMPTS (store.retry_or_fail)."""
    table, model = ("runs", store.Run) if job == "train" else ("judgements", store.Judgement)
    with db().write_session() as session:
        outcome = store.retry_or_fail(
            session, model, object_id, owner, reason, max_attempts=settings.max_attempts, log_tail=_log_tail(log_path)
        )
        row = session.get(model, object_id)
        queue = row.queue if row is not None else None
    what = "run" if job == "train" else "judgement"
    if outcome is None:
        log.warning("%s %s: %s, but its lease is no longer ours: left to its new worker", what, object_id, reason)
        return "lease lost"
    if outcome == "queued":
        log.warning("%s %s: %s; re-queued to resume from its last checkpoint", what, object_id, reason)
        _send_again(table, object_id, queue)
        return "requeued"
    log.error("%s %s: %s; failed after %s attempt(s) (KLQ_MAX_ATTEMPTS)", what, object_id, reason, settings.max_attempts)
    return "failed"


def _requeue_preempted(job: str, object_id: int, owner: str) -> bool:
    """The worker is shutting down and the child has stopped (a training process at an iteration
    boundary, with a checkpoint): release the lease and queue the job again at once, so that another
    worker resumes it without waiting for the lease to expire. False if the child ended it meanwhile
    (finished, cancelled) or the lease is no longer ours."""
    table, model = ("runs", store.Run) if job == "train" else ("judgements", store.Judgement)
    with db().write_session() as session:
        if not store.requeue_preempted(session, model, object_id, owner):
            return False
        row = session.get(model, object_id)
        queue, progress = row.queue, (row.iteration if job == "train" else row.completed)
    log.warning(
        "%s %s: worker shutting down: released its lease and re-queued it at %s %s, to resume from its %s",
        "run" if job == "train" else "judgement",
        object_id,
        "iteration" if job == "train" else "prompts judged:",
        progress,
        "checkpoint" if job == "train" else "stored verdicts",
    )
    _send_again(table, object_id, queue)
    return True


def _supervise(job: str, object_id: int, owner: str, gpus: list[str], settings) -> str:
    log_path = (  # where the API's GET /runs/{id}/logs and /judgements/{id}/logs read them
        run_log_path(settings.data_dir, object_id)
        if job == "train"
        else judgement_log_path(settings.data_dir, object_id)
    )
    child = _start_child(job, object_id, owner, gpus, log_path)
    try:
        return _watch_child(job, object_id, owner, gpus, settings, child, log_path)
    finally:
        if child.poll() is None:  # the supervisor itself failed: never leave its child running unwatched
            _kill_child(child)


def _watch_child(job: str, object_id: int, owner: str, gpus: list[str], settings, child, log_path: Path) -> str:
    what = "training" if job == "train" else "judge"
    name = f"{'run' if job == 'train' else 'judgement'} {object_id}"
    cancel_seen: float | None = None
    preempt_seen: float | None = None  # when this worker's shutdown (SIGTERM) was first seen
    watch = _ProgressWatch(settings)
    while True:
        try:
            child.wait(settings.heartbeat_interval)
            break
        except subprocess.TimeoutExpired:
            pass
        if _shutting_down.is_set():
            # A training process is asked to stop at its next iteration boundary, with a checkpoint; a
            # judge process is stopped at once (its verdicts so far are stored). Either way not a cancel.
            if preempt_seen is None:
                preempt_seen = time.monotonic()
                log.warning("%s: worker shutting down: stopping its %s process", name, what)
                if job != "train":
                    _stop_child(child, settings.cancel_grace)
                    break
                with db().write_session() as session:
                    store.request_preempt(session, object_id, owner)
            elif time.monotonic() - preempt_seen > settings.cancel_grace:
                _stop_child(child, settings.cancel_grace)  # stuck mid-iteration: stop it the hard way
                break
        stalled = watch.stalled()
        if stalled:
            log.warning("%s: %s: killing its %s process", name, stalled, what)
            _kill_child(child)
            return _retry_or_fail(job, object_id, owner, stalled, log_path, settings)
        try:
            with _OutageTolerated(name) as outage, db().write_session() as session:
                _bound_lock_waits(session, settings)
                if job == "train":
                    beat = store.heartbeat(session, object_id, owner)
                    row = store.get_run(session, object_id)
                    metrics = _system_metrics(child, gpus)
                    if metrics and row is not None and beat.ok:
                        # fenced by the heartbeat: its conditional UPDATE in this transaction found the lease ours
                        store.write_metrics(
                            session, object_id, [(k, row.iteration, v) for k, v in metrics.items()]
                        )
                else:
                    beat = store.heartbeat_judgement(session, object_id, owner)
                    row = store.get_judgement(session, object_id)
        except OperationalError as err:
            if not _is_lock_wait(err):
                raise
            log.warning("%s: heartbeat skipped: a lock was held too long (%s)", name, err.orig)
            continue
        if outage.failed:
            continue  # the database is away: keep the child, beat again at the next interval
        watch.saw(row, job)
        if not beat.ok and row is not None and row.status in store.TERMINAL_STATUSES:
            # The child has just written the outcome and is exiting: let it.
            try:
                child.wait(settings.cancel_grace)
            except subprocess.TimeoutExpired:
                _stop_child(child, settings.cancel_grace)
            break
        if not beat.ok:
            log.warning(
                "%s %s: lease lost, stopping its %s process",
                "run" if job == "train" else "judgement",
                object_id,
                what,
            )
            _stop_child(child, settings.cancel_grace)
            return "lease lost"
        if beat.cancel_requested:
            # A training process stops by itself at its next iteration boundary (it polls the cancel
            # flag) and keeps a checkpoint; a judge process does not poll: its verdicts so far are stored.
            cancel_seen = cancel_seen or time.monotonic()
            if job != "train" or time.monotonic() - cancel_seen > settings.cancel_grace:
                _stop_child(child, settings.cancel_grace)  # stuck mid-iteration: stop it the hard way
                break
    if preempt_seen is not None and _requeue_preempted(job, object_id, owner):
        return "preempted"
    return _child_ended(job, object_id, owner, child.returncode, log_path, settings)


def _child_ended(job: str, object_id: int, owner: str, rc: int, log_path: Path, settings) -> str:
    """The child has exited. Normally it has written the job's outcome; if the job is still running under
    this worker, the child died without one (killed, e.g. by the OOM killer, or crashed): a cancelled job
    ends cancelled, any other is retried from its checkpoint up to KLQ_MAX_ATTEMPTS (a crash loop ends)."""
    with db().write_session() as session:
        row = store.get_run(session, object_id) if job == "train" else store.get_judgement(session, object_id)
        if row is None:
            return "deleted"
        if row.status != "running" or row.lease_owner != owner:
            return row.status
        if row.cancel_requested:
            (store.finish_run if job == "train" else store.set_judgement_status)(
                session, object_id, "cancelled", owner=owner
            )
            return "cancelled"
        where = f"at iteration {row.iteration}" if job == "train" else f"with {row.completed} prompts judged"
    killed = f" (killed by {signal.Signals(-rc).name}{': out of memory?' if rc == -9 else ''})" if rc < 0 else ""
    reason = f"the {'training' if job == 'train' else 'judge'} process exited with code {rc}{killed} {where}"
    return _retry_or_fail(job, object_id, owner, reason, log_path, settings)


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


# ------------------------------------------------------------------------------------------ experiments


def start_judging(experiment_id: int) -> list[int]:
    """Claim an experiment's judging step and queue its judgements (store.claim_judging: only one caller
    ever wins, and only once every run is terminal). A judgement the broker refuses is left for the reaper
    to send again (store.unqueue_unsent), as a re-queued one would be. Returns the judgement ids queued."""
    with db().write_session() as session:
        jobs = [(j.id, j.queue) for j in store.claim_judging(session, experiment_id)]
    if jobs:
        log.info("experiment %s: every run has ended; queued %d judgement(s)", experiment_id, len(jobs))
    for judgement_id, queue in jobs:
        try:
            send_judgement(judgement_id, queue)
        except DispatchError:
            log.warning(
                "judgement %s of experiment %s: could not be sent to the broker; the reaper tries again",
                judgement_id,
                experiment_id,
            )
            with db().write_session() as session:
                store.unqueue_unsent(session, "judgements", judgement_id)
    return [judgement_id for judgement_id, _queue in jobs]


def judge_experiment_of(run_id: int) -> None:
    """After a run's task: if the run belongs to an experiment whose runs have now all ended, start its
    judging. Never fails the task: an experiment left unjudged is the reaper's to claim."""
    try:
        with db().session() as session:
            experiment_id = store.experiment_of_run(session, run_id)
        if experiment_id is not None:
            start_judging(experiment_id)
    except Exception:
        log.exception("run %s: could not start its experiment's judging; the reaper tries again", run_id)


# ---------------------------------------------------------------------------------------------- reaper


def reap_once(settings=None) -> list[int]:
    """Re-queue runs (and judgements) whose worker stopped sending heartbeats, and send their tasks
    again; start the judging of experiments whose runs have all ended. Returns the run ids re-queued."""
    settings = settings or get_settings()
    stale_after = timedelta(seconds=settings.lease_timeout)
    with db().write_session() as session:
        run_ids = store.requeue_stale_runs(session, stale_after=stale_after, max_attempts=settings.max_attempts)
        judgement_ids = store.requeue_stale_judgements(
            session, stale_after=stale_after, max_attempts=settings.max_attempts
        )
        jobs = [("runs", i, store.get_run(session, i).queue) for i in run_ids] + [
            ("judgements", i, store.get_judgement(session, i).queue) for i in judgement_ids
        ]
    for table, object_id, queue in jobs:
        what = "run" if table == "runs" else "judgement"
        log.warning(
            "%s %s: its worker stopped sending heartbeats; re-queued to resume from its %s",
            what,
            object_id,
            "checkpoint" if table == "runs" else "stored verdicts",
        )
        _send_again(table, object_id, queue)
    redispatch_lost(settings)
    # Experiments whose last run ended while no worker could claim their judging (it died at that moment,
    # or the run was cancelled through the API): claimed here, so judging never waits on a lost message.
    with db().session() as session:
        waiting = store.experiments_awaiting_judging(session)
    for experiment_id in waiting:
        start_judging(experiment_id)
    return run_ids


def redispatch_lost(settings) -> list[tuple[str, int]]:
    """Send again the tasks of queued runs and judgements whose broker message was lost (Redis restarted
    without AOF, a purged queue), so that none stays queued for ever. Returns the (table, id) re-sent.

    Which message is missing cannot be told on every transport, so: a queue whose broker holds fewer
    messages than it has jobs waiting (queued, no lease) is short of that many; that many of its jobs
    untouched for KLQ_REQUEUE_QUEUED_AFTER are sent again, oldest first, each at most once per that
    interval (``updated_at`` is stamped when it is re-sent). A job that merely waits its turn behind busy
    workers has its message in the queue, so it is not re-sent, and the reconciler never adds messages
    beyond the number of jobs waiting. When a wrong job of a short queue was re-sent, its duplicate is
    harmless (the lease lets one delivery train it, the other is skipped), and once the workers have
    drained the queue the missing one is found short again and sent. A broker that cannot count counts as
    empty: its jobs are re-sent once per interval."""
    idle_for = timedelta(seconds=settings.requeue_queued_after)
    with db().session() as session:
        waiting = store.waiting_jobs(session, idle_for=idle_for)
    sent: list[tuple[str, int]] = []
    for queue, jobs in waiting.items():
        if not jobs.idle:
            continue
        in_broker = waiting_messages(queue)
        missing = jobs.count - (in_broker or 0)
        for table, object_id in jobs.idle[: max(missing, 0)]:
            with db().write_session() as session:
                if not store.mark_redispatched(session, table, object_id, idle_for=idle_for):
                    continue  # taken, cancelled or re-sent by another reaper meanwhile
            what = "run" if table == "runs" else "judgement"
            log.warning(
                "%s %s: queued for over %ss with %s message(s) in %r for %d waiting job(s): its message "
                "looks lost; sending its task again",
                what,
                object_id,
                settings.requeue_queued_after,
                "unknown" if in_broker is None else in_broker,
                queue,
                jobs.count,
            )
            try:
                (send_train_run if table == "runs" else send_judgement)(object_id, queue)
            except DispatchError:
                log.warning("%s %s: could not be sent to the broker; tried again later", what, object_id)
                continue
            sent.append((table, object_id))
    return sent


def _reaper_loop(stop: threading.Event) -> None:
    settings = get_settings()
    while not stop.wait(settings.reap_interval):
        try:
            reap_once(settings)
        except Exception:
            log.exception("reaper pass failed; trying again in %ss", settings.reap_interval)


_reaper_stop = threading.Event()

# Set when this worker starts to shut down (SIGTERM: Celery's warm shutdown, which waits for running tasks
# to end; for a days-long run that is never): each supervisor then has its child stop at the next iteration
# boundary with a checkpoint, re-queues the job and returns, so that the worker exits within about
# KLQ_CANCEL_GRACE and another worker resumes the job at once.
_shutting_down = threading.Event()


@signals.worker_shutting_down.connect
def _on_shutting_down(**_kwargs) -> None:
    _shutting_down.set()  # runs in a signal handler: set a flag, nothing else


@signals.worker_ready.connect
def _start_reaper(**_kwargs) -> None:
    threading.Thread(target=_reaper_loop, args=(_reaper_stop,), name="klq-reaper", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_reaper(**_kwargs) -> None:
    _reaper_stop.set()
