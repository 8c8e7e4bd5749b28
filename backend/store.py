"""The data-access layer: every read and write of KLQ Lab's tables goes through here.

The API routers and the Celery workers share it, so it imports nothing from FastAPI. Functions take a
SQLAlchemy ``Session`` first; functions that write commit by default (``commit=False`` lets a caller
group several writes into one transaction). Use ``Database.write_session()`` (backend.db) for writes:
on SQLite its transactions take the write lock up front, so a worker and the API never deadlock.

Worker-facing summary::

    db = Database.from_settings()
    with db.write_session() as s:
        if not store.acquire_lease(s, run_id, owner, worker_host=host, worker_gpu=gpu):
            return                                   # someone else trains it, or it was cancelled
        store.write_metrics(s, run_id, [("loss", 1, 0.7, time.time()), ...], owner=owner)
        store.write_samples(s, run_id, [{"step": 10, "prompt_id": "p1", "prompt": ..., "response": ...}],
                            owner=owner)
        store.add_checkpoint(s, run_id, step=50, path="/data/runs/7/ckpt-50", owner=owner)
        hb = store.heartbeat(s, run_id, owner, iteration=12, episodes=768)
        if not hb.ok or hb.cancel_requested: ...
        store.finish_run(s, run_id, "succeeded", owner=owner)

Fencing: every write a worker makes passes its ``owner`` and is refused once that worker no longer holds
the lease (a worker presumed dead, whose run another worker took over, comes back): data writes (metrics,
samples, checkpoints, verdicts, progress) raise ``LeaseLost`` and write nothing; status changes
(``set_status``, ``finish_run``, ``set_judgement_status``) return False. The lease check is part of the
write's own transaction (``_require_lease``, ``_leased_by``). Without ``owner`` (the API's own writes:
cancel, delete, a failed dispatch) writes are unconditional.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Select, and_, case, delete, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, selectinload

from klq.config import RunConfig

from . import experiments as ex
from .models import (
    ORDERS,
    RUN_STATUSES,
    SCOPES,
    TERMINAL_STATUSES,
    VERDICTS,
    ApiToken,
    Checkpoint,
    Experiment,
    Judgement,
    Metric,
    MetricLatest,
    Run,
    RunTag,
    Sample,
    UTCDateTime,
    Verdict,
    utcnow,
)
from .schemas import ExperimentGrid, ExperimentResults
from .winrate import summarize_rows


class NotFound(LookupError):
    """The row does not exist."""


class Conflict(RuntimeError):
    """The request is valid but not in the row's current state (e.g. deleting a running run)."""


class LeaseLost(RuntimeError):
    """A worker's write was refused: it no longer holds the lease of its run or judgement (another worker
    took it over after its heartbeat went stale, or it was finished, cancelled or deleted meanwhile)."""


# --- helpers ---------------------------------------------------------------------------------------------

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


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT with ON CONFLICT support (SQLite >= 3.24 and PostgreSQL share the syntax)."""
    return (pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert)(table)


def _upsert_many(
    session: Session,
    table: Any,
    rows: list[dict[str, Any]],
    conflict: Sequence[str],
    update_columns: Sequence[str] | None,
) -> None:
    """INSERT ... ON CONFLICT (conflict) DO UPDATE SET update_columns (or DO NOTHING), executemany."""
    if not rows:
        return
    stmt = _insert(session, table)
    if update_columns:
        stmt = stmt.on_conflict_do_update(
            index_elements=list(conflict), set_={c: getattr(stmt.excluded, c) for c in update_columns}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
    session.execute(stmt, rows)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _float_or_none(value: Any) -> float | None:
    """NaN becomes NULL (SQLite would store it as NULL anyway); +-inf is kept."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _now_param() -> Any:
    return literal(utcnow(), UTCDateTime())


# --- runs ------------------------------------------------------------------------------------------------


def create_run(
    session: Session,
    config: RunConfig | Mapping[str, Any],
    *,
    name: str | None = None,
    tags: Iterable[str] = (),
    notes: str = "",
    queue: str = "gpu",
    parent_id: int | None = None,
    experiment_id: int | None = None,
    commit: bool = True,
) -> Run:
    """Insert a queued run. ``config`` is validated by RunConfig (raises pydantic.ValidationError)."""
    cfg = config if isinstance(config, RunConfig) else RunConfig.model_validate(dict(config))
    now = utcnow()
    name = name or cfg.name or f"{cfg.algorithm}-{now:%Y%m%d-%H%M%S}"
    run = Run(
        name=name,
        algorithm=cfg.algorithm,
        status="queued",
        queue=queue,
        config=cfg.model_dump(mode="json"),
        notes=notes or "",
        parent_id=parent_id,
        experiment_id=experiment_id,
        created_at=now,
        updated_at=now,
        total_iterations=cfg.train.num_iterations,
    )
    run.tag_rows = [RunTag(tag=t) for t in _clean_tags(tags)]
    session.add(run)
    session.flush()
    if commit:
        session.commit()
    return run


def _clean_tags(tags: Iterable[str]) -> list[str]:
    return sorted({t.strip() for t in tags if t and t.strip()})


def get_run(session: Session, run_id: int) -> Run | None:
    return session.scalar(select(Run).where(Run.id == run_id).options(selectinload(Run.tag_rows)))


def require_run(session: Session, run_id: int) -> Run:
    run = get_run(session, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def _run_filters(
    stmt: Select[Any],
    status: Sequence[str] | None,
    algorithm: Sequence[str] | None,
    tags: Sequence[str] | None,
    q: str | None,
    experiment_id: int | None = None,
) -> Select[Any]:
    if experiment_id is not None:
        stmt = stmt.where(Run.experiment_id == experiment_id)
    if status:
        stmt = stmt.where(Run.status.in_(list(status)))
    if algorithm:
        stmt = stmt.where(Run.algorithm.in_(list(algorithm)))
    for tag in tags or ():
        stmt = stmt.where(Run.id.in_(select(RunTag.run_id).where(RunTag.tag == tag)))
    if q:
        stmt = stmt.where(
            or_(Run.name.icontains(q, autoescape=True), Run.notes.icontains(q, autoescape=True))
        )
    return stmt


def list_runs(
    session: Session,
    *,
    status: Sequence[str] | None = None,
    algorithm: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    q: str | None = None,
    experiment_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
    order: Literal["newest", "oldest", "name"] = "newest",
) -> tuple[list[Run], int]:
    """A page of runs and the total matching the filters, in one query: tags come aggregated in a
    correlated subquery (group_concat / string_agg), the total as a window count. (A second query counts
    only when the page is past the end.) The config column is not loaded."""
    ordering = {
        "newest": (Run.created_at.desc(), Run.id.desc()),
        "oldest": (Run.created_at.asc(), Run.id.asc()),
        "name": (Run.name.asc(), Run.id.asc()),
    }[order]
    tags_csv = (
        select(func.aggregate_strings(RunTag.tag, ","))
        .where(RunTag.run_id == Run.id)
        .correlate(Run)
        .scalar_subquery()
        .label("tags_csv")
    )
    stmt = _run_filters(
        select(Run, tags_csv, func.count().over().label("total")), status, algorithm, tags, q, experiment_id
    )
    rows = session.execute(
        stmt.order_by(*ordering).limit(limit).offset(offset).options(defer(Run.config))
    ).all()
    runs = []
    for run, csv_tags, _total in rows:
        run._tag_list = sorted(csv_tags.split(",")) if csv_tags else []  # tags contain no commas
        runs.append(run)
    if rows:
        total = int(rows[0].total)
    elif offset == 0:
        total = 0
    else:
        count = _run_filters(select(func.count(Run.id)), status, algorithm, tags, q, experiment_id)
        total = session.scalar(count) or 0
    return runs, total


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


def tag_counts(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(select(RunTag.tag, func.count()).group_by(RunTag.tag).order_by(RunTag.tag))
    return [(tag, count) for tag, count in rows]


def update_run_meta(
    session: Session,
    run_id: int,
    *,
    name: str | None = None,
    notes: str | None = None,
    tags: Iterable[str] | None = None,
    commit: bool = True,
) -> Run:
    """Rename a run, replace its notes and/or its tags."""
    run = require_run(session, run_id)
    if name is not None:
        run.name = name
    if notes is not None:
        run.notes = notes
    if tags is not None:
        run.__dict__.pop("_tag_list", None)
        wanted = _clean_tags(tags)
        current = {t.tag: t for t in run.tag_rows}
        run.tag_rows = [current.get(t) or RunTag(tag=t) for t in wanted]
    run.updated_at = utcnow()
    session.flush()
    if commit:
        session.commit()
    return run


def request_cancel(session: Session, run_id: int, *, commit: bool = True) -> Run:
    """Ask a run to stop. A queued run is cancelled at once; a running one is stopped by its worker
    (which sees ``cancel_requested`` in its heartbeat). Cancelling a finished run raises Conflict,
    except that cancelling a cancelled run is a no-op."""
    run = session.get(Run, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run.status in TERMINAL_STATUSES:
        if run.status == "cancelled":
            return require_run(session, run_id)
        raise Conflict(f"run {run_id} has already {run.status}")
    run.cancel_requested = True
    if run.status == "queued":
        run.status = "cancelled"
        run.finished_at = utcnow()
    run.updated_at = utcnow()
    session.flush()
    if commit:
        session.commit()
    return require_run(session, run_id)


def delete_run(session: Session, run_id: int, *, force: bool = False, commit: bool = True) -> None:
    """Delete a run with all its rows (metrics, samples, checkpoints rows, judgements). Files stay.

    A running run must be cancelled first (Conflict) unless ``force``: its worker would keep writing.
    """
    run = session.get(Run, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run.status == "running" and not force:
        raise Conflict(f"run {run_id} is running: cancel it first (or delete with force=true)")
    session.expunge(run)
    session.execute(delete(Run).where(Run.id == run_id))
    if commit:
        session.commit()


def set_status(
    session: Session,
    run_id: int,
    status: str,
    *,
    error: str | None = None,
    owner: str | None = None,
    commit: bool = True,
) -> bool:
    """Set a run's status (and error); see ``_set_status``."""
    return _set_status(session, Run, run_id, status, error=error, owner=owner, commit=commit)


def finish_run(
    session: Session,
    run_id: int,
    status: Literal["succeeded", "failed", "cancelled"],
    *,
    error: str | None = None,
    owner: str | None = None,
    commit: bool = True,
) -> bool:
    """End a run (succeeded / failed with ``error`` / cancelled), releasing the lease."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"finish_run needs a terminal status {TERMINAL_STATUSES}, got {status!r}")
    return set_status(session, run_id, status, error=error, owner=owner, commit=commit)


def set_progress(
    session: Session,
    run_id: int,
    *,
    iteration: int | None = None,
    total_iterations: int | None = None,
    episodes: int | None = None,
    worker_host: str | None = None,
    worker_gpu: str | None = None,
    owner: str | None = None,
    commit: bool = True,
) -> bool:
    """Record a run's progress. With ``owner`` (a worker's write) only while it holds the lease (else
    LeaseLost, nothing written)."""
    values: dict[str, Any] = {
        k: v
        for k, v in dict(
            iteration=iteration,
            total_iterations=total_iterations,
            episodes=episodes,
            worker_host=worker_host,
            worker_gpu=worker_gpu,
        ).items()
        if v is not None
    }
    if not values:
        return False
    values["updated_at"] = utcnow()
    if iteration is not None:  # an iteration logged: the training process is not hung (stall_timeout_s)
        values["progress_at"] = values["updated_at"]
    where = _leased_by(Run, run_id, owner) if owner is not None else Run.id == run_id
    changed = session.execute(
        update(Run).where(where).values(**values).execution_options(synchronize_session=False)
    ).rowcount
    if owner is not None and not changed:
        raise LeaseLost(f"run {run_id} is no longer leased by {owner!r}: write refused")
    if commit:
        session.commit()
    return bool(changed)


# Runs and judgements are both leased objects: status, lease_owner, heartbeat_at, cancel_requested.
Leased = type[Run] | type[Judgement]


def _leased_by(model: Leased, object_id: int, owner: str) -> Any:
    """The condition "``owner`` holds this object's lease": it is running under that owner."""
    return and_(model.id == object_id, model.lease_owner == owner, model.status == "running")


def _require_lease(session: Session, model: Leased, object_id: int, owner: str) -> None:
    """Fencing for a worker's writes: raise LeaseLost unless ``owner`` holds the lease, checked inside the
    transaction of the write it guards. On PostgreSQL the row stays locked (FOR UPDATE) until that
    transaction ends, so a takeover (``_acquire``'s conditional UPDATE) either committed before, and is
    seen here, or waits until this write is committed; on SQLite a ``write_session`` holds the database's
    write lock from BEGIN (IMMEDIATE), which serialises the check, the write and any takeover."""
    held = session.scalar(select(model.id).where(_leased_by(model, object_id, owner)).with_for_update())
    if held is None:
        what = "run" if model is Run else "judgement"
        raise LeaseLost(f"{what} {object_id} is no longer leased by {owner!r}: write refused")


def _set_status(
    session: Session,
    model: Leased,
    object_id: int,
    status: str,
    *,
    error: str | None,
    owner: str | None,
    commit: bool,
) -> bool:
    """Set a run's or judgement's status (and error). Terminal states stamp finished_at and drop the lease;
    "running" stamps started_at once. With ``owner`` (a worker's write) only while that worker holds the
    lease, in the same conditional UPDATE (fencing: a worker whose lease was taken over changes nothing).
    Without it (the API's own writes, tests) unconditionally. Returns whether a row changed."""
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown status {status!r}; one of {RUN_STATUSES}")
    now = utcnow()
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if error is not None:
        values["error"] = error
    if status in TERMINAL_STATUSES:
        values.update(finished_at=now, lease_owner=None)
    elif status == "running":
        values["started_at"] = func.coalesce(model.started_at, _now_param())
    where = _leased_by(model, object_id, owner) if owner is not None else model.id == object_id
    stmt = update(model).where(where).values(**values).execution_options(synchronize_session=False)
    changed = session.execute(stmt).rowcount
    if commit:
        session.commit()
    return bool(changed)


def _acquire(session: Session, model: Leased, object_id: int, owner: str, stale_after: timedelta,
             extra: dict[str, Any], commit: bool) -> bool:
    """Atomically claim a run or judgement for ``owner`` (one conditional UPDATE): succeeds if it is
    queued, or running under this owner, or running under a worker whose heartbeat is older than
    ``stale_after``; never if it is finished or has a cancel request. Sets status running and stamps
    started_at once."""
    now = utcnow()
    claimable = or_(
        model.status == "queued",
        and_(
            model.status == "running",
            or_(
                model.lease_owner.is_(None),
                model.lease_owner == owner,
                model.heartbeat_at.is_(None),
                model.heartbeat_at < now - stale_after,
            ),
        ),
    )
    values: dict[str, Any] = {
        "status": "running",
        "lease_owner": owner,
        "heartbeat_at": now,
        "updated_at": now,
        "started_at": func.coalesce(model.started_at, _now_param()),
        "error": None,
        "attempts": model.attempts + 1,
        "progress_at": None,  # this attempt has made no progress yet (stall detection: start-up allowance)
        **extra,
    }
    changed = session.execute(
        update(model)
        .where(model.id == object_id, model.cancel_requested.is_(False), claimable)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if commit:
        session.commit()
    return bool(changed)


def acquire_lease(
    session: Session,
    run_id: int,
    owner: str,
    *,
    stale_after: timedelta = timedelta(seconds=60),
    worker_host: str | None = None,
    worker_gpu: str | None = None,
    commit: bool = True,
) -> bool:
    """Claim a run for ``owner`` (see ``_acquire``), counting ``attempts`` and recording where it runs.
    Returns True if this owner now holds the lease."""
    extra: dict[str, Any] = {"preempt_requested": False}
    if worker_host is not None:
        extra["worker_host"] = worker_host
    if worker_gpu is not None:
        extra["worker_gpu"] = worker_gpu
    return _acquire(session, Run, run_id, owner, stale_after, extra, commit)


@dataclass(frozen=True)
class HeartbeatResult:
    ok: bool  # False: the lease is lost (another worker took over, or the run was deleted/finished)
    cancel_requested: bool


def _heartbeat(session: Session, model: Leased, object_id: int, owner: str, extra: dict[str, Any],
               commit: bool) -> HeartbeatResult:
    now = utcnow()
    changed = session.execute(
        update(model)
        .where(model.id == object_id, model.lease_owner == owner, model.status == "running")
        .values(heartbeat_at=now, updated_at=now, **extra)
        .execution_options(synchronize_session=False)
    ).rowcount
    cancel = session.scalar(select(model.cancel_requested).where(model.id == object_id))
    if commit:
        session.commit()
    return HeartbeatResult(ok=bool(changed), cancel_requested=bool(cancel) if cancel is not None else True)


def heartbeat(
    session: Session,
    run_id: int,
    owner: str,
    *,
    iteration: int | None = None,
    total_iterations: int | None = None,
    episodes: int | None = None,
    commit: bool = True,
) -> HeartbeatResult:
    """Renew the lease (and record progress). Tells the worker whether it still owns the run and whether
    a cancel was requested."""
    progress = {"iteration": iteration, "total_iterations": total_iterations, "episodes": episodes}
    return _heartbeat(session, Run, run_id, owner, {k: v for k, v in progress.items() if v is not None}, commit)


def release_lease(session: Session, run_id: int, owner: str, *, commit: bool = True) -> bool:
    changed = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.lease_owner == owner)
        .values(lease_owner=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if commit:
        session.commit()
    return bool(changed)


def _attempts_text(attempts: int) -> str:
    return f"{attempts} attempt{'s' if attempts != 1 else ''}"


def _where_it_was(model: Leased, row: Any) -> str:
    return f"at iteration {row.iteration}" if model is Run else f"with {row.completed} prompt(s) judged"


def _requeue_stale(
    session: Session, model: Leased, stale_after: timedelta, commit: bool, max_attempts: int | None = None
) -> list[int]:
    """Running objects whose heartbeat is older than ``stale_after`` (their worker died): those with a
    cancel request become cancelled, the others queued again (lease cleared, the reason kept as
    ``last_error``), or failed with that reason once they have had ``max_attempts`` (a crash loop: a worker
    killed again and again, e.g. by the OOM killer). Rows without any heartbeat were never started by a
    worker (a task the broker refused, ``unqueue_unsent``): re-queued without counting. Returns the ids
    re-queued, for the caller to send to the broker again."""
    cutoff = utcnow() - stale_after
    stale = and_(model.status == "running", or_(model.heartbeat_at.is_(None), model.heartbeat_at < cutoff))
    progress = model.iteration if model is Run else model.completed
    rows = session.execute(
        select(model.id, model.attempts, model.heartbeat_at, progress)
        .where(stale, model.cancel_requested.is_(False))
        .with_for_update()
    ).all()
    now = utcnow()
    session.execute(
        update(model)
        .where(stale, model.cancel_requested.is_(True))
        .values(status="cancelled", finished_at=now, lease_owner=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    requeued: list[int] = []
    for row in rows:
        values: dict[str, Any] = {"status": "queued"}
        if row.heartbeat_at is not None:
            reason = (
                f"its worker stopped sending heartbeats for over {stale_after.total_seconds():g} s "
                f"{_where_it_was(model, row)} (the worker was killed, ran out of memory, or lost its machine "
                "or the database)"
            )
            values["last_error"] = f"attempt {row.attempts}: {reason}"
            if max_attempts is not None and row.attempts >= max_attempts:
                values.update(
                    status="failed", finished_at=now, error=f"{reason}; stopped after {_attempts_text(row.attempts)}"
                )
        if values["status"] == "queued":
            requeued.append(row.id)
        session.execute(
            update(model)
            .where(model.id == row.id, stale)
            .values(lease_owner=None, updated_at=now, **values)
            .execution_options(synchronize_session=False)
        )
    if commit:
        session.commit()
    return requeued


def requeue_stale_runs(
    session: Session,
    *,
    stale_after: timedelta = timedelta(seconds=120),
    max_attempts: int | None = None,
    commit: bool = True,
) -> list[int]:
    """Re-queue runs whose worker died (see ``_requeue_stale``); they resume from their checkpoint."""
    return _requeue_stale(session, Run, stale_after, commit, max_attempts)


def retry_or_fail(
    session: Session,
    model: Leased,
    object_id: int,
    owner: str,
    reason: str,
    *,
    max_attempts: int,
    log_tail: str = "",
    commit: bool = True,
) -> Literal["queued", "failed"] | None:
    """End an attempt that went wrong (its process hung and was killed, or died without writing an
    outcome): queue the run or judgement again, lease cleared and ``reason`` kept as ``last_error``, for
    the caller to send to the broker; or, once it has had ``max_attempts``, fail it with ``reason``
    ("...; stopped after K attempts; last lines of its log: ..."). Only while ``owner`` holds the lease
    (fencing). Returns the new status, or None if the lease was not ``owner``'s (nothing changed)."""
    attempts = session.scalar(select(model.attempts).where(_leased_by(model, object_id, owner)).with_for_update())
    if attempts is None:
        return None
    tail = f"; last lines of its log:\n{log_tail}" if log_tail else ""
    now = utcnow()
    values: dict[str, Any] = {"status": "queued", "last_error": f"attempt {attempts}: {reason}{tail}"}
    if attempts >= max_attempts:
        values.update(status="failed", finished_at=now, error=f"{reason}; stopped after {_attempts_text(attempts)}{tail}")
    session.execute(
        update(model)
        .where(_leased_by(model, object_id, owner))
        .values(lease_owner=None, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if commit:
        session.commit()
    return values["status"]


def request_preempt(session: Session, run_id: int, owner: str, *, commit: bool = True) -> bool:
    """Ask ``owner``'s training process to stop at its next iteration boundary, with a checkpoint, to be
    resumed elsewhere (its worker is shutting down); not a cancel. The sink sees it (``should_stop``)."""
    changed = session.execute(
        update(Run)
        .where(_leased_by(Run, run_id, owner))
        .values(preempt_requested=True, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if commit:
        session.commit()
    return bool(changed)


def requeue_preempted(session: Session, model: Leased, object_id: int, owner: str, *, commit: bool = True) -> bool:
    """A graceful stop (the worker is shutting down): queue the run or judgement again at once, lease
    cleared, for the caller to send to the broker, so another worker resumes it without waiting for the
    lease to expire. An attempt that made progress is not counted against ``max_attempts`` (a deploy is
    not a failure); one that made none is, so a worker stopped again and again during start-up still ends.
    Only while ``owner`` holds the lease. Returns whether it was re-queued."""
    values: dict[str, Any] = {
        "status": "queued",
        "lease_owner": None,
        "updated_at": utcnow(),
        "attempts": case((model.progress_at.is_not(None), model.attempts - 1), else_=model.attempts),
    }
    if model is Run:
        values["preempt_requested"] = False
    changed = session.execute(
        update(model)
        .where(_leased_by(model, object_id, owner), model.cancel_requested.is_(False))  # a cancel ends it
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if commit:
        session.commit()
    return bool(changed)


# --- metrics ---------------------------------------------------------------------------------------------

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
    lease: else LeaseLost and nothing is written (``_require_lease``).
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
            _float_or_none(value),
            float(wall) if wall is not None else now,
        )
    if not dedup:
        return 0
    if owner is not None:
        _require_lease(session, Run, run_id, owner)
    values = list(dedup.values())
    conn = session.connection()
    dialect = conn.dialect
    if dialect.name == "postgresql":
        sql = _pg_metric_sql(on_conflict)
        for chunk in _chunks(values, PG_METRIC_ROWS_PER_STATEMENT):
            conn.exec_driver_sql(sql, tuple(list(col) for col in zip(*chunk, strict=True)))
    else:
        per = rows_per_statement(session, len(_METRIC_COLUMNS))
        for chunk in _chunks(values, per):
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
        for chunk in _chunks(tops, PG_METRIC_ROWS_PER_STATEMENT):
            conn.exec_driver_sql(sql, tuple(list(col) for col in zip(*chunk, strict=True)))
    else:
        for chunk in _chunks(tops, per):
            sql = _latest_sql(False, dialect.paramstyle, len(chunk), on_conflict)
            conn.exec_driver_sql(sql, tuple(v for row in chunk for v in row))
    if commit:
        session.commit()
    return len(values)


def metric_keys(session: Session, run_id: int) -> list[MetricLatest]:
    return list(
        session.scalars(select(MetricLatest).where(MetricLatest.run_id == run_id).order_by(MetricLatest.key))
    )


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


# --- samples ---------------------------------------------------------------------------------------------

_SAMPLE_FIELDS = ("prompt", "response", "score", "gold_score", "kl", "extra")


def write_samples(
    session: Session,
    run_id: int,
    samples: Iterable[Mapping[str, Any]],
    *,
    owner: str | None = None,
    commit: bool = True,
) -> int:
    """Store evaluation samples: mappings with step, prompt_id, prompt, response and optional score,
    gold_score, kl, extra (a JSON-able dict). Idempotent per (run, step, prompt_id): the newest wins.
    With ``owner``, only while that worker holds the run's lease (else LeaseLost)."""
    if owner is not None:
        _require_lease(session, Run, run_id, owner)
    now = utcnow()
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for s in samples:
        row = {
            "run_id": run_id,
            "step": int(s["step"]),
            "prompt_id": str(s["prompt_id"]),
            "prompt": str(s.get("prompt", "")),
            "response": str(s.get("response", "")),
            "score": _finite(s.get("score")),
            "gold_score": _finite(s.get("gold_score")),
            "kl": _finite(s.get("kl")),
            "extra": s.get("extra"),
            "created_at": now,
        }
        rows[(row["step"], row["prompt_id"])] = row
    _upsert_many(
        session, Sample.__table__, list(rows.values()), ("run_id", "step", "prompt_id"), _SAMPLE_FIELDS
    )
    if commit:
        session.commit()
    return len(rows)


def list_samples(
    session: Session, run_id: int, *, step: int | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Sample], int]:
    where = [Sample.run_id == run_id] + ([Sample.step == step] if step is not None else [])
    items = list(
        session.scalars(
            select(Sample).where(*where).order_by(Sample.step, Sample.prompt_id).limit(limit).offset(offset)
        )
    )
    total = session.scalar(select(func.count(Sample.id)).where(*where)) or 0
    return items, total


def sample_steps(session: Session, run_id: int, *, since_step: int | None = None) -> list[tuple[int, int]]:
    """(step, number of samples) for each step (after ``since_step``) that has samples."""
    where = [Sample.run_id == run_id] + ([Sample.step > since_step] if since_step is not None else [])
    rows = session.execute(
        select(Sample.step, func.count(Sample.id)).where(*where).group_by(Sample.step).order_by(Sample.step)
    )
    return [(step, n) for step, n in rows]


def iter_samples(
    session: Session, run_id: int, *, step: int | None = None, batch: int = 1000
) -> Iterator[Sample]:
    stmt = select(Sample).where(Sample.run_id == run_id)
    if step is not None:
        stmt = stmt.where(Sample.step == step)
    yield from session.scalars(
        stmt.order_by(Sample.step, Sample.prompt_id).execution_options(yield_per=batch)
    )


def latest_sample_steps(session: Session, run_ids: Sequence[int]) -> dict[int, int]:
    rows = session.execute(
        select(Sample.run_id, func.max(Sample.step))
        .where(Sample.run_id.in_(list(run_ids)))
        .group_by(Sample.run_id)
    )
    return {rid: step for rid, step in rows}


@dataclass
class AlignedSamples:
    runs: list[tuple[int, int | None]]  # (run_id, step) in request order; step None: the run has no samples
    total: int  # prompts in the comparison
    items: list[tuple[str, list[Sample | None]]]  # (prompt_id, one sample per run or None)


def compare_samples(
    session: Session,
    run_ids: Sequence[int],
    steps: Sequence[int | None],
    *,
    mode: Literal["intersection", "union"] = "intersection",
    limit: int = 50,
    offset: int = 0,
) -> AlignedSamples:
    """Align the samples of several runs on prompt_id, each run at its step (None: its latest sample
    step). "intersection" keeps prompts every run has; "union" keeps all (missing ones None).
    Three queries whatever the number of runs and prompts."""
    if len(steps) != len(run_ids):
        raise ValueError("one step per run")
    resolved = list(steps)
    if any(s is None for s in resolved):
        latest = latest_sample_steps(session, run_ids)
        resolved = [s if s is not None else latest.get(rid) for rid, s in zip(run_ids, resolved, strict=True)]
    pairs = [(rid, s) for rid, s in zip(run_ids, resolved, strict=True) if s is not None]
    runs = list(zip(run_ids, resolved, strict=True))
    if not pairs:
        return AlignedSamples(runs, 0, [])
    cond = or_(*[and_(Sample.run_id == rid, Sample.step == s) for rid, s in pairs])
    id_rows = session.execute(select(Sample.run_id, Sample.step, Sample.prompt_id).where(cond)).all()
    have: dict[str, set[tuple[int, int]]] = {}
    for rid, step, pid in id_rows:
        have.setdefault(pid, set()).add((rid, step))
    wanted = set(pairs)
    if mode == "intersection":
        prompt_ids = sorted(pid for pid, got in have.items() if wanted <= got and len(pairs) == len(runs))
    else:
        prompt_ids = sorted(have)
    page = prompt_ids[offset : offset + limit]
    by_key: dict[tuple[int, int, str], Sample] = {}
    if page:
        for s in session.scalars(select(Sample).where(cond, Sample.prompt_id.in_(page))):
            by_key[(s.run_id, s.step, s.prompt_id)] = s
    items = [(pid, [by_key.get((rid, s, pid)) if s is not None else None for rid, s in runs]) for pid in page]
    return AlignedSamples(runs, len(prompt_ids), items)


# --- checkpoints -----------------------------------------------------------------------------------------


def add_checkpoint(
    session: Session,
    run_id: int,
    step: int,
    path: str | os.PathLike[str],
    *,
    is_final: bool = False,
    owner: str | None = None,
    commit: bool = True,
) -> Checkpoint:
    """Record a checkpoint directory (idempotent per (run, step)). ``path`` is a directory in HF layout
    (config.json, weights, tokenizer), or one holding such a directory as ``policy/``. Marking one final
    unmarks the run's other checkpoints. With ``owner``, only while that worker holds the run's lease
    (else LeaseLost)."""
    if owner is not None:
        _require_lease(session, Run, run_id, owner)
    stmt = _insert(session, Checkpoint.__table__)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "step"],
        set_={"path": stmt.excluded.path, "is_final": stmt.excluded.is_final},
    )
    if is_final:
        session.execute(
            update(Checkpoint)
            .where(Checkpoint.run_id == run_id, Checkpoint.step != step)
            .values(is_final=False)
            .execution_options(synchronize_session=False)
        )
    session.execute(
        stmt,
        [
            {
                "run_id": run_id,
                "step": int(step),
                "path": str(path),
                "is_final": is_final,
                "created_at": utcnow(),
            }
        ],
    )
    ckpt = session.scalars(
        select(Checkpoint)
        .where(Checkpoint.run_id == run_id, Checkpoint.step == step)
        .execution_options(populate_existing=True)
    ).one()
    if commit:
        session.commit()
    return ckpt


def list_checkpoints(session: Session, run_id: int) -> list[Checkpoint]:
    return list(
        session.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step))
    )


def final_checkpoint(session: Session, run_id: int) -> Checkpoint | None:
    """The checkpoint marked final, else none."""
    return session.scalar(
        select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.is_final.is_(True))
    )


def get_checkpoint(session: Session, run_id: int, checkpoint_id: int) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.id == checkpoint_id)
    )


# --- judgements ------------------------------------------------------------------------------------------


def create_judgement(
    session: Session,
    *,
    run_a_id: int,
    step_a: int | None = None,
    run_b_id: int | None = None,
    step_b: int | None = None,
    num_prompts: int,
    judge: Mapping[str, Any],
    seed: int = 0,
    queue: str = "gpu",
    experiment_id: int | None = None,
    kind: str | None = None,
    commit: bool = True,
) -> Judgement:
    """A queued judgement of run A (at step_a; None = final) against run B (None = A's reference);
    ``experiment_id``/``kind`` mark the judgements an experiment queues itself."""
    for rid in (run_a_id, run_b_id):
        if rid is not None and session.get(Run, rid) is None:
            raise NotFound(f"run {rid} not found")
    now = utcnow()
    j = Judgement(
        status="queued",
        queue=queue,
        run_a_id=run_a_id,
        step_a=step_a,
        run_b_id=run_b_id,
        step_b=step_b,
        num_prompts=num_prompts,
        judge=dict(judge),
        seed=seed,
        experiment_id=experiment_id,
        kind=kind,
        total=2 * num_prompts,
        created_at=now,
        updated_at=now,
    )
    session.add(j)
    session.flush()
    if commit:
        session.commit()
    return j


def get_judgement(session: Session, judgement_id: int) -> Judgement | None:
    return session.get(Judgement, judgement_id)


def list_judgements(
    session: Session,
    *,
    run_id: int | None = None,
    status: Sequence[str] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Judgement], int]:
    where = []
    if run_id is not None:
        where.append(or_(Judgement.run_a_id == run_id, Judgement.run_b_id == run_id))
    if status:
        where.append(Judgement.status.in_(list(status)))
    items = list(
        session.scalars(
            select(Judgement).where(*where).order_by(Judgement.id.desc()).limit(limit).offset(offset)
        )
    )
    total = session.scalar(select(func.count(Judgement.id)).where(*where)) or 0
    return items, total


def set_judgement_status(
    session: Session,
    judgement_id: int,
    status: str,
    *,
    error: str | None = None,
    owner: str | None = None,
    commit: bool = True,
) -> bool:
    """Set a judgement's status (and error); see ``_set_status`` (claim one with ``acquire_judgement``)."""
    return _set_status(session, Judgement, judgement_id, status, error=error, owner=owner, commit=commit)


def acquire_judgement(
    session: Session,
    judgement_id: int,
    owner: str,
    *,
    stale_after: timedelta = timedelta(seconds=60),
    commit: bool = True,
) -> bool:
    """Claim a judgement for ``owner``, like ``acquire_lease`` for runs."""
    return _acquire(session, Judgement, judgement_id, owner, stale_after, {}, commit)


def heartbeat_judgement(
    session: Session, judgement_id: int, owner: str, *, commit: bool = True
) -> HeartbeatResult:
    """Renew a judgement's lease; says whether it is still ours and whether a cancel was requested."""
    return _heartbeat(session, Judgement, judgement_id, owner, {}, commit)


def requeue_stale_judgements(
    session: Session,
    *,
    stale_after: timedelta = timedelta(seconds=120),
    max_attempts: int | None = None,
    commit: bool = True,
) -> list[int]:
    """Like ``requeue_stale_runs`` for judgements whose worker died (their stored verdicts are kept and
    not judged again)."""
    return _requeue_stale(session, Judgement, stale_after, commit, max_attempts)


def unqueue_unsent(
    session: Session, table: Literal["runs", "judgements"], object_id: int, *, commit: bool = True
) -> bool:
    """A re-queued run/judgement whose task could not be sent (broker down) goes back to running with no
    heartbeat, so that the next reaper pass re-queues it and tries again (and a worker that still gets an
    older message for it may claim it)."""
    model = Run if table == "runs" else Judgement
    changed = session.execute(
        update(model)
        .where(model.id == object_id, model.status == "queued", model.lease_owner.is_(None))
        .values(status="running", heartbeat_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if commit:
        session.commit()
    return bool(changed)


@dataclass(frozen=True)
class WaitingJobs:
    """The runs and judgements of one broker queue that wait for a worker (queued, no lease, no cancel)."""

    count: int  # all of them
    idle: list[tuple[Literal["runs", "judgements"], int]]  # those untouched for the age asked, oldest first


def waiting_jobs(session: Session, *, idle_for: timedelta) -> dict[str, WaitingJobs]:
    """Per queue, the jobs waiting for a worker and those of them not touched (``updated_at``) for
    ``idle_for``: the reaper's candidates for a lost broker message (see worker.tasks.redispatch_lost)."""
    cutoff = utcnow() - idle_for
    found: dict[str, list[tuple[Any, str, int, bool]]] = {}
    for table, model in (("runs", Run), ("judgements", Judgement)):
        rows = session.execute(
            select(model.queue, model.id, model.updated_at).where(
                model.status == "queued", model.lease_owner.is_(None), model.cancel_requested.is_(False)
            )
        ).all()
        for queue, object_id, updated_at in rows:
            found.setdefault(queue, []).append((updated_at, table, object_id, updated_at < cutoff))
    return {
        queue: WaitingJobs(len(jobs), [(table, i) for _at, table, i, idle in sorted(jobs) if idle])
        for queue, jobs in found.items()
    }


def mark_redispatched(
    session: Session,
    table: Literal["runs", "judgements"],
    object_id: int,
    *,
    idle_for: timedelta,
    commit: bool = True,
) -> bool:
    """Claim a waiting job's re-send: stamps ``updated_at`` if it is still queued without a lease and
    untouched for ``idle_for`` (one conditional UPDATE, so of several reapers one sends it, once per
    ``idle_for``). Returns whether this caller is to send its task again."""
    model = Run if table == "runs" else Judgement
    now = utcnow()
    changed = session.execute(
        update(model)
        .where(
            model.id == object_id,
            model.status == "queued",
            model.lease_owner.is_(None),
            model.cancel_requested.is_(False),
            model.updated_at < now - idle_for,
        )
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if commit:
        session.commit()
    return bool(changed)


def request_judgement_cancel(session: Session, judgement_id: int, *, commit: bool = True) -> Judgement:
    j = session.get(Judgement, judgement_id, with_for_update=True)
    if j is None:
        raise NotFound(f"judgement {judgement_id} not found")
    if j.status in TERMINAL_STATUSES and j.status != "cancelled":
        raise Conflict(f"judgement {judgement_id} has already {j.status}")
    if j.status not in TERMINAL_STATUSES:
        j.cancel_requested = True
        if j.status == "queued":
            j.status = "cancelled"
            j.finished_at = utcnow()
        j.updated_at = utcnow()
    if commit:
        session.commit()
    return j


def delete_judgement(
    session: Session, judgement_id: int, *, force: bool = False, commit: bool = True
) -> None:
    """Delete a judgement and its verdicts; a running one must be cancelled first unless ``force``."""
    j = session.get(Judgement, judgement_id, with_for_update=True)
    if j is None:
        raise NotFound(f"judgement {judgement_id} not found")
    if j.status == "running" and not force:
        raise Conflict(f"judgement {judgement_id} is running: cancel it first (or delete with force=true)")
    session.expunge(j)
    session.execute(delete(Judgement).where(Judgement.id == judgement_id))
    if commit:
        session.commit()


def record_verdicts(
    session: Session,
    judgement_id: int,
    verdicts: Iterable[Mapping[str, Any]],
    *,
    owner: str | None = None,
    commit: bool = True,
) -> Judgement:
    """Store judge verdicts: mappings with prompt_id, order ("ab": A shown first, "ba": swapped),
    verdict (A/B/tie/invalid, in terms of the policies), prompt, response_a, response_b, raw_output.

    Idempotent per (judgement, prompt_id, order): a retried call replaces, never double-counts. The
    judgement's counts, win-rate, Wilson CI and position consistency are recomputed from the table.
    With ``owner``, only while that worker holds the judgement's lease (else LeaseLost)."""
    if owner is not None:
        _require_lease(session, Judgement, judgement_id, owner)
    now = utcnow()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for v in verdicts:
        if v["order"] not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {v['order']!r}")
        if v["verdict"] not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {v['verdict']!r}")
        row = {
            "judgement_id": judgement_id,
            "prompt_id": str(v["prompt_id"]),
            "prompt": str(v.get("prompt", "")),
            "response_a": str(v.get("response_a", "")),
            "response_b": str(v.get("response_b", "")),
            "order": v["order"],
            "verdict": v["verdict"],
            "raw_output": v.get("raw_output"),
            "created_at": now,
        }
        rows[(row["prompt_id"], row["order"])] = row
    _upsert_many(
        session,
        Verdict.__table__,
        list(rows.values()),
        ("judgement_id", "prompt_id", "order"),
        ("prompt", "response_a", "response_b", "verdict", "raw_output"),
    )
    judgement = refresh_judgement_summary(session, judgement_id, commit=False)
    judgement.progress_at = now  # verdicts saved: the judge process is not hung (stall_timeout_s)
    if commit:
        session.commit()
    return judgement


def refresh_judgement_summary(session: Session, judgement_id: int, *, commit: bool = True) -> Judgement:
    """Recompute a judgement's counts, win-rate, Wilson CI and position consistency from its verdicts
    (per prompt, once both orders are in; see backend.winrate)."""
    triples = session.execute(
        select(Verdict.prompt_id, Verdict.order, Verdict.verdict).where(Verdict.judgement_id == judgement_id)
    ).all()
    summary = summarize_rows((p, o, v) for p, o, v in triples)
    j = session.get(Judgement, judgement_id, populate_existing=True)
    if j is None:
        raise NotFound(f"judgement {judgement_id} not found")
    j.completed = len(triples)
    j.wins_a, j.wins_b, j.ties, j.invalid = summary.wins_a, summary.wins_b, summary.ties, summary.invalid
    j.win_rate, j.ci_low, j.ci_high = summary.win_rate, summary.ci_low, summary.ci_high
    j.position_consistency = summary.position_consistency
    j.updated_at = utcnow()
    session.flush()
    if commit:
        session.commit()
    return j


def list_verdicts(
    session: Session, judgement_id: int, *, limit: int = 100, offset: int = 0
) -> tuple[list[Verdict], int]:
    where = Verdict.judgement_id == judgement_id
    items = list(
        session.scalars(
            select(Verdict)
            .where(where)
            .order_by(Verdict.prompt_id, Verdict.order)
            .limit(limit)
            .offset(offset)
        )
    )
    total = session.scalar(select(func.count(Verdict.id)).where(where)) or 0
    return items, total


# --- experiments -----------------------------------------------------------------------------------------

# Judgements of an experiment are judged with the judge config minus the experiment's own keys.
_EXPERIMENT_JUDGE_KEYS = ("enabled", "num_prompts")


def create_experiment(
    session: Session,
    *,
    name: str,
    base: RunConfig,
    grid: ExperimentGrid,
    judge: Mapping[str, Any],
    tags: Iterable[str] = (),
    notes: str = "",
    queue: str = "gpu",
    commit: bool = True,
) -> tuple[Experiment, list[Run]]:
    """Insert an experiment and its queued runs (the grid expanded by experiments.plan_runs) in one
    transaction. The caller sends the runs to the broker after the commit."""
    now = utcnow()
    tags = _clean_tags(tags)
    exp = Experiment(
        name=name,
        base=base.model_dump(mode="json"),
        grid=grid.model_dump(mode="json"),
        judge=dict(judge),
        tags=tags,
        notes=notes or "",
        queue=queue,
        created_at=now,
        updated_at=now,
    )
    session.add(exp)
    session.flush()
    runs = [
        create_run(
            session,
            p.config,
            name=p.name,
            tags=tags,
            notes=notes,
            queue=queue,
            experiment_id=exp.id,
            commit=False,
        )
        for p in ex.plan_runs(name, base, grid)
    ]
    if commit:
        session.commit()
    return exp, runs


def get_experiment(session: Session, experiment_id: int) -> Experiment | None:
    return session.get(Experiment, experiment_id)


def require_experiment(session: Session, experiment_id: int) -> Experiment:
    exp = session.get(Experiment, experiment_id)
    if exp is None:
        raise NotFound(f"experiment {experiment_id} not found")
    return exp


def set_experiment_error(session: Session, experiment_id: int, error: str, *, commit: bool = True) -> None:
    """Record a failure of the experiment itself (its runs could not all be queued); shown in its error."""
    exp = require_experiment(session, experiment_id)
    exp.error, exp.updated_at = error, utcnow()
    session.flush()
    if commit:
        session.commit()


def experiment_runs(session: Session, experiment_ids: Sequence[int]) -> dict[int, list[ex.RunRow]]:
    """The runs of several experiments in one query, as RunRows (kl_coef and seed read from the config
    in SQL, so the config itself is not loaded), by id."""
    out: dict[int, list[ex.RunRow]] = {eid: [] for eid in experiment_ids}
    if not experiment_ids:
        return out
    rows = session.execute(
        select(
            Run.experiment_id,
            Run.id,
            Run.name,
            Run.algorithm,
            Run.config["kl_coef"].as_float(),
            Run.config["seed"].as_integer(),
            Run.status,
            Run.error,
            Run.started_at,
            Run.finished_at,
            Run.worker_gpu,
            Run.iteration,
            Run.total_iterations,
        )
        .where(Run.experiment_id.in_(list(experiment_ids)))
        .order_by(Run.id)
    )
    for eid, *fields in rows:
        out[eid].append(ex.RunRow(*fields))
    return out


def experiment_judgements(
    session: Session, experiment_ids: Sequence[int]
) -> dict[int, list[ex.JudgementRow]]:
    """The judgements of several experiments in one query, by id."""
    out: dict[int, list[ex.JudgementRow]] = {eid: [] for eid in experiment_ids}
    if not experiment_ids:
        return out
    rows = session.execute(
        select(
            Judgement.experiment_id,
            Judgement.id,
            Judgement.kind,
            Judgement.run_a_id,
            Judgement.run_b_id,
            Judgement.status,
            Judgement.completed,
            Judgement.total,
            Judgement.error,
        )
        .where(Judgement.experiment_id.in_(list(experiment_ids)))
        .order_by(Judgement.id)
    )
    for eid, *fields in rows:
        out[eid].append(ex.JudgementRow(*fields))
    return out


@dataclass
class ExperimentView:
    """An experiment with its runs and judgements and the status derived from them."""

    experiment: Experiment
    runs: list[ex.RunRow]
    judgements: list[ex.JudgementRow]
    state: ex.ExperimentState
    status: str
    error: str | None


def _state(exp: Experiment) -> ex.ExperimentState:
    return ex.ExperimentState(
        judge_enabled=bool(exp.judge.get("enabled", True)),
        judging_started_at=exp.judging_started_at,
        cancel_requested=exp.cancel_requested,
        error=exp.error,
    )


def _views(session: Session, exps: Sequence[Experiment]) -> list[ExperimentView]:
    ids = [e.id for e in exps]
    runs, judgements = experiment_runs(session, ids), experiment_judgements(session, ids)
    views = []
    for e in exps:
        state = _state(e)
        status, error = ex.derive_status(state, runs[e.id], judgements[e.id])
        views.append(ExperimentView(e, runs[e.id], judgements[e.id], state, status, error))
    return views


def experiment_view(session: Session, experiment_id: int) -> ExperimentView:
    """One experiment with its derived status: three queries."""
    return _views(session, [require_experiment(session, experiment_id)])[0]


def list_experiments(
    session: Session, *, limit: int = 50, offset: int = 0
) -> tuple[list[ExperimentView], int]:
    """A page of experiments, newest first, with their derived statuses: three queries (and a count)."""
    exps = list(
        session.scalars(
            select(Experiment)
            .order_by(Experiment.created_at.desc(), Experiment.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )
    total = session.scalar(select(func.count(Experiment.id))) or 0
    return _views(session, exps), total


def experiment_results(session: Session, experiment_id: int) -> ExperimentResults:
    """The results of docs/EXPERIMENTS.md (schemas.ExperimentResults), in six queries whatever the size:
    the experiment, its runs, its judgements, the final values of the result keys (metric_latest), the
    mean iteration time per run (one aggregate), and the verdicts of its judgements."""
    view = experiment_view(session, experiment_id)
    in_experiment = select(Run.id).where(Run.experiment_id == experiment_id).scalar_subquery()
    final: dict[int, dict[str, float | None]] = {}
    for run_id, key, value in session.execute(
        select(MetricLatest.run_id, MetricLatest.key, MetricLatest.value).where(
            MetricLatest.run_id.in_(in_experiment), MetricLatest.key.in_(ex.FINAL_KEYS)
        )
    ):
        final.setdefault(run_id, {})[key] = value
    iteration_s = dict(
        session.execute(
            select(Metric.run_id, func.avg(Metric.value))
            .where(Metric.run_id.in_(in_experiment), Metric.key == ex.ITERATION_S)
            .group_by(Metric.run_id)
        ).all()
    )
    verdicts: dict[int, list[tuple[str, str, str]]] = {}
    for jid, prompt_id, order, verdict in session.execute(
        select(Verdict.judgement_id, Verdict.prompt_id, Verdict.order, Verdict.verdict)
        .join(Judgement, Judgement.id == Verdict.judgement_id)
        .where(Judgement.experiment_id == experiment_id)
    ):
        verdicts.setdefault(jid, []).append((prompt_id, order, verdict))
    return ex.results(
        experiment_id,
        view.status,
        ExperimentGrid.model_validate(view.experiment.grid),
        view.state,
        view.runs,
        view.judgements,
        final,
        iteration_s,
        verdicts,
        utcnow(),
        convention=(view.experiment.base or {}).get("convention", "klq-lab"),
    )


def experiment_metric_points(
    session: Session, experiment_id: int, key: str
) -> list[tuple[int, int, float | None]]:
    """(run_id, step, value) of one metric key over all the runs of an experiment: one query."""
    return [
        tuple(r)  # type: ignore[misc]
        for r in session.execute(
            select(Metric.run_id, Metric.step, Metric.value)
            .where(
                Metric.run_id.in_(select(Run.id).where(Run.experiment_id == experiment_id).scalar_subquery()),
                Metric.key == key,
            )
            .order_by(Metric.run_id, Metric.step)
        )
    ]


def experiment_of_run(session: Session, run_id: int) -> int | None:
    return session.scalar(select(Run.experiment_id).where(Run.id == run_id))


def claim_judging(session: Session, experiment_id: int, *, commit: bool = True) -> list[Judgement]:
    """Start an experiment's judging step, exactly once: a conditional UPDATE sets judging_started_at if it
    is unset, the experiment is not cancelled and every run is terminal; only the caller whose UPDATE
    changed the row (rowcount 1) creates the judgements (experiments.plan_judgements), in the same
    transaction, so a claim is never left without its judgements. Returns them (empty for every other
    caller, and when judging is disabled); the caller sends them to the broker after the commit."""
    now = utcnow()
    unfinished = (
        select(Run.id)
        .where(Run.experiment_id == experiment_id, Run.status.not_in(TERMINAL_STATUSES))
        .exists()
    )
    won = session.execute(
        update(Experiment)
        .where(
            Experiment.id == experiment_id,
            Experiment.judging_started_at.is_(None),
            Experiment.cancel_requested.is_(False),
            ~unfinished,
        )
        .values(judging_started_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if won != 1:
        session.rollback()
        return []
    exp = session.get(Experiment, experiment_id, populate_existing=True)
    created = []
    if exp.judge.get("enabled", True):
        judge = {k: v for k, v in exp.judge.items() if k not in _EXPERIMENT_JUDGE_KEYS}
        planned, _skipped = ex.plan_judgements(experiment_runs(session, [experiment_id])[experiment_id])
        created = [
            create_judgement(
                session,
                run_a_id=p.run_a,
                run_b_id=p.run_b,
                num_prompts=int(exp.judge.get("num_prompts", 32)),
                judge=judge,
                seed=0,  # every judgement of an experiment decodes the same way, like POST /judgements' default
                queue=exp.queue,
                experiment_id=experiment_id,
                kind=p.kind,
                commit=False,
            )
            for p in planned
        ]
    if commit:
        session.commit()
    return created


def experiments_awaiting_judging(session: Session) -> list[int]:
    """Experiments whose runs are all terminal but whose judging never started (and not cancelled): what
    the worker's reaper claims, in case the worker that ended the last run died before it could."""
    unfinished = (
        select(Run.id)
        .where(Run.experiment_id == Experiment.id, Run.status.not_in(TERMINAL_STATUSES))
        .exists()
    )
    return list(
        session.scalars(
            select(Experiment.id)
            .where(
                Experiment.judging_started_at.is_(None), Experiment.cancel_requested.is_(False), ~unfinished
            )
            .order_by(Experiment.id)
        )
    )


def cancel_experiment(session: Session, experiment_id: int, *, commit: bool = True) -> None:
    """Cancel an experiment: no judging starts, and its unfinished runs and judgements are cancelled (the
    run and judgement cancels of this module: queued ones at once, running ones by their workers).
    Cancelling a cancelled experiment is a no-op; a finished one is a Conflict."""
    view = experiment_view(session, experiment_id)
    if view.status in ("succeeded", "failed"):
        raise Conflict(f"experiment {experiment_id} has already {view.status}")
    view.experiment.cancel_requested = True
    view.experiment.updated_at = utcnow()
    session.flush()
    for r in view.runs:
        if r.status not in TERMINAL_STATUSES:
            request_cancel(session, r.id, commit=False)
    for j in view.judgements:
        if j.status not in TERMINAL_STATUSES:
            request_judgement_cancel(session, j.id, commit=False)
    if commit:
        session.commit()


def delete_experiment(
    session: Session, experiment_id: int, *, force: bool = False, commit: bool = True
) -> None:
    """Delete an experiment with its runs (delete_run: their metrics, samples, checkpoint rows) and
    judgements. While it is active (queued, running, judging, or a run or judgement still running after a
    cancel) it is a Conflict unless ``force``: its workers would keep writing."""
    view = experiment_view(session, experiment_id)
    running = any(r.status == "running" for r in view.runs) or any(
        j.status == "running" for j in view.judgements
    )
    if (view.status in ("queued", "running", "judging") or running) and not force:
        raise Conflict(
            f"experiment {experiment_id} is {'still running' if running else view.status}: "
            "cancel it first (or delete with force=true)"
        )
    for r in view.runs:
        delete_run(session, r.id, force=True, commit=False)
    exp = view.experiment
    session.expunge(exp)
    session.execute(delete(Experiment).where(Experiment.id == experiment_id))
    if commit:
        session.commit()


# --- API tokens ------------------------------------------------------------------------------------------

TOKEN_PREFIX = "klq_"
INITIAL_TOKEN_NAME = "admin"


def hash_token(token: str) -> str:
    """SHA-256 hex of a token (see ApiToken for why a fast unsalted hash is right for random tokens)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normalize_scopes(scopes: Iterable[str]) -> str:
    """Scopes imply the lower ones: admin > write > read."""
    wanted = set(scopes)
    unknown = wanted - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {list(SCOPES)}")
    if "admin" in wanted:
        wanted |= {"write"}
    if "write" in wanted:
        wanted |= {"read"}
    return " ".join(s for s in SCOPES if s in wanted)


def create_token(
    session: Session, name: str, scopes: Iterable[str] = ("read",), *, commit: bool = True
) -> tuple[ApiToken, str]:
    """A new token; returns the row and the plaintext (shown once, never stored)."""
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 bits of randomness
    token = ApiToken(
        name=name,
        token_hash=hash_token(plaintext),
        prefix=plaintext[:12],
        scopes=normalize_scopes(scopes),
        created_at=utcnow(),
    )
    session.add(token)
    session.flush()
    if commit:
        session.commit()
    return token, plaintext


def authenticate(session: Session, plaintext: str) -> ApiToken | None:
    """The live token with this plaintext, or None."""
    if not plaintext or len(plaintext) > 200:
        return None
    return session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(plaintext), ApiToken.revoked.is_(False))
    )


def touch_token(session: Session, token_id: int, *, min_interval: timedelta = timedelta(seconds=60)) -> None:
    """Record use, at most once per ``min_interval`` (no write per request)."""
    now = utcnow()
    session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - min_interval),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, token_id: int, *, commit: bool = True) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} not found")
    if not token.revoked:
        token.revoked = True
        token.revoked_at = utcnow()
    if commit:
        session.commit()
    return token


def write_token_file(path: Path, plaintext: str) -> None:
    """Write the token readable by its owner only (0600), replacing any previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (plaintext + "\n").encode())
    finally:
        os.close(fd)


def ensure_initial_token(session: Session, token_file: Path | None = None) -> str | None:
    """On first start (no token at all), create an admin token, write it to ``token_file`` (default
    <data_dir>/api_token, mode 0600) and return the plaintext; otherwise return None."""
    if session.scalar(select(func.count(ApiToken.id))):
        return None
    try:
        _token, plaintext = create_token(session, INITIAL_TOKEN_NAME, ("read", "write", "admin"))
    except IntegrityError:  # another server process created it at the same moment
        session.rollback()
        return None
    if token_file is None:
        from .settings import get_settings

        token_file = get_settings().resolved_token_file
    write_token_file(Path(token_file), plaintext)
    return plaintext
