"""Sending work to the Celery workers, by task name (the API does not import the worker's code).

Call these only after the row they name is committed: a worker may pick the task up at once.
"""

from __future__ import annotations

import logging

log = logging.getLogger("klq.backend")


class DispatchError(RuntimeError):
    """The broker could not be reached or refused the message."""


def _send(task: str, object_id: int, queue: str) -> str:
    from worker.celery_app import app  # imported lazily: Celery is only needed when something is queued

    try:
        result = app.send_task(task, args=[object_id], queue=queue)
    except Exception as err:  # kombu raises transport-specific errors (OperationalError, OSError, ...)
        log.exception("could not queue %s(%s) on %r", task, object_id, queue)
        raise DispatchError(f"could not queue the task on '{queue}': {err}") from err
    return result.id


def send_train_run(run_id: int, queue: str) -> str:
    """Queue ``klq.train_run(run_id)``; returns the Celery task id."""
    from worker.celery_app import TRAIN_TASK

    return _send(TRAIN_TASK, run_id, queue)


def send_judgement(judgement_id: int, queue: str) -> str:
    """Queue ``klq.run_judgement(judgement_id)``; returns the Celery task id."""
    from worker.celery_app import JUDGE_TASK

    return _send(JUDGE_TASK, judgement_id, queue)
