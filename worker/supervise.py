"""Supervision of a job's child process (``_supervise``): it starts the child, renews the lease every
`heartbeat_interval` seconds (riding out a database outage, never waiting for ever on a lock), records
the child's system metrics, kills a hung child (stall detection: KLQ_STALL_TIMEOUT_S,
KLQ_STARTUP_TIMEOUT_S), stops it on a cancel, a lost lease or the worker's shutdown (graceful stop and
an immediate re-queue), and once it has exited settles the job: its outcome, a retry or a failure."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from backend import store
from backend.db import unavailable_reason
from backend.logfiles import judgement_log_path, run_log_path
from backend.models import utcnow
from worker.child import _kill_child, _start_child, _stop_child, _system_metrics
from worker.database import db
from worker.requeue import _requeue_preempted, _retry_or_fail
from worker.shutdown import _shutting_down

log = logging.getLogger("klq.worker")


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
