"""The Celery application: its broker and settings, shared by the API (a producer: it sends tasks by
name, see dispatch.py, and never imports the worker's code) and the workers (worker/celery_app.py
registers the tasks on this same app).

Broker: ``KLQ_BROKER_URL`` (Redis) when set, else kombu's ``filesystem://`` transport with its message
folder under ``<data_dir>/broker`` (created here), so a single machine needs no Redis. No result
backend: task outcomes live in the database (runs and judgements tables).

Task names (implemented by the worker): ``klq.train_run(run_id)`` and ``klq.run_judgement(judgement_id)``,
sent to the queue a run asked for (``gpu`` by default, ``cpu`` allowed; see KLQ_QUEUES).
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery

from backend.settings import Settings, get_settings

TRAIN_TASK = "klq.train_run"
JUDGE_TASK = "klq.run_judgement"


def broker_config(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if settings.broker_url:
        url = settings.broker_url
    else:
        url = "filesystem://"
        messages = settings.broker_folder / "messages"
        processed = settings.broker_folder / "processed"
        messages.mkdir(parents=True, exist_ok=True)
        processed.mkdir(parents=True, exist_ok=True)
        # One folder for both directions: producers (the API) and consumers (workers) share it.
        options.update(
            data_folder_in=str(messages),
            data_folder_out=str(messages),
            processed_folder=str(processed),
            # Broadcast/remote-control messages; kombu's default is ./control in the working directory.
            control_folder=str(settings.broker_folder / "control"),
            store_processed=False,
        )
    options.update(settings.broker_transport_options)
    return {"broker_url": url, "broker_transport_options": options}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery = Celery("klq")
    celery.conf.update(
        **broker_config(settings),
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.default_queue,
        task_create_missing_queues=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        enable_utc=True,
        timezone="UTC",
    )
    return celery


@functools.cache
def get_app() -> Celery:
    """This process's Celery app, made from ``get_settings()`` on first use: one per process, whether it
    sends tasks (the API, the reaper) or also runs them (a worker)."""
    return make_celery()
