"""Metrics: a run's scalar series (``metrics``) and each key's latest point (``metric_latest``), written in
batches by its worker and read for plots, streams, exports and the run list."""

from __future__ import annotations

import math
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
    """Store metric points ``(key, step, value[, wall_time])`` for a run, idempotently, with the series'
    roll-ups (``metric_rollups``) and latest values (``metric_latest``) in the same transaction.

    Writing the same (run, key, step) again keeps one row: with ``on_conflict="update"`` (default) the
    newest value wins (a run resumed from a checkpoint re-logs the steps after it), with "ignore" the
    first. Rows go in batched ``INSERT ... ON CONFLICT DO NOTHING`` statements: on SQLite multi-row VALUES
    chunked so that the connection's bound-parameter limit is never reached, on PostgreSQL one array per
    column (``unnest``, 5 parameters per statement) in chunks of 10,000 rows. NaN values are stored as
    NULL. Roll-ups stay exact: a statement that inserted all its rows (the usual case, new steps in any
    order) merges them into the buckets' count/min/max; one that met existing rows (a re-sent or rewritten
    step) rewrites those rows with ``update`` and recomputes the buckets it touched from the points
    (``_recompute_rollups``). Returns the number of distinct points written. With ``owner`` (a worker's
    write) only while that worker holds the run's lease: else LeaseLost and nothing is written
    (``leases.require_lease``).
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
    dirty: list[tuple[Any, ...]] = []  # points of statements that met existing rows
    if dialect.name == "postgresql":
        # Points, their keys' latest values and their roll-ups in one statement per 10,000 points (one
        # round trip; the roll-ups are aggregated by the server from the same arrays). The roll-ups assume
        # every point is new: a statement that met existing rows has its buckets recomputed below.
        # A large batch of new points goes by COPY instead (_pg_copy_points), the roll-ups and latest values
        # from the same arrays in a second statement.
        sql = _pg_combined_sql(on_conflict)
        for chunk in chunks(values, PG_METRIC_ROWS_PER_STATEMENT):
            arrays = tuple(list(col) for col in zip(*chunk, strict=True))
            if len(chunk) >= PG_COPY_MIN_ROWS and _pg_copy_points(session, run_id, chunk):
                conn.exec_driver_sql(
                    _pg_combined_sql(on_conflict, copied=True), (*arrays, list(ROLLUP_LEVELS))
                )
                continue
            inserted = conn.exec_driver_sql(
                sql, (_LOCK_CLASS, run_id, *arrays, list(ROLLUP_LEVELS))
            ).scalar_one()
            if inserted < len(chunk):
                dirty.extend(chunk)
                if on_conflict == "update":
                    conn.exec_driver_sql(_pg_metric_sql("update"), arrays)
    else:
        fresh: list[tuple[Any, ...]] = []
        per = rows_per_statement(session, len(_METRIC_COLUMNS))
        for chunk in chunks(values, per):
            params = tuple(v for row in chunk for v in row)
            if conn.exec_driver_sql(
                _metric_sql(dialect.paramstyle, len(chunk), "ignore"), params
            ).rowcount == len(chunk):
                fresh.extend(chunk)
                continue
            dirty.extend(chunk)
            if on_conflict == "update":
                conn.exec_driver_sql(_metric_sql(dialect.paramstyle, len(chunk), "update"), params)
        _write_rollups(
            session, run_id, rollup_aggregates((r[1], r[2], r[3], r[4]) for r in fresh), merge=True
        )
        latest: dict[str, tuple[Any, ...]] = {}
        for row in values:
            cur = latest.get(row[1])
            if cur is None or row[2] >= cur[2]:
                latest[row[1]] = row
        # One core-SQL statement (not the ORM bulk path: that was ~27 % of a 20-point per-step call).
        tops = list(latest.values())
        for chunk in chunks(tops, per):
            sql = _latest_sql(False, dialect.paramstyle, len(chunk), on_conflict)
            conn.exec_driver_sql(sql, tuple(v for row in chunk for v in row))
    if dirty:
        _recompute_rollups(session, run_id, dirty)
    if commit:
        session.commit()
    return len(values)


# --- roll-ups ----------------------------------------------------------------------------------------------

ROLLUP_LEVELS = (4, 8, 12, 16, 20)  # bucket widths 2**level steps: 16, 256, 4,096, 65,536, 1,048,576
_LOCK_CLASS = 0x6B6C71  # first key of pg_advisory_xact_lock(class, run_id): "klq" metrics writers
_ROLLUP_COLUMNS = (
    "run_id",
    "key",
    "level",
    "bucket",
    "count",
    "min_value",
    "min_step",
    "min_wall",
    "max_value",
    "max_step",
    "max_wall",
)
_PG_ROLLUP_TYPES = (
    "integer", "varchar", "integer", "bigint", "integer", "float8", "bigint", "float8", "float8", "bigint", "float8"
)  # fmt: skip
_ROLLUP_SQL: dict[tuple[str, int, bool], str] = {}

Aggregate = list[Any]  # [count, min_value, min_step, min_wall, max_value, max_step, max_wall]


def _merge_into(agg: Aggregate, other: Sequence[Any]) -> None:
    """Fold ``other`` (an Aggregate) into ``agg`` in place; ties keep ``agg``'s point."""
    agg[0] += other[0]
    if other[1] < agg[1]:
        agg[1:4] = other[1:4]
    if other[4] > agg[4]:
        agg[4:7] = other[4:7]


def rollup_aggregates(
    points: Iterable[tuple[str, int, float | None, float | None]], levels: Sequence[int] = ROLLUP_LEVELS
) -> dict[tuple[str, int, int], Aggregate]:
    """Roll-ups of points ``(key, step, value, wall_time)``: {(key, level, bucket): Aggregate} at every
    level, over the finite values only (NaN/None and +-inf are left out; a bucket without a finite point
    has no entry). The lowest level is built from the points, each higher one from the level below it."""
    out: dict[tuple[str, int, int], Aggregate] = {}
    shift = levels[0]
    for key, step, value, wall in points:
        if value is None or not math.isfinite(value):
            continue
        k = (key, shift, step >> shift)
        agg = out.get(k)
        if agg is None:
            out[k] = [1, value, step, wall, value, step, wall]
        else:
            _merge_into(agg, (1, value, step, wall, value, step, wall))
    children = list(out.items())
    for lower, level in zip(levels, levels[1:], strict=False):
        parents: dict[tuple[str, int, int], Aggregate] = {}
        for (key, _lvl, bucket), agg in children:
            k = (key, level, bucket >> (level - lower))
            cur = parents.get(k)
            if cur is None:
                parents[k] = list(agg)
            else:
                _merge_into(cur, agg)
        out.update(parents)
        children = list(parents.items())
    return out


def _rollup_sql(postgresql: bool, paramstyle: str, n: int, merge: bool) -> str:
    """INSERT into metric_rollups: ``merge`` folds the rows into existing buckets (count added, min/max
    kept or replaced, as ``_merge_into``), else plain rows (buckets just deleted for a recompute).
    PostgreSQL: one array per column (any n); SQLite: n rows of multi-row VALUES."""
    cache_key = ("pg" if postgresql else paramstyle, 0 if postgresql else n, merge)
    sql = _ROLLUP_SQL.get(cache_key)
    if sql is None:
        if postgresql:
            arrays = ", ".join(f"%s::{t}[]" for t in _PG_ROLLUP_TYPES)
            source = f"SELECT * FROM unnest({arrays})"
        else:
            ph = "?" if paramstyle == "qmark" else "%s"
            row = "(" + ", ".join([ph] * len(_ROLLUP_COLUMNS)) + ")"
            source = "VALUES " + ", ".join([row] * n)
        sql = f"INSERT INTO metric_rollups ({', '.join(_ROLLUP_COLUMNS)}) {source}"
        if merge:
            lower = "excluded.min_value < metric_rollups.min_value"
            higher = "excluded.max_value > metric_rollups.max_value"
            sets = ["count = metric_rollups.count + excluded.count"] + [
                f"{col} = CASE WHEN {cond} THEN excluded.{col} ELSE metric_rollups.{col} END"
                for cond, cols in ((lower, ("min_value", "min_step", "min_wall")), (higher, ("max_value", "max_step", "max_wall")))
                for col in cols
            ]  # fmt: skip
            sql += " ON CONFLICT (run_id, key, level, bucket) DO UPDATE SET " + ", ".join(sets)
        _ROLLUP_SQL[cache_key] = sql
    return sql


_PG_COMBINED_SQL: dict[tuple[str, bool], str] = {}
# Batches of at least this many points are written with COPY (binary), then one statement for their keys'
# latest values and roll-ups: on this project's 2-core VM, 1,000,000 points in calls of 10,000 went from
# 61,400 to 98,000 points/s and in calls of 1,000 from 64,500 to 81,600 (bench/NOTES.md, issue 17 on a quiet
# machine); below it the one-statement path's single round trip is cheaper.
PG_COPY_MIN_ROWS = 200
_PG_COPY_SQL = f"COPY metrics ({', '.join(_METRIC_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_PG_COPY_TYPES = ("int4", "varchar", "int8", "float8", "float8")


def _pg_copy_points(session: Session, run_id: int, points: Sequence[tuple[Any, ...]]) -> bool:
    """PostgreSQL: take the run's metrics-writer lock, then COPY ``points`` (rows of ``_METRIC_COLUMNS``)
    into ``metrics`` inside a savepoint. False, with nothing written, when any of them is stored already
    (a re-sent or rewritten step, or another writer's: the primary key refuses the whole COPY); the caller
    then writes them the ON CONFLICT way. COPY has no ON CONFLICT, hence the savepoint."""
    from psycopg.errors import UniqueViolation

    conn = session.connection()
    # two commands in one round trip (no parameters: the simple query protocol; both are integers)
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_CLASS}, {int(run_id)}); SAVEPOINT klq_copy")
    try:
        with conn.connection.dbapi_connection.cursor() as cursor, cursor.copy(_PG_COPY_SQL) as copy:
            copy.set_types(_PG_COPY_TYPES)
            for row in points:
                copy.write_row(row)
    except UniqueViolation:
        conn.exec_driver_sql("ROLLBACK TO SAVEPOINT klq_copy")
        return False
    conn.exec_driver_sql("RELEASE SAVEPOINT klq_copy")
    return True


def _pg_combined_sql(on_conflict: str, copied: bool = False) -> str:
    """PostgreSQL: up to 10,000 points of a run (``INSERT ... ON CONFLICT DO NOTHING``), their keys' latest
    values and their roll-ups at every level in one statement of data-modifying CTEs over the same five
    arrays. The roll-ups are aggregated by the server - the finest level from the points (count, and
    min/max over ARRAY[value, step, wall_time], ties to the smaller step), every level from those buckets
    (five times fewer array aggregates than from the points) - and merged into the stored ones.
    Every part reads ``lk``, which first takes the run's metrics-writer lock (``pg_advisory_xact_lock``: a
    recompute reads points, and another writer's merge must not land between that read and its write;
    SQLite's BEGIN IMMEDIATE does the same; the worker's writers lock the run's row first - require_lease,
    heartbeat - and this lock second, one order, so they cannot deadlock). The commit waits for its WAL flush
    as every other: a worker never sends a committed step again, so a server crash must not lose one.
    Parameters: lock class, run id, the five point arrays, the levels. Returns the points inserted.
    ``copied``: the points are stored already (``_pg_copy_points``, which took the lock): only the latest
    values and roll-ups, from the five arrays and the levels."""
    sql = _PG_COMBINED_SQL.get((on_conflict, copied))
    if sql is None:
        cols = ", ".join(_METRIC_COLUMNS)
        newer = ">=" if on_conflict == "update" else ">"
        merge = _rollup_sql(True, "pyformat", 0, True)
        merge = merge[merge.index(" ON CONFLICT") :]
        finest = ROLLUP_LEVELS[0]
        points = (
            "unnest(%b::integer[], %b::varchar[], %b::bigint[], %b::float8[], %b::float8[]) "
            "AS p(run_id, key, step, value, wall_time)"
        )
        sql = (
            f"WITH src AS MATERIALIZED (SELECT p.* FROM {points}), "
            if copied
            else "WITH lk AS MATERIALIZED (SELECT pg_advisory_xact_lock(%s, %s)), "
            f"src AS MATERIALIZED (SELECT p.* FROM {points}, lk), "
            f"ins AS (INSERT INTO metrics ({cols}) SELECT {cols} FROM src {_conflict_action('ignore')} RETURNING 1), "
        ) + (
            f"lat AS (INSERT INTO metric_latest ({cols}) SELECT DISTINCT ON (key) {cols} FROM src "
            "ORDER BY key, step DESC "
            "ON CONFLICT (run_id, key) DO UPDATE SET step = excluded.step, value = excluded.value, "
            f"wall_time = excluded.wall_time WHERE excluded.step {newer} metric_latest.step), "
            # the finest level from the points, every level from those buckets
            f"fine AS (SELECT run_id, key, step >> {finest} AS bucket, count(*) AS n, "
            "min(ARRAY[value, step, wall_time]) AS lo, max(ARRAY[value, -step, wall_time]) AS hi "
            f"FROM src WHERE {_FINITE} GROUP BY run_id, key, step >> {finest}), "
            f"roll AS (INSERT INTO metric_rollups ({', '.join(_ROLLUP_COLUMNS)}) "
            f"SELECT f.run_id, f.key, l.level, f.bucket >> (l.level - {finest}), sum(f.n)::integer, "
            "(min(f.lo))[1], (min(f.lo))[2]::bigint, (min(f.lo))[3], "
            "(max(f.hi))[1], (-(max(f.hi))[2])::bigint, (max(f.hi))[3] "
            "FROM fine AS f, unnest(%s::integer[]) AS l(level) "
            f"GROUP BY f.run_id, f.key, l.level, f.bucket >> (l.level - {finest}){merge}) "
            + ("SELECT 1" if copied else "SELECT count(*) FROM ins")
        )
        _PG_COMBINED_SQL[(on_conflict, copied)] = sql
    return sql


def _write_rollups(
    session: Session, run_id: int, aggregates: dict[tuple[str, int, int], Aggregate], *, merge: bool
) -> None:
    if not aggregates:
        return
    conn = session.connection()
    rows = [(run_id, key, level, bucket, *agg) for (key, level, bucket), agg in aggregates.items()]
    if conn.dialect.name == "postgresql":
        sql = _rollup_sql(True, conn.dialect.paramstyle, 0, merge)
        for chunk in chunks(rows, PG_METRIC_ROWS_PER_STATEMENT):
            conn.exec_driver_sql(sql, tuple(list(col) for col in zip(*chunk, strict=True)))
    else:
        per = rows_per_statement(session, len(_ROLLUP_COLUMNS))
        for chunk in chunks(rows, per):
            sql = _rollup_sql(False, conn.dialect.paramstyle, len(chunk), merge)
            conn.exec_driver_sql(sql, tuple(v for row in chunk for v in row))


def _runs_of(buckets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted distinct integers as inclusive runs of consecutive ones: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for b in sorted(set(buckets)):
        if out and b == out[-1][1] + 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((b, b))
    return out


_RANGES_PER_STATEMENT = 100
_ROLLUP_READ = "bucket, " + ", ".join(_ROLLUP_COLUMNS[4:])


def _ranges_sql(ph: str, select: str, table: str, column: str, n: int, *, level: bool = False) -> str:
    """``SELECT {select} FROM {table} WHERE run_id = ? AND key = ? [AND level = ?] AND column BETWEEN ? AND ?``
    n times, joined by UNION ALL: each branch searches the primary key for its own range (an OR of the
    ranges made both databases scan every row of the key)."""
    where = f"run_id = {ph} AND key = {ph}" + (f" AND level = {ph}" if level else "")
    return " UNION ALL ".join(
        [f"SELECT {select} FROM {table} WHERE {where} AND {column} BETWEEN {ph} AND {ph}"] * n
    )


def _ranges_params(
    run_id: int, key: str, levels: Sequence[int] | None, bounds: Sequence[int]
) -> tuple[Any, ...]:
    """Parameters of ``_ranges_sql``: ``bounds`` = lo0, hi0, lo1, hi1, ...; ``levels`` one per range or None."""
    out: list[Any] = []
    for i in range(len(bounds) // 2):
        out += [run_id, key, *([levels[i]] if levels is not None else []), bounds[2 * i], bounds[2 * i + 1]]
    return tuple(out)


def _recompute_rollups(session: Session, run_id: int, points: Sequence[tuple[Any, ...]]) -> None:
    """Rebuild, from the stored points, every bucket that ``points`` (``(run_id, key, step, ...)`` rows just
    written over existing ones) fall in: the lowest level from the points, each higher level from the
    rebuilt level below. Reads and deletes only those buckets: runs of consecutive buckets, up to 100 runs
    OR-ed into one statement."""
    conn = session.connection()
    ph = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    by_key: dict[str, set[int]] = {}
    for row in points:
        by_key.setdefault(row[1], set()).add(row[2] >> ROLLUP_LEVELS[0])
    for key, lowest in by_key.items():
        buckets = lowest
        for i, level in enumerate(ROLLUP_LEVELS):
            lower = ROLLUP_LEVELS[i - 1] if i else 0
            if i:
                buckets = {b >> (level - lower) for b in buckets}
            aggregates: dict[tuple[str, int, int], Aggregate] = {}
            for ranges in chunks(_runs_of(buckets), _RANGES_PER_STATEMENT):
                # the steps (level 0) or child buckets (above) inside these buckets
                spans = [
                    v for lo, hi in ranges for v in (lo << (level - lower), ((hi + 1) << (level - lower)) - 1)
                ]
                if i == 0:
                    sources = conn.exec_driver_sql(
                        _ranges_sql(ph, "step, value, wall_time", "metrics", "step", len(ranges)),
                        _ranges_params(run_id, key, None, spans),
                    ).all()
                    aggregates.update(rollup_aggregates(((key, *r) for r in sorted(sources)), (level,)))
                else:
                    children = conn.exec_driver_sql(
                        _ranges_sql(ph, _ROLLUP_READ, "metric_rollups", "bucket", len(ranges), level=True),
                        _ranges_params(run_id, key, [lower] * len(ranges), spans),
                    ).all()
                    for child in sorted(children):
                        k = (key, level, child[0] >> (level - lower))
                        cur = aggregates.get(k)
                        if cur is None:
                            aggregates[k] = list(child[1:])
                        else:
                            _merge_into(cur, child[1:])
                conn.exec_driver_sql(
                    f"DELETE FROM metric_rollups WHERE run_id = {ph} AND key = {ph} AND level = {ph} "
                    f"AND bucket BETWEEN {ph} AND {ph}",
                    [(run_id, key, level, lo, hi) for lo, hi in ranges],
                )
            _write_rollups(session, run_id, aggregates, merge=False)


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
    downsampled: bool  # True: per-bucket minima and maxima (and both ends), not every point


def bucket_shift(first: int, last: int, buckets: int) -> int:
    """The smallest s >= 0 such that aligned buckets of 2**s steps cut [first, last] into at most
    ``buckets`` (bucket of a step: step >> s)."""
    s = 0
    while (last >> s) - (first >> s) + 1 > buckets:
        s += 1
    return s


def rollup_cover(
    lo: int, hi: int, levels: Sequence[int]
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Cut the steps [lo, hi] exactly into whole roll-up buckets, as few as possible, from the coarsest of
    ``levels`` (ascending) down: ([(level, first bucket, last bucket), ...], [(first step, last step) of the
    ends finer than every level, read as points]). At most 1 + 2 per finer level bucket ranges and 2 point
    ranges of fewer than 2**levels[0] steps each."""
    if lo > hi:
        return [], []
    if not levels:
        return [], [(lo, hi)]
    level = levels[-1]
    b_lo = -((-lo) >> level)  # first bucket starting at or after lo
    b_hi = ((hi + 1) >> level) - 1  # last bucket ending at or before hi
    if b_lo > b_hi:
        return rollup_cover(lo, hi, levels[:-1])
    left = rollup_cover(lo, (b_lo << level) - 1, levels[:-1])
    right = rollup_cover((b_hi + 1) << level, hi, levels[:-1])
    return [*left[0], (level, b_lo, b_hi), *right[0]], [*left[1], *right[1]]


def plot_points(
    session: Session,
    run_id: int,
    key: str,
    *,
    since_step: int | None = None,
    until_step: int | None = None,
    max_points: int = 500,
) -> PlotPoints:
    """At most ``max_points`` finite points of one series, steps in (since_step, until_step], that draw it
    with every spike: if the range has more, it is cut into at most (max_points - 2) / 2 aligned buckets of
    2**s steps (``bucket_shift``) and each bucket's minimum and maximum come back, with the first and last
    points of the range.

    Read cost is independent of the series' length: the buckets are assembled from the write-time
    roll-ups (``metric_rollups``) of the coarsest level that is not wider than them, the range's two ends
    from finer levels (``rollup_cover``) and, below the finest level, from at most 2 x 15 points. So a
    1,000,000-point series reads ~250-4,000 roll-up rows, one query, plus four indexed lookups.
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

    def one(sql: str) -> Any:
        return conn.exec_driver_sql(sql, tuple(params)).first()

    if conn.dialect.name == "postgresql":
        # Every query below is a primary-key range; on a freshly written key the statistics are stale and
        # the planner picks a bitmap scan plus sort over all of the key's rows (measured: 0.5 s for the
        # first finite point of a 1,000,000-point key). For the rest of this read transaction only.
        conn.exec_driver_sql(
            "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true)"
        )

    last = one(f"SELECT step FROM metrics WHERE {where} ORDER BY step DESC LIMIT 1")
    if last is None:
        return PlotPoints([], 0, None, False)
    last_step = int(last[0])
    first_row = one(
        f"SELECT step, value, wall_time FROM metrics WHERE {where} AND {_FINITE} ORDER BY step LIMIT 1"
    )
    if first_row is None:
        return PlotPoints([], 0, last_step, False)
    last_row = one(
        f"SELECT step, value, wall_time FROM metrics WHERE {where} AND {_FINITE} ORDER BY step DESC LIMIT 1"
    )
    first_step, final_step = int(first_row[0]), int(last_row[0])

    def every_point() -> PlotPoints:
        rows = conn.exec_driver_sql(
            f"SELECT step, value, wall_time FROM metrics WHERE {where} AND {_FINITE} ORDER BY step",
            tuple(params),
        ).all()
        return PlotPoints([tuple(r) for r in rows], len(rows), last_step, False)  # type: ignore[misc]

    buckets = max(1, (max_points - 2) // 2)
    if final_step - first_step + 1 <= max_points:
        return every_point()  # steps are distinct: at most max_points points
    shift = bucket_shift(first_step, final_step, buckets)
    levels = [lv for lv in ROLLUP_LEVELS if lv <= shift]
    nodes, ends = rollup_cover(first_step, final_step, levels)
    merged: dict[int, Aggregate] = {}
    total = 0
    if nodes:
        rows = conn.exec_driver_sql(
            _ranges_sql(ph, "level, " + _ROLLUP_READ, "metric_rollups", "bucket", len(nodes), level=True),
            _ranges_params(run_id, key, [n[0] for n in nodes], [v for n in nodes for v in n[1:]]),
        ).all()
        for level, bucket, *agg in rows:
            total += agg[0]
            b = bucket >> (shift - level)
            cur = merged.get(b)
            if cur is None:
                merged[b] = agg
            else:
                _merge_into(cur, agg)
    if ends:
        rows = conn.exec_driver_sql(
            _ranges_sql(ph, "step, value, wall_time", "metrics", "step", len(ends)),
            _ranges_params(run_id, key, None, [v for e in ends for v in e]),
        ).all()
        for step, value, wall in rows:
            if value is None or not math.isfinite(value):
                continue
            total += 1
            b = step >> shift
            point = (1, value, step, wall, value, step, wall)
            cur = merged.get(b)
            if cur is None:
                merged[b] = list(point)
            else:
                _merge_into(cur, point)
    if total <= max_points:
        return every_point()
    chosen = {
        first_step: (first_step, first_row[1], first_row[2]),
        final_step: (final_step, last_row[1], last_row[2]),
    }
    for agg in merged.values():
        chosen[agg[2]] = (agg[2], agg[1], agg[3])
        chosen[agg[5]] = (agg[5], agg[4], agg[6])
    return PlotPoints([chosen[s] for s in sorted(chosen)], total, last_step, True)


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
