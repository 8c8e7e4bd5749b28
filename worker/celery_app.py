"""The workers' Celery app: backend/broker.py's app (broker, queues, serialisation), on which
worker/tasks.py registers ``klq.train_run`` and ``klq.run_judgement``. Also the app that Celery's own
tools load (``celery -A worker.celery_app:app flower``)."""

from __future__ import annotations

from backend.broker import JUDGE_TASK, TRAIN_TASK, get_app

app = get_app()

__all__ = ["JUDGE_TASK", "TRAIN_TASK", "app"]
