"""What every part of the data layer shares: its exceptions and the SQL helpers (batched inserts, upserts,
values made storable)."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import literal, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..models import UTCDateTime, utcnow


class NotFound(LookupError):
    """The row does not exist."""


class Conflict(RuntimeError):
    """The request is valid but not in the row's current state (e.g. deleting a running run)."""


class LeaseLost(RuntimeError):
    """A worker's write was refused: it no longer holds the lease of its run or judgement (another worker
    took it over after its heartbeat went stale, or it was finished, cancelled or deleted meanwhile)."""


# Rows per multi-row INSERT. The bound-parameter limit is respected on top of this: SQLite's is read from
# the connection (999 on old builds, 32766 on newer ones), PostgreSQL's is 65535 per statement.
MAX_ROWS_PER_STATEMENT = 1000
_PG_MAX_PARAMS = 65535


def _max_params(session: Session) -> int:
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        raw = conn.connection.dbapi_connection
        try:
            return int(raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        except (AttributeError, sqlite3.Error):  # Python < 3.11
            return 999
    return _PG_MAX_PARAMS


def rows_per_statement(session: Session, columns: int) -> int:
    return max(1, min(MAX_ROWS_PER_STATEMENT, _max_params(session) // columns))


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def dialect_insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT with ON CONFLICT support (SQLite >= 3.24 and PostgreSQL share the syntax)."""
    return (pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert)(table)


def upsert_many(
    session: Session,
    table: Any,
    rows: list[dict[str, Any]],
    conflict: Sequence[str],
    update_columns: Sequence[str] | None,
) -> None:
    """INSERT ... ON CONFLICT (conflict) DO UPDATE SET update_columns (or DO NOTHING), executemany."""
    if not rows:
        return
    stmt = dialect_insert(session, table)
    if update_columns:
        stmt = stmt.on_conflict_do_update(
            index_elements=list(conflict), set_={c: getattr(stmt.excluded, c) for c in update_columns}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
    session.execute(stmt, rows)


def finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def float_or_none(value: Any) -> float | None:
    """NaN becomes NULL (SQLite would store it as NULL anyway); +-inf is kept."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def now_param() -> Any:
    return literal(utcnow(), UTCDateTime())



def update_rows(session: Session, model: Any, *where: Any, values: Mapping[str, Any], commit: bool) -> bool:
    """One ``UPDATE model SET values WHERE where`` (the session's objects are not synchronised), committed
    if ``commit``. Returns whether a row changed."""
    changed = session.execute(
        update(model).where(*where).values(**values).execution_options(synchronize_session=False)
    ).rowcount
    if commit:
        session.commit()
    return bool(changed)
