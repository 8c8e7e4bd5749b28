"""The start of an experiment's judging once all its runs have ended: after each run's task
(``judge_experiment_of``) and on each reaper pass (``start_judging``)."""

from __future__ import annotations

import logging

from backend import store
from backend.dispatch import DispatchError, send_judgement
from worker.database import db

log = logging.getLogger("klq.worker")


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
