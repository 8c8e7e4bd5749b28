"""The ASGI application: ``uvicorn backend.main:create_app --factory`` (``klq up`` does this).

At startup the app checks that the database schema is current (else it refuses to start, naming
``klq migrate``), and on the very first start creates an admin API token, prints it and writes it to
``<data_dir>/api_token`` (mode 0600).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__, store
from .concurrency import RequestConcurrencyLimit
from .db import Database
from .errors import install_error_handlers
from .http_cache import ResponseCache
from .migrate import check_migrated
from .observability import Observability, ObservabilityMiddleware
from .routers import (
    algorithms,
    checkpoints,
    experiments,
    health,
    judgements,
    leaderboard,
    logs,
    metrics,
    runs,
    samples,
    tokens,
    votes,
)
from .settings import Settings, get_settings

log = logging.getLogger("klq.backend")

API_PREFIX = "/api/v1"

DESCRIPTION = """
KLQ Lab's REST API: queue KLQ/PPO fine-tuning runs on GPU workers, follow their metrics live, read their
samples, download their policies, and judge two policies against each other.

Authentication: `Authorization: Bearer <token>`. Writes need a token with the `write` scope; reads need
a token unless the server runs with `KLQ_AUTH_REQUIRED_FOR_READS=false`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    state: dict[str, Database | None] = {"db": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database.from_settings(settings)
        try:
            check_migrated(db.engine)
        except Exception:
            db.dispose()
            raise
        with db.write_session() as session:
            token = store.ensure_initial_token(session, settings.resolved_token_file)
        if token and settings.print_initial_token:
            print(
                f"\nKLQ Lab: created the first API token (admin scope):\n\n    {token}\n\n"
                f"It is also in {settings.resolved_token_file} (readable by you only). "
                "Keep it secret: it can create other tokens.\n",
                file=sys.stderr,
                flush=True,
            )
        app.state.db = db
        state["db"] = db
        try:
            yield
        finally:
            state["db"] = None
            db.dispose()

    app = FastAPI(
        title="KLQ Lab API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=f"{API_PREFIX}/redoc",
        max_body_size=settings.max_request_bytes,
    )
    app.state.settings = settings
    app.state.response_cache = ResponseCache(settings.response_cache_entries)
    install_error_handlers(app)

    for router in (
        health.router,
        algorithms.router,
        runs.tags_router,
        runs.router,
        metrics.router,
        samples.router,
        checkpoints.router,
        logs.router,
        judgements.router,
        votes.router,
        leaderboard.router,
        experiments.router,
        tokens.router,
    ):
        app.include_router(router, prefix=API_PREFIX)

    observability = Observability(lambda: state["db"])

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(observability.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestConcurrencyLimit, limit=settings.api_max_concurrency)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_middleware(ObservabilityMiddleware, observability=observability, prefix=API_PREFIX)
    return app
