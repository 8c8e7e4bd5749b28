"""Prometheus metrics (``GET /metrics``) and response headers, as pure ASGI middleware (no buffering,
so streamed responses and server-sent events pass through untouched).

Exposed: ``klq_http_requests_total{method,route,status}``, ``klq_http_request_duration_seconds``
(streams excluded), and, read from the database at scrape time, ``klq_runs{status}`` and
``klq_judgements{status}``. Each app has its own registry (several apps can live in one process).
With several uvicorn worker processes each reports its own counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from .models import RUN_STATUSES, Judgement, Run

log = logging.getLogger("klq.backend")

STREAMING_SUFFIXES = ("/events", "/download", "/export")


class _StatusCollector(Collector):
    def __init__(self, get_db: Callable[[], Any]) -> None:
        self._get_db = get_db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        db = self._get_db()
        if db is None:
            return
        for table, name in ((Run, "klq_runs"), (Judgement, "klq_judgements")):
            family = GaugeMetricFamily(name, f"{name[4:]} by status", labels=["status"])
            counts = dict.fromkeys(RUN_STATUSES, 0)
            try:
                with db.session() as session:
                    counts.update(
                        dict(session.execute(select(table.status, func.count()).group_by(table.status)).all())
                    )
            except Exception as err:  # a scrape must not fail because the database is briefly away
                log.warning("metrics scrape could not read %s: %s", table.__tablename__, err)
                continue
            for status, n in counts.items():
                family.add_metric([status], n)
            yield family


class Observability:
    def __init__(self, get_db: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "klq_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "klq_http_request_duration_seconds",
            "HTTP request latency (streams and downloads excluded)",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.registry.register(_StatusCollector(get_db))


class ObservabilityMiddleware:
    """Counts requests by route template and adds ``X-Content-Type-Options: nosniff`` (responses are
    JSON, CSV, zip or text/event-stream; never rendered as HTML)."""

    def __init__(self, app: Any, observability: Observability, prefix: str = "") -> None:
        self.app = app
        self.obs = observability
        self.prefix = prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def _send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "(unmatched)"
            # routes included with a prefix may report their own path only
            if (
                self.prefix
                and scope.get("path", "").startswith(self.prefix)
                and not template.startswith(self.prefix)
            ):
                template = self.prefix + template
            method = scope.get("method", "GET")
            self.obs.requests.labels(method, template, str(status["code"])).inc()
            if not template.endswith(STREAMING_SUFFIXES):
                self.obs.latency.labels(method, template).observe(time.perf_counter() - start)
