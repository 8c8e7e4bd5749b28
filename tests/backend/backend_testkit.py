"""Helpers of the backend tests: real uvicorn servers on SQLite and on PostgreSQL.

Each database kind gets, once per test session, a fresh database (a new SQLite file; for PostgreSQL a
new ``klq_test_<random>`` database created through the ``postgres`` database and dropped at the end), a
fresh data directory, the migrations applied, and a uvicorn process on a free port. Tests talk to it
over HTTP and write worker-side rows (metrics, samples, ...) straight through ``backend.store``, as a
worker does. PostgreSQL tests are skipped, saying why, if 127.0.0.1:5432 does not answer.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
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


# ------------------------------------------------------------------------------------- private PostgreSQL


def _pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary: the newest /usr/lib/postgresql/<version>/bin, else one on PATH."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    for folder in reversed(versions):
        if os.access(Path(folder) / name, os.X_OK):
            return str(Path(folder) / name)
    return shutil.which(name)


class PrivatePostgres:
    """A PostgreSQL server of this test's own (initdb in a temporary directory, a free port, trust auth,
    one database ``klq``) that the test may stop and start again on the same port, as a database restart
    or outage would. PostgreSQL refuses to run as root, so as root its binaries run as the ``postgres``
    user (runuser) in a directory that user owns."""

    def __init__(self) -> None:
        import pwd

        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.as_user: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="klq-private-pg-"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/klq"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.as_user, *args], check=True, timeout=timeout, capture_output=True)

    def create(self) -> None:
        """initdb, start, and create the ``klq`` database."""
        self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        self.start()
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE klq")

    def start(self) -> None:
        """Start the server (on the same port as before) and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = [self.pg_ctl, "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", "-t", "60", "start"]
        try:
            self._run(*start, timeout=90)
        except subprocess.CalledProcessError as err:
            raise RuntimeError(f"PostgreSQL did not start: {err.stderr!r}\n{self.log()}") from err

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" ends every session (a restart, `pg_ctl restart`), "immediate" is a crash."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", timeout=90)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def destroy(self) -> None:
        if self.running():
            with contextlib.suppress(subprocess.SubprocessError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server (see PrivatePostgres), skipped, saying why, where none can be made."""
    server = PrivatePostgres()
    if server.initdb is None or server.pg_ctl is None:
        pytest.skip("the PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    if server.as_user and not shutil.which("runuser"):
        pytest.skip("running as root without runuser: PostgreSQL cannot be started as another user")
    try:
        server.create()
        yield server
    finally:
        server.destroy()


@contextlib.contextmanager
def served_database(
    kind: str, tmp: Path, data_dir: Path | None = None, **env_overrides: str
) -> Iterator[Server]:
    """A fresh database of ``kind`` under ``tmp``, migrated to head, behind a real uvicorn server whose data
    directory is ``data_dir`` (default ``tmp / "data"``); on exit the server is stopped and the database
    removed. The set-up every server fixture of the backend and dashboard tests shares."""
    from backend import migrate

    with fresh_database(kind, tmp) as url:
        migrate.upgrade(url)
        server = start_server(kind, url, data_dir or tmp / "data", **env_overrides)
        try:
            yield server
        finally:
            stop_server(server)
