"""Runs: create, read, list, edit, cancel and delete them; a worker's claim, heartbeats, progress and end
of a run (the lease itself is backend.store.leases, shared with judgements)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, defer, selectinload

from klq.config import RunConfig

from ..models import TERMINAL_STATUSES, Run, RunTag, utcnow
from . import leases
from ._common import NotFound, update_rows
from .leases import HeartbeatResult


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
    run.tag_rows = [RunTag(tag=t) for t in clean_tags(tags)]
    session.add(run)
    session.flush()
    if commit:
        session.commit()
    return run


def clean_tags(tags: Iterable[str]) -> list[str]:
    """The distinct non-blank tags, stripped and sorted."""
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
        wanted = clean_tags(tags)
        current = {t.tag: t for t in run.tag_rows}
        run.tag_rows = [current.get(t) or RunTag(tag=t) for t in wanted]
    run.updated_at = utcnow()
    session.flush()
    if commit:
        session.commit()
    return run



def request_cancel(session: Session, run_id: int, *, commit: bool = True) -> Run:
    """Ask a run to stop (``leases.request_cancel``): a queued run is cancelled at once, a running one is
    stopped by its worker; Conflict if it has already ended otherwise. Returns the run, re-read."""
    leases.request_cancel(session, Run, run_id, commit=commit)
    return require_run(session, run_id)


def delete_run(session: Session, run_id: int, *, force: bool = False, commit: bool = True) -> None:
    """Delete a run with all its rows (metrics, samples, checkpoints rows, judgements). Files stay.

    A running run must be cancelled first (Conflict) unless ``force``: its worker would keep writing.
    """
    leases.delete_row(session, Run, run_id, force=force, commit=commit)


def set_status(
    session: Session,
    run_id: int,
    status: str,
    *,
    error: str | None = None,
    owner: str | None = None,
    commit: bool = True,
) -> bool:
    """Set a run's status (and error); see ``leases.set_status``."""
    return leases.set_status(session, Run, run_id, status, error=error, owner=owner, commit=commit)


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
    changed = leases.fenced_update(session, Run, run_id, values, owner=owner)
    if commit:
        session.commit()
    return changed


def set_provenance(
    session: Session, run_id: int, provenance: dict[str, Any], *, owner: str | None = None, commit: bool = True
) -> None:
    """Record the provenance (klq.provenance.collect()) of the process training a run, replacing an earlier
    attempt's. With ``owner`` (a worker's write) only while it holds the lease (else LeaseLost)."""
    leases.fenced_update(session, Run, run_id, {"provenance": provenance, "updated_at": utcnow()}, owner=owner)
    if commit:
        session.commit()


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
    """Claim a run for ``owner`` (see ``leases.acquire``), counting ``attempts`` and recording where it runs.
    Returns True if this owner now holds the lease."""
    extra: dict[str, Any] = {}
    if worker_host is not None:
        extra["worker_host"] = worker_host
    if worker_gpu is not None:
        extra["worker_gpu"] = worker_gpu
    return leases.acquire(session, Run, run_id, owner, stale_after, extra, commit)


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
    extra = {k: v for k, v in progress.items() if v is not None}
    return leases.heartbeat(session, Run, run_id, owner, extra, commit)


def release_lease(session: Session, run_id: int, owner: str, *, commit: bool = True) -> bool:
    return leases.release(session, Run, run_id, owner, commit=commit)


def requeue_stale_runs(
    session: Session,
    *,
    stale_after: timedelta = timedelta(seconds=120),
    max_attempts: int | None = None,
    commit: bool = True,
) -> list[int]:
    """Re-queue runs whose worker died (see ``leases.requeue_stale``); they resume from their checkpoint."""
    return leases.requeue_stale(session, Run, stale_after, commit, max_attempts)


def request_preempt(session: Session, run_id: int, owner: str, *, commit: bool = True) -> bool:
    """Ask ``owner``'s training process to stop at its next iteration boundary, with a checkpoint, to be
    resumed elsewhere (its worker is shutting down); not a cancel. The sink sees it (``should_stop``)."""
    values = {"preempt_requested": True, "updated_at": utcnow()}
    return update_rows(session, Run, leases.leased_by(Run, run_id, owner), values=values, commit=commit)
