"""The worker's shutting-down flag and the signal handler that sets it (worker/tasks.py connects it to
Celery's ``worker_shutting_down``). Read by each supervisor (worker/supervise.py: stop the child, re-queue
the job) and by a task before it claims anything (worker/tasks.py: ``_handed_back``)."""

from __future__ import annotations

import threading

# Set when this worker starts to shut down (SIGTERM: Celery's warm shutdown, which waits for running tasks
# to end; for a days-long run that is never): each supervisor then has its child stop at the next iteration
# boundary with a checkpoint, re-queues the job and returns, so that the worker exits within about
# KLQ_CANCEL_GRACE and another worker resumes the job at once.
_shutting_down = threading.Event()


def _on_shutting_down(**_kwargs) -> None:
    _shutting_down.set()  # runs in a signal handler: set a flag, nothing else

