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
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
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
    url: str, *, write: bool = False, busy_timeout_ms: int = 30_000, foreign_keys: bool = True, **kwargs: Any
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
    return create_engine(url, json_serializer=_json_dumps, **kwargs)


class Database:
    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000, **engine_kwargs: Any) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = is_sqlite(self.url)
        self.engine = make_engine(self.url, busy_timeout_ms=busy_timeout_ms, **engine_kwargs)
        if self.is_sqlite:
            self.write_engine = make_engine(
                self.url, write=True, busy_timeout_ms=busy_timeout_ms, **engine_kwargs
            )
        else:
            self.write_engine = self.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Database:
        settings = settings or get_settings()
        pool: dict[str, int] = {}
        if make_url(normalize_url(settings.resolved_database_url)).database not in (None, "", ":memory:"):
            # Room for every request the API admits at once, two connections each (backend/concurrency.py),
            # plus the uncounted ones (health, server-sent events' polls).
            pool = {"pool_size": settings.api_max_concurrency, "max_overflow": settings.api_max_concurrency + 8}
        return cls(settings.resolved_database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms, **pool)

    def session(self) -> Session:
        """A session for reads (use as a context manager)."""
        return self._read()

    def write_session(self) -> Session:
        """A session for writes; on SQLite its transactions take the write lock at BEGIN."""
        return self._write()

    def dispose(self) -> None:
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()


def finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
