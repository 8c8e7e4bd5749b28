"""Sending work to the Celery workers, by task name on backend/broker.py's app (the API does not import
the worker's code).

Call these only after the row they name is committed: a worker may pick the task up at once.
"""

from __future__ import annotations

import logging

log = logging.getLogger("klq.backend")


class DispatchError(RuntimeError):
    """The broker could not be reached or refused the message."""


def _send(task: str, object_id: int, queue: str) -> str:
    from backend.broker import get_app  # imported lazily: Celery is only needed when something is queued

    try:
        result = get_app().send_task(task, args=[object_id], queue=queue)
    except Exception as err:  # kombu raises transport-specific errors (OperationalError, OSError, ...)
        log.exception("could not queue %s(%s) on %r", task, object_id, queue)
        raise DispatchError(f"could not queue the task on '{queue}': {err}") from err
    return result.id


def send_train_run(run_id: int, queue: str) -> str:
    """Queue ``klq.train_run(run_id)``; returns the Celery task id."""
    from backend.broker import TRAIN_TASK

    return _send(TRAIN_TASK, run_id, queue)


def send_judgement(judgement_id: int, queue: str) -> str:
    """Queue ``klq.run_judgement(judgement_id)``; returns the Celery task id."""
    from backend.broker import JUDGE_TASK

    return _send(JUDGE_TASK, judgement_id, queue)


def waiting_messages(queue: str) -> int | None:
    """How many messages the broker holds in ``queue`` (the list's length on Redis, the queue's message files
    on the filesystem transport, the ready count of a passive queue_declare elsewhere, e.g. RabbitMQ), or
    None if the broker cannot be asked. A queue the broker does not know holds 0."""
    from kombu.exceptions import ChannelError

    from backend.broker import get_app

    try:
        with get_app().connection_for_read() as conn:
            channel = conn.default_channel
            if hasattr(channel, "_size"):
                # kombu's virtual transports (Redis, filesystem) count directly: their passive declare
                # answers NOT_FOUND on Redis under a global_keyprefix (its EXISTS is not prefixed)
                return int(channel._size(queue))
            try:
                return int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:  # NOT_FOUND
                return 0
    except Exception:  # unreachable broker, or a transport that cannot count
        log.warning("could not count the messages waiting in %r", queue, exc_info=True)
        return None
