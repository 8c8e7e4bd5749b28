"""Metrics: a run's scalar series (``metrics``) and each key's latest point (``metric_latest``), written in
batches by its worker and read for plots, streams, exports and the run list."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..models import Metric, MetricLatest, Run
from . import leases
from ._common import chunks, float_or_none, rows_per_statement

MetricRow = tuple[str, int, float | None, float | None]  # (key, step, value, wall_time)

_METRIC_COLUMNS = ("run_id", "key", "step", "value", "wall_time")
_METRIC_SQL: dict[tuple[str, int, str], str] = {}
_LATEST_SQL: dict[tuple[str, str, int, str], str] = {}
PG_METRIC_ROWS_PER_STATEMENT = 10_000


def _conflict_action(on_conflict: str) -> str:
    if on_conflict == "update":
        return "ON CONFLICT (run_id, key, step) DO UPDATE SET value = excluded.value, wall_time = excluded.wall_time"
    return "ON CONFLICT (run_id, key, step) DO NOTHING"


def _metric_sql(paramstyle: str, n: int, on_conflict: str) -> str:
    """Multi-row VALUES insert with n rows (SQLite)."""
    cache_key = (paramstyle, n, on_conflict)
    sql = _METRIC_SQL.get(cache_key)
    if sql is None:
        ph = "?" if paramstyle == "qmark" else "%s"
        row = "(" + ", ".join([ph] * len(_METRIC_COLUMNS)) + ")"
        sql = (
            f"INSERT INTO metrics ({', '.join(_METRIC_COLUMNS)}) VALUES "
            + ", ".join([row] * n)
            + " "
            + _conflict_action(on_conflict)
        )
        _METRIC_SQL[cache_key] = sql
    return sql


def _pg_metric_sql(on_conflict: str) -> str:
    """One array per column, unnested server-side: 5 parameters whatever the number of rows (PostgreSQL)."""
    return (
        f"INSERT INTO metrics ({', '.join(_METRIC_COLUMNS)}) "
        "SELECT * FROM unnest(%s::integer[], %s::varchar[], %s::bigint[], %s::float8[], %s::float8[]) "
        + _conflict_action(on_conflict)
    )


def _latest_sql(postgresql: bool, paramstyle: str, n: int, on_conflict: str) -> str:
    """One ``INSERT ... ON CONFLICT DO UPDATE`` into metric_latest for n keys, as a driver-level string:
    multi-row VALUES (SQLite; n rows) or one array per column, unnested server-side (PostgreSQL; any n).
    A key's latest point only moves forward: to a newer step, or with ``update`` also to a rewrite of the
    same step (the newest value wins, as in ``metrics``)."""
    cache_key = ("latest", "pg" if postgresql else paramstyle, 0 if postgresql else n, on_conflict)
    sql = _LATEST_SQL.get(cache_key)
    if sql is None:
        newer = ">=" if on_conflict == "update" else ">"
        cols = ", ".join(_METRIC_COLUMNS)
        if postgresql:
            source = (
                "SELECT * FROM unnest(%s::integer[], %s::varchar[], %s::bigint[], %s::float8[], %s::float8[])"
            )
        else:
            ph = "?" if paramstyle == "qmark" else "%s"
            row = "(" + ", ".join([ph] * len(_METRIC_COLUMNS)) + ")"
            source = "VALUES " + ", ".join([row] * n)
        sql = (
            f"INSERT INTO metric_latest ({cols}) {source} "
            "ON CONFLICT (run_id, key) DO UPDATE SET step = excluded.step, value = excluded.value, "
            f"wall_time = excluded.wall_time WHERE excluded.step {newer} metric_latest.step"
        )
        _LATEST_SQL[cache_key] = sql
    return sql


def write_metrics(
    session: Session,
    run_id: int,
    rows: Iterable[MetricRow | tuple[str, int, float | None]],
    *,
    on_conflict: Literal["update", "ignore"] = "update",
    owner: str | None = None,
    commit: bool = True,
) -> int:
    """Store metric points ``(key, step, value[, wall_time])`` for a run, idempotently.

    Writing the same (run, key, step) again keeps one row: with ``on_conflict="update"`` (default) the
    newest value wins (a run resumed from a checkpoint re-logs the steps after it), with "ignore" the
    first. Rows go in batched ``INSERT ... ON CONFLICT`` statements: on SQLite multi-row VALUES chunked
    so that the connection's bound-parameter limit is never reached, on PostgreSQL one array per column
    (``unnest``, 5 parameters per statement) in chunks of 10,000 rows. NaN values are
    stored as NULL. ``metric_latest`` is updated in the same transaction. Returns the number of
    distinct points written. With ``owner`` (a worker's write) only while that worker holds the run's
    lease: else LeaseLost and nothing is written (``leases.require_lease``).
    """
    now = time.time()
    dedup: dict[tuple[str, int], tuple[Any, ...]] = {}
    for row in rows:
        key, step, value = row[0], int(row[1]), row[2]
        wall = row[3] if len(row) > 3 else None
        if not isinstance(key, str) or not key or len(key) > 200:
            raise ValueError(f"metric key must be a non-empty string of at most 200 characters, got {key!r}")
        dedup[(key, step)] = (
            run_id,
            key,
            step,
            float_or_none(value),
            float(wall) if wall is not None else now,
        )
    if not dedup:
        return 0
    if owner is not None:
        leases.require_lease(session, Run, run_id, owner)
    values = list(dedup.values())
    conn = session.connection()
    dialect = conn.dialect
    if dialect.name == "postgresql":
        sql = _pg_metric_sql(on_conflict)
        for chunk in chunks(values, PG_METRIC_ROWS_PER_STATEMENT):
            conn.exec_driver_sql(sql, tuple(list(col) for col in zip(*chunk, strict=True)))
    else:
        per = rows_per_statement(session, len(_METRIC_COLUMNS))
        for chunk in chunks(values, per):
            sql = _metric_sql(dialect.paramstyle, len(chunk), on_conflict)
            conn.exec_driver_sql(sql, tuple(v for row in chunk for v in row))

    latest: dict[str, tuple[Any, ...]] = {}
    for row in values:
        cur = latest.get(row[1])
        if cur is None or row[2] >= cur[2]:
            latest[row[1]] = row
    # One core-SQL statement (not the ORM bulk path: that was ~27 % of a 20-point per-step call).
    tops = list(latest.values())
    if dialect.name == "postgresql":
        sql = _latest_sql(True, dialect.paramstyle, 0, on_conflict)
        for chunk in chunks(tops, PG_METRIC_ROWS_PER_STATEMENT):
            conn.exec_driver_sql(sql, tuple(list(col) for col in zip(*chunk, strict=True)))
    else:
        for chunk in chunks(tops, per):
            sql = _latest_sql(False, dialect.paramstyle, len(chunk), on_conflict)
            conn.exec_driver_sql(sql, tuple(v for row in chunk for v in row))
    if commit:
        session.commit()
    return len(values)


def metric_keys(session: Session, run_id: int) -> list[MetricLatest]:
    return list(
        session.scalars(select(MetricLatest).where(MetricLatest.run_id == run_id).order_by(MetricLatest.key))
    )


def latest_metrics(
    session: Session, run_ids: Sequence[int], keys: Sequence[str] | None = None
) -> dict[int, dict[str, Any]]:
    """Latest value per key for several runs in one query: {run_id: {key: row}}, each row a read-only
    driver row ``(run_id, key, step, value, wall_time)`` with those attribute names too (as a MetricLatest
    has). Not ORM objects: a page of 50 runs has 1,000 of them, and building ORM instances was most of the
    run list's CPU (bench/NOTES.md, API under load)."""
    out: dict[int, dict[str, Any]] = {rid: {} for rid in run_ids}
    if not run_ids:
        return out
    conn = session.connection()
    ph = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    ids = list(dict.fromkeys(int(r) for r in run_ids))
    sql = f"SELECT run_id, key, step, value, wall_time FROM metric_latest WHERE run_id IN ({', '.join([ph] * len(ids))})"
    params: list[Any] = [*ids]
    if keys:
        wanted = list(dict.fromkeys(keys))
        sql += f" AND key IN ({', '.join([ph] * len(wanted))})"
        params += wanted
    for row in conn.exec_driver_sql(sql + " ORDER BY run_id, key", tuple(params)).all():  # fetchall
        out[row[0]][row[1]] = row
    return out



def metric_points(
    session: Session,
    run_id: int,
    key: str,
    *,
    since_step: int | None = None,
    until_step: int | None = None,
) -> list[tuple[int, float | None, float | None]]:
    """(step, value, wall_time) of one series in step order, steps in (since_step, until_step]."""
    stmt = select(Metric.step, Metric.value, Metric.wall_time).where(
        Metric.run_id == run_id, Metric.key == key
    )
    if since_step is not None:
        stmt = stmt.where(Metric.step > since_step)
    if until_step is not None:
        stmt = stmt.where(Metric.step <= until_step)
    return [tuple(r) for r in session.execute(stmt.order_by(Metric.step)).all()]


_FINITE = "value BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308"  # NaN is NULL; +-inf excluded


@dataclass
class PlotPoints:
    points: list[tuple[int, float, float | None]]  # finite (step, value, wall_time), in step order
    total: int  # finite points in the requested range
    last_step: int | None  # largest step in the range (whatever its value)
    preselected: bool  # True: per-bucket minima and maxima (and both ends), not every point


def plot_points(
    session: Session,
    run_id: int,
    key: str,
    *,
    since_step: int | None = None,
    until_step: int | None = None,
    max_points: int = 500,
    ratio: int = 4,
) -> PlotPoints:
    """The points of one series needed to draw it with ``max_points`` points, read cheaply.

    Short ranges (at most ``ratio * max_points`` steps) are read whole. Longer ones are reduced in the
    database: the step range is cut into ``ratio * max_points / 2`` buckets and only each bucket's
    minimum and maximum (with their real steps) and the first and last points come back - the
    preselection step of MinMaxLTTB done by SQL, so a 1M-point series never crosses into Python. Spikes
    are bucket extremes and so always among the candidates.
    """
    conn = session.connection()
    ph = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    where = f"run_id = {ph} AND key = {ph}"
    params: list[Any] = [run_id, key]
    if since_step is not None:
        where += f" AND step > {ph}"
        params.append(since_step)
    if until_step is not None:
        where += f" AND step <= {ph}"
        params.append(until_step)

    def one(sql: str, extra: Sequence[Any] = ()) -> Any:
        return conn.exec_driver_sql(sql, (*extra, *params)).first()

    last = one(f"SELECT step FROM metrics WHERE {where} ORDER BY step DESC LIMIT 1")
    if last is None:
        return PlotPoints([], 0, None, False)
    last_step = int(last[0])
    first_row = one(
        f"SELECT step, value, wall_time FROM metrics WHERE {where} AND {_FINITE} ORDER BY step LIMIT 1"
    )
    if first_row is None:
        return PlotPoints([], 0, last_step, False)
    first_step = int(first_row[0])
    span = last_step - first_step + 1
    if span <= ratio * max_points:
        rows = conn.exec_driver_sql(
            f"SELECT step, value, wall_time FROM metrics WHERE {where} AND {_FINITE} ORDER BY step",
            tuple(params),
        ).all()
        return PlotPoints([tuple(r) for r in rows], len(rows), last_step, False)  # type: ignore[misc]

    buckets = max(2, ratio * max_points // 2)
    width = -(-span // buckets)  # ceil
    bucket = f"(step - {ph}) / {ph}"
    if conn.dialect.name == "sqlite":
        # SQLite: with exactly one min()/max() aggregate, bare columns come from that row.
        mins = conn.exec_driver_sql(
            f"SELECT {bucket} AS b, MIN(value), step, wall_time, COUNT(*) FROM metrics "
            f"WHERE {where} AND {_FINITE} GROUP BY b",
            (first_step, width, *params),
        ).all()
        maxs = conn.exec_driver_sql(
            f"SELECT {bucket} AS b, MAX(value), step, wall_time FROM metrics WHERE {where} AND {_FINITE} GROUP BY b",
            (first_step, width, *params),
        ).all()
    else:
        # PostgreSQL: one scan; min/max over ARRAY[value, step, wall_time] carry the extreme's step along.
        # A hash aggregate (a few thousand groups) beats the sort the planner picks on fresh statistics.
        conn.exec_driver_sql("SET LOCAL enable_sort = off")
        rows = conn.exec_driver_sql(
            f"SELECT {bucket} AS b, MIN(ARRAY[value, step::float8, wall_time]), "
            f"MAX(ARRAY[value, -step::float8, wall_time]), COUNT(*) FROM metrics "
            f"WHERE {where} AND {_FINITE} GROUP BY b",
            (first_step, width, *params),
        ).all()
        conn.exec_driver_sql("SET LOCAL enable_sort = on")
        mins = [(b, lo[0], int(lo[1]), lo[2], n) for b, lo, _hi, n in rows]
        maxs = [(b, hi[0], -int(hi[1]), hi[2]) for b, _lo, hi, _n in rows]
    last_row = one(
        f"SELECT step, value, wall_time FROM metrics WHERE {where} AND {_FINITE} ORDER BY step DESC LIMIT 1"
    )
    candidates = {int(first_row[0]): (int(first_row[0]), first_row[1], first_row[2])}
    for row in (*mins, *maxs):
        candidates[int(row[2])] = (int(row[2]), row[1], row[3])
    candidates[int(last_row[0])] = (int(last_row[0]), last_row[1], last_row[2])
    total = sum(int(r[4]) for r in mins)
    return PlotPoints([candidates[k] for k in sorted(candidates)], total, last_step, True)


def iter_metrics(
    session: Session, run_id: int, keys: Sequence[str] | None = None, *, batch: int = 5000
) -> Iterator[tuple[str, int, float | None, float | None]]:
    """All (key, step, value, wall_time) of a run, by key then step, streamed in batches."""
    stmt = select(Metric.key, Metric.step, Metric.value, Metric.wall_time).where(Metric.run_id == run_id)
    if keys:
        stmt = stmt.where(Metric.key.in_(list(keys)))
    result = session.execute(stmt.order_by(Metric.key, Metric.step).execution_options(yield_per=batch))
    for row in result:
        yield tuple(row)  # type: ignore[misc]


def metrics_after(
    session: Session, run_id: int, after_step: int, *, max_steps: int = 200
) -> list[tuple[str, int, float | None, float | None]]:
    """Metric rows with step > after_step, in step order, covering at most about ``max_steps`` steps of
    the most frequently logged key (for live streams: bounded work per poll, resumable by step)."""
    latest = metric_keys(session, run_id)
    if not latest:
        return []
    keys = [m.key for m in latest if m.step > after_step]
    if not keys:
        return []
    lead = max(latest, key=lambda m: m.step).key
    upper = session.scalar(
        select(Metric.step)
        .where(Metric.run_id == run_id, Metric.key == lead, Metric.step > after_step)
        .order_by(Metric.step)
        .offset(max_steps - 1)
        .limit(1)
    )
    stmt = select(Metric.key, Metric.step, Metric.value, Metric.wall_time).where(
        Metric.run_id == run_id, Metric.key.in_(keys), Metric.step > after_step
    )
    if upper is not None:
        stmt = stmt.where(Metric.step <= upper)
    return [tuple(r) for r in session.execute(stmt.order_by(Metric.step, Metric.key)).all()]  # type: ignore[misc]


def max_metric_step(session: Session, run_id: int) -> int | None:
    return session.scalar(select(func.max(MetricLatest.step)).where(MetricLatest.run_id == run_id))

