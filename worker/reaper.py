"""The reaper: a thread of every worker (started on ``worker_ready``, stopped on ``worker_shutdown``;
worker/tasks.py connects both) that every KLQ_REAP_INTERVAL re-queues the jobs of dead workers, sends
again the tasks whose broker message was lost (the reconciler, ``redispatch_lost``) and starts the
judging of experiments left unjudged."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from backend import store
from backend.dispatch import DispatchError, send_judgement, send_train_run, waiting_messages
from backend.settings import get_settings
from worker.database import db
from worker.experiments import start_judging
from worker.requeue import _send_again

log = logging.getLogger("klq.worker")


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


def _start_reaper(**_kwargs) -> None:
    threading.Thread(target=_reaper_loop, args=(_reaper_stop,), name="klq-reaper", daemon=True).start()


def _stop_reaper(**_kwargs) -> None:
    _reaper_stop.set()
