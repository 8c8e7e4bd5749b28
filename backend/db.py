"""Engines and sessions.

``Database(url)`` holds two engines on the same database:

* ``engine`` for reads: plain (deferred) transactions, so many readers run beside one writer (WAL);
* ``write_engine`` for writes: on SQLite every transaction starts with ``BEGIN IMMEDIATE``, which takes
  the write lock up front and waits for it (``busy_timeout``) instead of failing with "database is
  locked" when a transaction that has already read tries to upgrade to a write while another process
  (a worker writing metrics) holds the lock. On PostgreSQL both are the same engine.

Use ``db.session()`` for reads and ``db.write_session()`` for anything that writes, e.g.::

    db = Database.from_settings()
    with db.write_session() as session:
        store.write_metrics(session, run_id, rows)      # commits

SQLite connections get ``journal_mode=WAL``, ``foreign_keys=ON``, ``busy_timeout`` and
``synchronous=NORMAL`` (durable across application crashes; WAL keeps the database consistent after
a power loss, possibly losing the last transactions).

Outages. PostgreSQL connections are checked before use (``pool_pre_ping``: a connection dropped by a
database restart is replaced, so the pool recovers by itself) and give up connecting after
``KLQ_DB_CONNECT_TIMEOUT`` seconds. ``unavailable_reason`` tells an error that means "the database cannot
be reached right now" (the API answers 503, backend/errors.py) from one a retry would not fix;
``retry_while_unavailable`` retries a whole transaction with backoff (the worker's writes, worker/sink.py).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .settings import Settings, get_settings

_json_dumps = partial(json.dumps, allow_nan=False, ensure_ascii=False)


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean psycopg 3 here (psycopg2 is not a dependency)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(
    url: str,
    *,
    write: bool = False,
    busy_timeout_ms: int = 30_000,
    foreign_keys: bool = True,
    connect_timeout_s: float = 5.0,
    **kwargs: Any,
) -> Engine:
    url = normalize_url(url)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            json_serializer=_json_dumps,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
            **kwargs,
        )
        begin_sql = "BEGIN IMMEDIATE" if write else "BEGIN"

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy (the "begin" hook below) control transactions instead of pysqlite.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql(begin_sql)

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    connect_args = dict(kwargs.pop("connect_args", {}))
    # libpq counts whole seconds (and treats 1 as 2); without a limit a connect to an unreachable host
    # waits for the OS's TCP timeout (minutes), and every request hangs with it.
    connect_args.setdefault("connect_timeout", max(2, round(connect_timeout_s)))
    return create_engine(url, json_serializer=_json_dumps, connect_args=connect_args, **kwargs)


class Database:
    def __init__(
        self, url: str, *, busy_timeout_ms: int = 30_000, connect_timeout_s: float = 5.0, **engine_kwargs: Any
    ) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = is_sqlite(self.url)
        self.engine = make_engine(
            self.url, busy_timeout_ms=busy_timeout_ms, connect_timeout_s=connect_timeout_s, **engine_kwargs
        )
        if self.is_sqlite:
            self.write_engine = make_engine(
                self.url, write=True, busy_timeout_ms=busy_timeout_ms, **engine_kwargs
            )
        else:
            self.write_engine = self.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)
        # data_version's state on SQLite: a connection of its own that never writes
        self._watch: sqlite3.Connection | None = None
        self._watch_lock = threading.Lock()
        self._watch_seen: int | None = None
        self._watch_changes = 0
        self._watch_epoch = secrets.token_hex(4)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Database:
        settings = settings or get_settings()
        pool: dict[str, int] = {}
        if make_url(normalize_url(settings.resolved_database_url)).database not in (None, "", ":memory:"):
            # Room for every request the API admits at once, two connections each (backend/concurrency.py),
            # plus the uncounted ones (health, server-sent events' polls).
            pool = {
                "pool_size": settings.api_max_concurrency,
                "max_overflow": settings.api_max_concurrency + 8,
            }
        return cls(
            settings.resolved_database_url,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            connect_timeout_s=settings.db_connect_timeout,
            **pool,
        )

    def session(self) -> Session:
        """A session for reads (use as a context manager)."""
        return self._read()

    def write_session(self) -> Session:
        """A session for writes; on SQLite its transactions take the write lock at BEGIN."""
        return self._write()

    def data_version(self, session: Session) -> str | None:
        """A token that changes whenever anything is committed to the database, by any connection of any
        process; None when it cannot tell. Call it before ``session`` reads anything: what the session reads
        afterwards is then at least as new as the token (a response cached under it is never older than
        the data the token stands for; a commit after the call only makes the next call's token differ).

        PostgreSQL: the WAL insert position (every commit writes WAL; other writes advance it too, which
        only costs cache hits), one indexless query. SQLite: ``PRAGMA data_version`` on a connection of
        this object's own that never writes (it changes when any other connection commits), counted up
        per change and prefixed with a random id of this object (tokens of two processes never match)."""
        if not self.is_sqlite:
            lsn = (
                session.connection()
                .exec_driver_sql(
                    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END"
                )
                .scalar()
            )
            return None if lsn is None else f"pg-{lsn}"
        database = make_url(self.url).database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        with self._watch_lock:
            if self._watch is None:
                self._watch = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
            version = self._watch.execute("PRAGMA data_version").fetchone()[0]
            if version != self._watch_seen:
                self._watch_seen = version
                self._watch_changes += 1
            return f"sqlite-{self._watch_epoch}-{self._watch_changes}"

    def dispose(self) -> None:
        with self._watch_lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()


def finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


# ------------------------------------------------------------------------------------------------ outages

T = TypeVar("T")


# PostgreSQL errors of the OperationalError class that say nothing about reachability: a lock not granted
# within lock_timeout, a statement cancelled (statement_timeout, pg_cancel_backend).
_NOT_AN_OUTAGE = ("55P03", "57014")


class DatabaseUnavailable(RuntimeError):
    """The database stayed unreachable for longer than the caller would wait (KLQ_DB_RETRY_TIMEOUT)."""


def unavailable_reason(err: BaseException) -> str | None:
    """The driver's message (first line) if ``err`` means the database cannot be reached right now: a
    refused, timed-out or dropped connection, a server shutting down or starting up, SQLite's lock held
    past its busy timeout. None for errors a retry would not fix (bad SQL, a constraint, a bad value)."""
    if not isinstance(err, OperationalError | InterfaceError) and not (
        isinstance(err, DBAPIError) and err.connection_invalidated
    ):
        return None
    orig = getattr(err, "orig", None) or err
    if getattr(orig, "sqlstate", None) in _NOT_AN_OUTAGE:
        return None
    lines = str(orig).strip().splitlines()
    return (lines[0] if lines else type(orig).__name__)[:300]


def retry_while_unavailable(
    fn: Callable[[], T],
    *,
    timeout: float,
    what: str,
    log: logging.Logger,
    first_delay: float = 0.25,
    max_delay: float = 5.0,
) -> T:
    """``fn()``, called again with exponential backoff while it fails because the database is unreachable
    (``unavailable_reason``), for up to ``timeout`` seconds; then DatabaseUnavailable naming ``what``.
    Any other error is raised at once. ``fn`` must be one whole transaction and idempotent: a commit whose
    acknowledgement was lost is repeated (the worker's writes are upserts)."""
    deadline = time.monotonic() + timeout
    delay, failures = first_delay, 0
    while True:
        try:
            result = fn()
        except Exception as err:
            reason = unavailable_reason(err)
            if reason is None:
                raise
            failures += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"the database was unreachable for more than {timeout:g} s (KLQ_DB_RETRY_TIMEOUT) "
                    f"while {what}: {reason}"
                ) from err
            log.warning(
                "%s: the database is unreachable (%s); retry %d in %.1f s (gives up after %g s)",
                what,
                reason,
                failures,
                min(delay, left),
                timeout,
            )
            time.sleep(min(delay, left))
            delay = min(2 * delay, max_delay)
            continue
        if failures:
            log.warning("%s: done, the database is back (after %d failed attempts)", what, failures)
        return result
