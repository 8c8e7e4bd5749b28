"""Conditional GETs and a response cache for the read endpoints that dashboards poll (the run list, a run,
series, samples).

A response is identified by its URL (path and query) and the database's data version
(``Database.data_version``: changes whenever anything is committed, by any process). Its ETag is a hash of
its body, so it is a strong validator: a client's ``If-None-Match`` that matches gets 304 with no body,
whatever the data version, as long as the body would be the same. The body itself is kept for reuse only
under the data version it was built at: once anything is committed the cache is emptied, so a cached
body is never older than the data. Built after the endpoint's dependencies (authorisation included) ran.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from hashlib import blake2b
from typing import Any

from fastapi import Request, Response
from pydantic_core import to_json
from sqlalchemy.orm import Session

MAX_ENTRIES = 1024
MAX_BODY_BYTES = 1 << 20  # larger bodies are answered (and validated) but not kept


class ResponseCache:
    """Bodies and ETags by URL, all of one data version (a new version empties it); least recently used
    entries go first beyond ``max_entries``. Thread-safe."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._version: str | None = None
        self._entries: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: str, url: str) -> tuple[str, bytes] | None:
        with self._lock:
            if version != self._version:
                return None
            hit = self._entries.get(url)
            if hit is not None:
                self._entries.move_to_end(url)
            return hit

    def put(self, version: str, url: str, etag: str, body: bytes) -> None:
        if len(body) > MAX_BODY_BYTES or self.max_entries == 0:
            return
        with self._lock:
            if version != self._version:
                self._version = version
                self._entries.clear()
            self._entries[url] = (etag, body)
            self._entries.move_to_end(url)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def etag_of(body: bytes) -> str:
    return '"' + blake2b(body, digest_size=16).hexdigest() + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of an If-None-Match header (a list of tags, or *) with ``etag``."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return any(t == "*" or t.removeprefix("W/") == etag for t in tags)


def cached_json(request: Request, session: Session, build: Callable[[], Any]) -> Response:
    """The JSON response of ``build()`` (plain data or pydantic models, rendered by pydantic-core) with its
    ETag, from the app's cache when the data has not changed since it was built; 304 without a body when
    the client's If-None-Match names it. Call before ``session`` has read anything (data_version's rule)."""
    cache: ResponseCache = request.app.state.response_cache
    version = request.app.state.db.data_version(session)
    url = request.url.path + "?" + request.url.query  # as sent: the order of repeated parameters matters
    hit = cache.get(version, url) if version is not None else None
    if hit is None:
        body = to_json(build())
        etag = etag_of(body)
        if version is not None:
            cache.put(version, url, etag, body)
    else:
        etag, body = hit
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
