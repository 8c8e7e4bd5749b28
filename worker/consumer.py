"""The worker's consumer step ``NoPrefetch`` (worker/tasks.py adds it to the app's consumer steps)."""

from __future__ import annotations

from celery import bootsteps


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
