"""A cap on the requests the API works on at once, so that a burst of requests can never deadlock it.

The routes are synchronous: FastAPI runs each one, its dependencies and its response serialisation as
separate hops on the thread pool (40 threads), and a request's database session keeps its pooled
connection from its first query until the response is sent. Under a burst larger than the connection
pool, every thread ends up blocked waiting for a connection while every connection belongs to a request
that is waiting for a thread to serialise its response: nothing moves until the pool timeout (30 s) fails
them all (measured with bench/api_load.py at 64 concurrent requests before this module existed).

Admitting at most ``limit`` requests at a time, with a pool of at least twice as many connections (a
request holds at most two at once: its session plus a streamed export's own), means no thread ever waits
for a connection; requests beyond the cap wait here, on the event loop, holding neither a thread nor a
connection. Long-lived streams (server-sent events), which open a short session per poll and never hold
a connection between polls, and the health and Prometheus endpoints are not counted, so a saturated
server still answers its health checks.
"""

from __future__ import annotations

import re

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

UNCOUNTED = re.compile(r"(/events|/health|^/metrics)$")


class RequestConcurrencyLimit:
    """Pure ASGI middleware: at most ``limit`` HTTP requests (other than UNCOUNTED paths) run at once."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._semaphore: anyio.Semaphore | None = None  # made on first use, inside the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or UNCOUNTED.search(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self._semaphore is None:
            self._semaphore = anyio.Semaphore(self.limit)
        async with self._semaphore:
            await self.app(scope, receive, send)
