"""A burst of concurrent requests against a real uvicorn server is served, never deadlocked.

Before backend/concurrency.py, 64 concurrent requests hung the server on both databases (bench/api_load.py
at 200 requests/s: no request completed): its 40 threads all waited for one of the 15 pooled connections,
while the requests holding those connections waited for a thread to serialise their responses, until the
30 s pool timeout failed them all. The burst here is well above both numbers. Such a deadlock ends in
errors (the pool timeout fails the waiting requests), so the check is that every request is answered 200;
how long they take depends on the machine and is printed, not asserted.
"""

from __future__ import annotations

import asyncio
import time

import httpx

BURST = 160


async def _burst(server, paths: list[str]) -> list[tuple[str, int | str, float]]:
    limits = httpx.Limits(max_connections=BURST + 8, max_keepalive_connections=BURST + 8)
    headers = {"Authorization": f"Bearer {server.token}"}
    async with httpx.AsyncClient(base_url=server.api, headers=headers, limits=limits, timeout=120) as client:

        async def one(path: str) -> tuple[str, int | str, float]:
            t0 = time.monotonic()
            try:
                r = await client.get(path)
                return path, r.status_code, time.monotonic() - t0
            except httpx.HTTPError as err:
                return path, f"{type(err).__name__}: {err}", time.monotonic() - t0

        return await asyncio.gather(*(one(p) for p in paths))


def test_a_burst_larger_than_the_pool_and_the_thread_pool_is_served(server, client) -> None:
    paths = [
        ["/runs?limit=50", "/runs?limit=5&latest=objective/scores", "/judgements", "/experiments", "/health"][
            i % 5
        ]
        for i in range(BURST)
    ]
    t0 = time.monotonic()
    results = asyncio.run(_burst(server, paths))
    elapsed = time.monotonic() - t0
    failed = [r for r in results if r[1] != 200]
    assert not failed, (len(failed), failed[:5])
    print(f"burst of {BURST}: {elapsed:.1f} s, slowest request {max(r[2] for r in results):.1f} s")
    assert client.get("/health").status_code == 200
