"""Fixtures of the worker tests (see worker_testkit for what a stack is).

Two stacks, each built once per test session and shared by the tests that only need a worker on it:
``sqlite-fs`` (SQLite + kombu's filesystem transport) and ``postgres-redis`` (a fresh PostgreSQL database
+ Redis at 127.0.0.1:6379 under a private key prefix). Tests that kill or add workers use their own queue
on the same stack.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_testkit import REDIS_URL, Stack, make_stack, private_postgres  # noqa: F401  (a fixture)

PREBUILT_ASSETS = os.environ.get("KLQ_TEST_PREBUILT_ASSETS")


def _redis_unavailable_reason(url: str) -> str | None:
    try:
        import redis

        conn = redis.Redis.from_url(url, socket_connect_timeout=2)
        conn.ping()
        conn.close()
    except Exception as err:
        return f"Redis at {url} is unreachable ({type(err).__name__}: {err})"
    return None


@pytest.fixture(scope="session")
def worker_assets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in task's assets, built (or found) once per session; each stack copies them (1 MB).

    A current copy at $KLQ_TEST_PREBUILT_ASSETS when that is set; else the session's `builtin_assets`
    fixture (tests/conftest.py); else a current copy at /tmp/klqdata/assets/builtin; else a build (about
    a minute on two cores)."""
    from klq.tasks.builtin import _is_current, ensure_assets

    if PREBUILT_ASSETS and _is_current(Path(PREBUILT_ASSETS)):
        return Path(PREBUILT_ASSETS)
    with contextlib.suppress(pytest.FixtureLookupError):
        provided = request.getfixturevalue("builtin_assets")
        path = Path(getattr(provided, "path", provided))
        if _is_current(path):
            return path
        if _is_current(path / "builtin"):
            return path / "builtin"
    if _is_current(Path("/tmp/klqdata/assets/builtin")):
        return Path("/tmp/klqdata/assets/builtin")
    return ensure_assets(tmp_path_factory.mktemp("worker-assets") / "builtin", log=lambda _msg: None)


STACKS = [
    pytest.param("sqlite-fs", id="sqlite-fs"),
    pytest.param("postgres-redis", id="postgres-redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
]


@contextlib.contextmanager
def _private_redis_prefix() -> Iterator[str]:
    """A key prefix of this stack's own on the shared Redis at REDIS_URL (skipped, saying why, if it does
    not answer); its keys are deleted afterwards."""
    reason = _redis_unavailable_reason(REDIS_URL)
    if reason:
        pytest.skip(reason)
    prefix = f"klqworkertest-{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        import redis

        conn = redis.Redis.from_url(REDIS_URL)
        for key in conn.scan_iter(match=prefix + "*"):
            conn.delete(key)
        conn.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A private key prefix on the shared Redis broker, for a test that makes a stack of its own."""
    with _private_redis_prefix() as prefix:
        yield prefix


def _stack(name: str, tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"stack-{name}")
    if name == "sqlite-fs":
        yield from make_stack(name, "sqlite", tmp, assets)
        return
    with _private_redis_prefix() as prefix:
        yield from make_stack(name, "postgres", tmp, assets, broker_url=REDIS_URL, redis_prefix=prefix)


@pytest.fixture(scope="session", params=STACKS)
def stack(request: pytest.FixtureRequest, tmp_path_factory, worker_assets: Path) -> Iterator[Stack]:
    """A stack of each kind with one worker on its "main" queue, shared by the tests."""
    gen = _stack(request.param, tmp_path_factory, worker_assets)
    s = next(gen)
    s.start_worker("main")
    try:
        yield s
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)


@pytest.fixture
def client(stack: Stack):
    with stack.client() as c:
        yield c


@pytest.fixture
def main_worker(stack: Stack):
    """The stack's shared worker, once it has ended the tasks of earlier tests."""
    from worker_testkit import wait_for

    worker = stack.workers[0]
    wait_for(worker.idle, 60, "the shared worker to end its earlier tasks")
    return worker


@pytest.fixture
def extra_workers(stack: Stack) -> Iterator[list]:
    """Workers a test starts beyond the shared one; stopped (or already killed) at the end of the test."""
    started: list = []
    yield started
    stack.stop_workers(started)


# ------------------------------------------------------------------------------------------ private Redis


class PrivateRedis:
    """A redis-server of this test's own on a free port (no persistence), which the test may kill and
    start again on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.tmp = tmp
        from worker_testkit import free_port

        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.tmp / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{(self.tmp / 'redis.log').read_text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
