"""Sending a job's task again and deciding an attempt's fate: an attempt that went wrong is re-queued
from its checkpoint or failed (KLQ_MAX_ATTEMPTS), a job stopped by the worker's shutdown is re-queued at
once; a task the broker refuses is left for the reaper (worker/reaper.py) to send again."""

from __future__ import annotations

import logging
from pathlib import Path

from backend import store
from backend.dispatch import DispatchError, send_judgement, send_train_run
from worker.child import _log_tail
from worker.database import db

log = logging.getLogger("klq.worker")


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
