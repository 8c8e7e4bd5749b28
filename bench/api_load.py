"""API under load: mixed reads at a fixed rate against a real server, and log -> visible over SSE.

    python bench/api_load.py                      # 200 requests/s for 60 s, then the SSE latency
    python bench/api_load.py --rate 50 --duration 10 --sse-steps 10  # a smoke run
    python bench/api_load.py --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres  # on PostgreSQL

1. A fresh data directory and SQLite database (or --database-url, or with --pg-url a fresh PostgreSQL
   database created on that server and dropped at the end), seeded through backend.store with
   `--runs` runs (20 metric keys x `--steps` steps each, 16 samples at every 100th step), served by a
   real uvicorn process (backend.main:create_app) on a loopback port.
2. Open-loop load from an asyncio/httpx generator in this process: request i is due at i / rate seconds
   and its latency counts from that due time (so a server that falls behind cannot hide its queue),
   for `--duration` seconds after `--warmup` seconds (default 5) of the same load whose latencies are
   reported apart (a fresh server's response cache is empty, and uncached requests cost more CPU than
   200/s leaves: measured 200 of the first 200 requests over 100 ms on SQLite, none after the third second);
   bounded by count (rate x duration) and time (a request gets --timeout).
   Mix: 30 % run list (GET /runs?limit=50), 30 % run get (GET /runs/{id}), 25 % series (GET
   /metrics/series, one key, max_points=500), 15 % samples (GET /runs/{id}/samples?limit=16).
   Reported: p50/p95/p99 per kind and overall, errors (non-2xx, timeouts, connection errors).
3. Log -> visible: a writer process calls store.write_metrics for a running run every ~0.37 s (the row's
   wall_time = the moment it logs); a client subscribed to GET /runs/{id}/events records, per metrics
   event, receive time - wall_time. The server polls the database every `sse_poll_interval` seconds
   (setting KLQ_SSE_POLL_INTERVAL, default 0.5) while a stream is idle, so that interval bounds the
   delay: measured at the default and at 0.25 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from common import machine, percentile  # noqa: E402

KINDS = (("run list", 0.30), ("run get", 0.30), ("series", 0.25), ("samples", 0.15))


def seed(url: str, runs: int, keys: int, steps: int) -> list[int]:
    from backend import migrate, store
    from backend.db import Database

    migrate.upgrade(url)
    db = Database(url)
    ids = []
    t0 = time.perf_counter()
    with db.write_session() as s:
        for r in range(runs):
            run = store.create_run(s, {"name": f"load-{r}", "algorithm": "klq" if r % 2 else "ppo"},
                                   tags=["bench", f"group-{r % 5}"], commit=False)
            rows = [(f"metric/{k:02d}", step, (step % 97) / 97 + k, 1.7e9 + step)
                    for step in range(1, steps + 1) for k in range(keys)]
            store.write_metrics(s, run.id, rows, commit=False)
            store.write_samples(s, run.id, [
                {"step": step, "prompt_id": f"p{i}", "prompt": f"prompt {i} " * 20,
                 "response": f"response {step} {i} " * 30, "score": 0.1 * i, "kl": 0.01 * step}
                for step in range(100, steps + 1, 100) for i in range(16)
            ], commit=False)
            ids.append(run.id)
        s.commit()
    db.dispose()
    print(f"seeded {runs} runs x {keys} keys x {steps:,} steps ({runs * keys * steps:,} points) and samples "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    return ids


def _request(kind: str, rng: random.Random, run_ids: list[int], keys: int) -> tuple[str, dict]:
    rid = rng.choice(run_ids)
    if kind == "run list":
        return "/runs", {"limit": 50}
    if kind == "run get":
        return f"/runs/{rid}", {}
    if kind == "series":
        return "/metrics/series", {"run_id": rid, "key": f"metric/{rng.randrange(keys):02d}", "max_points": 500}
    return f"/runs/{rid}/samples", {"limit": 16}


class RawHTTPError(Exception):
    pass


class RawResponse:
    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content


class RawClient:
    """A minimal HTTP/1.1 GET client over keep-alive loopback connections (asyncio streams): the load
    generator's own CPU per request is ~10x lower than httpx's (measured: httpx's AsyncClient used 5-8 ms
    of CPU per request here, more than the server once the server got cheaper, on the same 2 cores).
    Callers bound the concurrency (at most one request per connection at a time); a connection that
    fails or is cancelled mid-request is closed, never reused."""

    def __init__(self, base_url: str) -> None:
        from urllib.parse import urlsplit

        u = urlsplit(base_url)
        self.host, self.port, self.prefix = u.hostname or "127.0.0.1", u.port or 80, u.path.rstrip("/")
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str, params: dict | None = None) -> RawResponse:
        from urllib.parse import urlencode

        target = self.prefix + path + ("?" + urlencode(params) if params else "")
        while self.idle:
            conn = self.idle.pop()
            if not conn[0].at_eof():
                break
            conn[1].close()  # the server closed it while idle (keep-alive timeout)
        else:
            conn = await asyncio.open_connection(self.host, self.port)
            return await self._send(conn, target)
        try:
            return await self._send(conn, target)
        except (OSError, asyncio.IncompleteReadError) as err:
            if isinstance(err, asyncio.IncompleteReadError) and err.partial:
                raise
            # A reused keep-alive connection closed by the server before any byte of the answer (its idle
            # timeout raced this request): retry once on a fresh connection, as HTTP clients do for GETs.
            return await self._send(await asyncio.open_connection(self.host, self.port), target)

    async def _send(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], target: str) -> RawResponse:
        reader, writer = conn
        try:
            writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    parts.append(await reader.readexactly(size + 2))
                    if size == 0:
                        break
                body = b"".join(p[:-2] for p in parts)
            else:
                raise RawHTTPError("response without a length")
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append(conn)
        return RawResponse(status, body)

    async def aclose(self) -> None:
        for _reader, writer in self.idle:
            writer.close()
        self.idle.clear()


RAW_ERRORS = (RawHTTPError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


async def load(base_url: str, run_ids: list[int], keys: int, rate: float, duration: float,
               timeout: float, max_in_flight: int, client_kind: str = "raw", warmup: float = 0.0) -> dict:
    """`warmup` seconds of the same load first, on the same connections, kept apart (`warmup_ms`) from the
    `duration` seconds that are reported: a freshly started server answers from an empty response cache."""
    import httpx

    errors_caught = (httpx.HTTPError, asyncio.TimeoutError, *RAW_ERRORS)

    rng = random.Random(0)
    n_warm = int(rate * warmup)
    total = n_warm + int(rate * duration)
    kinds = rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS], k=total)
    lat: dict[str, list[float]] = {k: [] for k, _ in KINDS}
    timeline: list[tuple[float, float]] = []  # (due second of the load, latency ms) per completed request
    warm_ms: list[float] = []
    errors: dict[str, int] = {}
    late = 0
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    # Requests wait for a connection on this semaphore, not inside httpcore's pool (whose queue is scanned
    # on every state change: quadratic, and it pinned the generator at 100 % CPU with a long queue).
    slots = asyncio.Semaphore(max_in_flight)
    async with contextlib.AsyncExitStack() as stack:
        if client_kind == "httpx":
            client = await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits))
        else:
            client = RawClient(base_url)
            stack.push_async_callback(client.aclose)
        t0 = time.perf_counter()

        async def one(i: int, kind: str) -> None:
            nonlocal late
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                late += 1  # the generator itself fell behind; the latency below still counts from `due`
            path, params = _request(kind, rng, run_ids, keys)
            async with slots:
                try:
                    r = await asyncio.wait_for(client.get(path, params=params), timeout)
                    if r.status_code >= 300:
                        errors[f"HTTP {r.status_code}"] = errors.get(f"HTTP {r.status_code}", 0) + 1
                        return
                except errors_caught as err:
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                    return
            ms = (time.perf_counter() - due) * 1000
            timeline.append((round(i / rate - warmup, 3), round(ms, 2)))
            (lat[kind] if i >= n_warm else warm_ms).append(ms)

        tasks = [asyncio.create_task(one(i, k)) for i, k in enumerate(kinds)]
        # Bounded in time: whatever has not finished `timeout` seconds after the last request was due is
        # cancelled and counted as an error.
        _done, pending = await asyncio.wait(tasks, timeout=warmup + duration + timeout + 5)
        for task in pending:
            task.cancel()
        if pending:
            errors["unfinished at the deadline"] = len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - t0
        # Is the server still serving once the load has stopped? (A single request, generous timeout.)
        await asyncio.sleep(2)
        probe = {}
        for path in ("/health", f"/runs/{run_ids[0]}"):
            t = time.perf_counter()
            try:
                r = await asyncio.wait_for(client.get(path), 15)
                probe[path] = f"HTTP {r.status_code} in {time.perf_counter() - t:.2f} s"
            except errors_caught as err:
                probe[path] = f"{type(err).__name__} after {time.perf_counter() - t:.1f} s"
    return {"sent": total - n_warm, "warmup_s": warmup, "warmup_ms": warm_ms, "elapsed_s": elapsed, "latency_ms": lat, "errors": errors, "late_starts": late,
            "after_load": probe, "timeline": sorted(timeline)}


WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from backend import store
from backend.db import Database
db = Database(sys.argv[2]); run_id = int(sys.argv[3]); n = int(sys.argv[4]); gap = float(sys.argv[5])
time.sleep(float(sys.argv[6]) if len(sys.argv) > 6 else 1.5)  # let the client subscribe
for step in range(1, n + 1):
    now = time.time()
    with db.write_session() as s:
        store.write_metrics(s, run_id, [("loss", step, 1.0 / step, now), ("kl", step, 0.01 * step, now)])
    time.sleep(gap)
with db.write_session() as s:
    store.set_status(s, run_id, "succeeded")
"""


def running_run(url: str, name: str) -> int:
    """A new run marked running, for a writer process (WRITER) to log to: its id."""
    from backend import store
    from backend.db import Database

    db = Database(url)
    with db.write_session() as s:
        run_id = store.create_run(s, {"name": name}).id
        store.set_status(s, run_id, "running")
    db.dispose()
    return run_id


def sse_delays(url: str, data_dir: str, poll: float, steps: int, gap: float) -> list[float]:
    """Seconds from a metric's write to its arrival over SSE, one per step."""
    import httpx
    from series_http import serve


    run_id = running_run(url, f"sse-{poll}")
    delays: list[float] = []
    with serve(url, data_dir, {"KLQ_SSE_POLL_INTERVAL": str(poll)}) as (client, port):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(ROOT), url, str(run_id), str(steps), str(gap)])
        try:
            deadline = time.time() + 1.5 + steps * (gap + 0.5) + 10
            with httpx.stream("GET", f"http://127.0.0.1:{port}/api/v1/runs/{run_id}/events",
                              params={"since_step": 0}, timeout=30) as r:
                event = None
                for line in r.iter_lines():
                    if time.time() > deadline:
                        break
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and event == "metrics":
                        data = json.loads(line.split(":", 1)[1])
                        delays.append(time.time() - data["wall_time"])
                    elif line.startswith("data:") and event == "end":
                        break
        finally:
            writer.wait(60)
    return delays


def _host(url: str) -> str:
    """The URL without user and password."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def _server_version(url: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as c:
        version = c.exec_driver_sql("SHOW server_version").scalar()
    engine.dispose()
    return str(version)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="requests per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--write-every", type=float, default=0.0,
                   help="seconds between metric writes of a live run during the load (0: none, nothing changes)")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds of the same load before those, reported apart (a fresh server's first second)")
    p.add_argument("--timeout", type=float, default=10.0, help="per request")
    p.add_argument("--max-in-flight", type=int, default=64, help="concurrent requests (connections)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--keys", type=int, default=20)
    p.add_argument("--steps", type=int, default=1000, help="metric steps per seeded run")
    p.add_argument("--sse-steps", type=int, default=40, help="metric writes per SSE measurement")
    p.add_argument("--sse-polls", default="1.0,0.5,0.25", help="sse_poll_interval values to measure")
    p.add_argument("--database-url", help="default: SQLite in the fresh data directory")
    p.add_argument("--pg-url", help="admin URL of a PostgreSQL server (e.g. postgresql+psycopg://"
                   "postgres@127.0.0.1:5432/postgres): run against a fresh database created there and "
                   "dropped afterwards")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (klq api --workers)")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="load generator's HTTP client: raw (minimal keep-alive HTTP/1.1, cheap) or httpx")
    p.add_argument("--json")
    a = p.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    from series_http import serve

    with tempfile.TemporaryDirectory(prefix="klq-bench-api-") as tmp, contextlib.ExitStack() as stack:
        if a.pg_url:
            from metrics_store import PostgresDatabase

            pg = PostgresDatabase(a.pg_url)
            url = stack.enter_context(pg)
            server = _host(a.pg_url).rsplit("/", 1)[0]
            database = f"PostgreSQL {_server_version(url)} (fresh database {pg.name} on {server})"
        else:
            url = a.database_url or f"sqlite:///{Path(tmp) / 'klq.db'}"
            database = "SQLite (WAL, fresh file)" if not a.database_url else _host(a.database_url)
        run_ids = seed(url, a.runs, a.keys, a.steps)
        with serve(url, tmp, workers=a.workers) as (client, port):
            import psutil
            from series_http import SERVER_PIDS

            print(f"load: {a.rate:g} requests/s for {a.duration:g} s against 127.0.0.1:{port} ...", flush=True)
            server_proc = psutil.Process(SERVER_PIDS[port])
            if a.workers > 1:  # wait until every worker answers (each imports the app on its own)
                for _ in range(30):
                    if len(server_proc.children(recursive=True)) >= a.workers:
                        break
                    time.sleep(0.5)
                for _ in range(4 * a.workers):
                    client.get("/health")
            # the server's CPU: the uvicorn process and, with --workers, its worker processes
            procs = [server_proc, *server_proc.children(recursive=True)]

            def server_cpu() -> float:
                total = 0.0
                for proc in procs:
                    with contextlib.suppress(psutil.Error):
                        total += sum(proc.cpu_times()[:2])
                return total

            writer = None
            if a.write_every > 0:
                # A training run logging during the load: every commit empties the API's response cache
                # (backend/http_cache.py), so the reads pay for misses as they do while runs train.
                live = running_run(url, "live-writer")
                steps = int((a.warmup + a.duration) / a.write_every) + 1
                writer = subprocess.Popen([sys.executable, "-c", WRITER, str(ROOT), url, str(live), str(steps),
                                           str(a.write_every), "0"])
            server_cpu0, own_cpu0 = server_cpu(), time.process_time()
            result = asyncio.run(load(f"http://127.0.0.1:{port}/api/v1", run_ids, a.keys, a.rate, a.duration,
                                      a.timeout, a.max_in_flight, a.client, a.warmup))
            if writer is not None:
                writer.wait(60)
            # CPU seconds over the load, its drain and the probe: what one request costs the server process
            # (and this generator), hence the most it could serve per second with a whole core to itself.
            result["server_cpu_s"] = server_cpu() - server_cpu0
            result["generator_cpu_s"] = time.process_time() - own_cpu0
            result["load_end"] = os.getloadavg()
        sse: dict[str, list[float]] = {}
        for poll in [float(x) for x in a.sse_polls.split(",") if x]:
            print(f"SSE: log -> visible with sse_poll_interval {poll:g} s ({a.sse_steps} writes) ...", flush=True)
            sse[f"{poll:g}"] = sse_delays(url, tmp, poll, a.sse_steps, 0.37)

    print()
    print(f"# api_load  {started}  {machine()}")
    procs = "one uvicorn process" if a.workers == 1 else f"uvicorn with {a.workers} worker processes"
    print(f"server: {procs} (backend.main:create_app), {database}; "
          f"{a.runs} runs x {a.keys} keys x {a.steps:,} steps; open loop {a.rate:g}/s for {a.duration:g} s "
          f"({result['sent']:,} requests, finished in {result['elapsed_s']:.1f} s, {result['late_starts']} late starts); "
          f"client {a.client}"
          + (f"; a live run writing 2 points every {a.write_every:g} s during the load" if a.write_every > 0
             else "; nothing written during the load"))
    print()
    print(f"{'kind':<10} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    every: list[float] = []
    for kind, ms in result["latency_ms"].items():
        every += ms
        if ms:
            print(f"{kind:<10} {len(ms):>6} {statistics.median(ms):8.1f} {percentile(ms, .95):8.1f} "
                  f"{percentile(ms, .99):8.1f} {max(ms):8.1f}")
    n_err = sum(result["errors"].values())
    med = statistics.median(every) if every else float("nan")
    print(f"{'all':<10} {len(every):>6} {med:8.1f} {percentile(every, .95):8.1f} "
          f"{percentile(every, .99):8.1f} {max(every, default=float('nan')):8.1f}   errors {n_err} "
          f"{result['errors'] or ''}   (goal p99 < 200 ms, no errors)")
    slow = [(t, ms) for t, ms in result["timeline"] if ms > 100]
    if slow:
        by_second: dict[int, list[float]] = {}
        for t, ms in slow:
            by_second.setdefault(math.floor(t), []).append(ms)
        print(f"requests over 100 ms: {len(slow)}, by second of the load (negative: warm-up; count, max ms): "
              + ", ".join(f"{sec}s {len(v)} {max(v):.0f}" for sec, v in sorted(by_second.items())))
    warm = result["warmup_ms"]
    if warm:
        print(f"warm-up, the {result['warmup_s']:g} s before (not in the rows above): {len(warm)} requests, "
              f"p50 {statistics.median(warm):.1f} ms, p99 {percentile(warm, .99):.1f} ms, max {max(warm):.1f} ms")
    print(f"after the load stopped: {result['after_load']}")
    served = len(every) + len(warm)
    per_req = result["server_cpu_s"] / served * 1000 if served else float("nan")
    cap = 1000 / per_req if served else float("nan")
    load_end = " ".join(f"{x:.2f}" for x in result["load_end"])
    print(f"CPU over the load: server {result['server_cpu_s']:.1f} s for {served:,} completed requests "
          f"({per_req:.1f} ms each: at most {cap:.0f} requests/s per whole core), "
          f"load generator {result['generator_cpu_s']:.1f} s; wall {result['elapsed_s']:.1f} s; "
          f"load average at the end {load_end}")
    print()
    print(f"{'SSE log -> visible':<28} {'n':>4} {'p50 s':>7} {'p95 s':>7} {'max s':>7}")
    for poll, ds in sse.items():
        if ds:
            print(f"sse_poll_interval {poll:<9} s {len(ds):>4} {statistics.median(ds):7.3f} {percentile(ds, .95):7.3f} "
                  f"{max(ds):7.3f}   (goal p95 < 1 s)")
        else:
            print(f"sse_poll_interval {poll:<9} s: no events received")
    if a.json:
        Path(a.json).write_text(json.dumps({"started": started, "machine": machine(), "args": vars(a),
                                            "load": result, "sse_s": sse}, indent=2))


if __name__ == "__main__":
    main()
