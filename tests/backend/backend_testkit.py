"""Helpers of the backend tests: real uvicorn servers on SQLite and on PostgreSQL.

Each database kind gets, once per test session, a fresh database (a new SQLite file; for PostgreSQL a
new ``klq_test_<random>`` database created through the ``postgres`` database and dropped at the end), a
fresh data directory, the migrations applied, and a uvicorn process on a free port. Tests talk to it
over HTTP and write worker-side rows (metrics, samples, ...) straight through ``backend.store``, as a
worker does. PostgreSQL tests are skipped, saying why, if 127.0.0.1:5432 does not answer.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from backend.db import Database

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("KLQ_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BASE = PG_ADMIN_URL.rsplit("/", 1)[0]
REDIS_URL = os.environ.get("KLQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_unavailable_reason() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as err:  # any failure means: no usable PostgreSQL here
        return f"PostgreSQL at {PG_ADMIN_URL} is unreachable ({type(err).__name__}: {err})"
    return None


@contextlib.contextmanager
def fresh_database(kind: str, tmp: Path) -> Iterator[str]:
    """A SQLAlchemy URL of a new, empty database of this kind, removed afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'klq.db'}"
        return
    reason = pg_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import psycopg

    name = f"klq_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_BASE.split('://', 1)[1]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Server:
    kind: str
    url: str  # base URL, e.g. http://127.0.0.1:PORT
    database_url: str
    data_dir: Path
    token: str
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    _db: Database | None = None

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    def client(self, token: str | None = "admin", **kwargs) -> httpx.Client:
        headers = {}
        if token == "admin":
            token = self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.api, headers=headers, **kwargs)

    @property
    def db(self) -> Database:
        """Direct database access, as a worker has."""
        if self._db is None:
            self._db = Database(self.database_url)
        return self._db

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def broker_messages(self) -> list[Path]:
        folder = self.data_dir / "broker" / "messages"
        return sorted(folder.glob("*.msg")) if folder.exists() else []


def start_server(kind: str, database_url: str, data_dir: Path, **env_overrides: str) -> Server:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "models").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLQ_")}
    env.update(
        KLQ_DATA_DIR=str(data_dir),
        KLQ_DATABASE_URL=database_url,
        KLQ_SSE_POLL_INTERVAL="0.1",
        PYTHONUNBUFFERED="1",
    )
    env.update(env_overrides)
    port = free_port()
    log_path = data_dir / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "backend.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/api/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    token = (data_dir / "api_token").read_text().strip()
    return Server(kind, url, database_url, data_dir, token, proc, log_path, env)


def stop_server(server: Server) -> None:
    if server._db is not None:
        server._db.dispose()
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5)


def small_config(**extra) -> dict:
    """A valid, small run configuration."""
    cfg = {"train": {"total_episodes": 64, "batch_size": 8, "minibatch_size": 4, "micro_batch_size": 4}}
    cfg.update(extra)
    return cfg


def create_run(client: httpx.Client, **body) -> dict:
    body.setdefault("config", small_config())
    r = client.post("/runs", json=body)
    assert r.status_code == 201, r.text
    return r.json()
