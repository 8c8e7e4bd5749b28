"""The lease and life of a leased job, once for runs and judgements: both are claimed by one worker at a
time, kept by its heartbeats, and changed by it only while it holds the lease.

A leased row has ``status``, ``lease_owner``, ``heartbeat_at``, ``attempts``, ``progress_at``,
``cancel_requested``, ``last_error``, ``error``, ``started_at``, ``finished_at`` and ``updated_at`` (the
columns Run and Judgement share, backend.models). The functions here take the model class and do the
same to either: claim (``acquire``, counting ``attempts``), renew (``heartbeat``), fenced writes
(``require_lease``, ``fenced_update``, ``set_status``: a write by a worker that no longer holds the lease
is refused), reaping of expired leases (``requeue_stale``), ending an attempt that went wrong
(``retry_or_fail``) or was stopped gracefully (``requeue_preempted``), re-sending lost broker messages
(``waiting_jobs``, ``mark_redispatched``, ``unqueue_unsent``), cancel and delete. What differs between
the two models is the table ``_KINDS``; backend.store.runs and backend.store.judgements add the rest
(a run's progress columns, where it runs, its preemption request).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import and_, case, delete, func, or_, select, true
from sqlalchemy.orm import Session

from ..models import HUMAN, RUN_STATUSES, TERMINAL_STATUSES, Judgement, Run, utcnow
from ._common import Conflict, LeaseLost, NotFound, now_param, update_rows

# Runs and judgements are both leased objects: status, lease_owner, heartbeat_at, cancel_requested.
Leased = type[Run] | type[Judgement]


@dataclass(frozen=True)
class _Kind:
    """What a leased model does not share with the other."""

    noun: str  # how messages name one: "run", "judgement"
    progress: Any  # the column that says how far it got: a run's iteration, a judgement's verdicts
    progress_text: str  # that progress in a reaped attempt's reason, "{}" the value
    reset_on_requeue: dict[str, Any]  # set when an attempt starts or is stopped gracefully: a run's preemption
    # the rows a worker runs: a human judgement (people's votes, backend/store/votes.py) is "running" while
    # its pairs are voted on, with no lease and no heartbeat, and is never claimed or re-queued
    worker_job: Any


_KINDS: dict[Any, _Kind] = {
    Run: _Kind("run", Run.iteration, "at iteration {}", {"preempt_requested": False}, true()),
    Judgement: _Kind(
        "judgement",
        Judgement.completed,
        "with {} prompt(s) judged",
        {},
        Judgement.judge["backend"].as_string() != HUMAN,
    ),
}
_BY_TABLE: dict[str, Leased] = {"runs": Run, "judgements": Judgement}


def leased_by(model: Leased, object_id: int, owner: str) -> Any:
    """The condition "``owner`` holds this object's lease": it is running under that owner."""
    return and_(model.id == object_id, model.lease_owner == owner, model.status == "running")


def _this_row(model: Leased, object_id: int, owner: str | None) -> Any:
    """The condition of a write to one row: with ``owner`` (a worker's write) only while it holds the lease;
    without (the API's own writes, tests) unconditional."""
    return leased_by(model, object_id, owner) if owner is not None else model.id == object_id


def _lease_lost(model: Leased, object_id: int, owner: str) -> LeaseLost:
    return LeaseLost(f"{_KINDS[model].noun} {object_id} is no longer leased by {owner!r}: write refused")


def require_lease(session: Session, model: Leased, object_id: int, owner: str) -> None:
    """Fencing for a worker's writes: raise LeaseLost unless ``owner`` holds the lease, checked inside the
    transaction of the write it guards. On PostgreSQL the row stays locked (FOR UPDATE) until that
    transaction ends, so a takeover (``acquire``'s conditional UPDATE) either committed before, and is
    seen here, or waits until this write is committed; on SQLite a ``write_session`` holds the database's
    write lock from BEGIN (IMMEDIATE), which serialises the check, the write and any takeover."""
    held = session.scalar(select(model.id).where(leased_by(model, object_id, owner)).with_for_update())
    if held is None:
        raise _lease_lost(model, object_id, owner)


def fenced_update(
    session: Session, model: Leased, object_id: int, values: dict[str, Any], *, owner: str | None
) -> bool:
    """UPDATE one row with ``values``; with ``owner`` (a worker's write) in the same statement only while
    that worker holds the lease, else LeaseLost and nothing written. Returns whether it changed."""
    changed = update_rows(session, model, _this_row(model, object_id, owner), values=values, commit=False)
    if owner is not None and not changed:
        raise _lease_lost(model, object_id, owner)
    return changed


def set_status(
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
        values["started_at"] = func.coalesce(model.started_at, now_param())
    return update_rows(session, model, _this_row(model, object_id, owner), values=values, commit=commit)


def acquire(session: Session, model: Leased, object_id: int, owner: str, stale_after: timedelta,
            extra: dict[str, Any], commit: bool) -> bool:
    """Atomically claim a run or judgement for ``owner`` (one conditional UPDATE): succeeds if it is
    queued, or running under this owner, or running under a worker whose heartbeat is older than
    ``stale_after``; never if it is finished or has a cancel request, nor a human judgement. Sets status running, stamps
    started_at once, counts ``attempts`` and sets ``extra`` (where a run runs)."""
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
        "started_at": func.coalesce(model.started_at, now_param()),
        "error": None,
        "attempts": model.attempts + 1,
        "progress_at": None,  # this attempt has made no progress yet (stall detection: start-up allowance)
        **_KINDS[model].reset_on_requeue,
        **extra,
    }
    return update_rows(
        session, model, model.id == object_id, model.cancel_requested.is_(False), claimable,
        _KINDS[model].worker_job, values=values, commit=commit,
    )


@dataclass(frozen=True)
class HeartbeatResult:
    ok: bool  # False: the lease is lost (another worker took over, or the run was deleted/finished)
    cancel_requested: bool


def heartbeat(session: Session, model: Leased, object_id: int, owner: str, extra: dict[str, Any],
              commit: bool) -> HeartbeatResult:
    """Renew ``owner``'s lease (setting ``extra`` too: a run's progress); says whether it is still held and
    whether a cancel was requested (True too when the row is gone)."""
    now = utcnow()
    renewed = {"heartbeat_at": now, "updated_at": now, **extra}
    changed = update_rows(session, model, leased_by(model, object_id, owner), values=renewed, commit=False)
    cancel = session.scalar(select(model.cancel_requested).where(model.id == object_id))
    if commit:
        session.commit()
    return HeartbeatResult(ok=changed, cancel_requested=bool(cancel) if cancel is not None else True)


def release(session: Session, model: Leased, object_id: int, owner: str, *, commit: bool) -> bool:
    """Drop ``owner``'s lease, whatever the status."""
    return update_rows(
        session, model, model.id == object_id, model.lease_owner == owner, values={"lease_owner": None}, commit=commit
    )


def _attempts_text(attempts: int) -> str:
    return f"{attempts} attempt{'s' if attempts != 1 else ''}"


def requeue_stale(
    session: Session, model: Leased, stale_after: timedelta, commit: bool, max_attempts: int | None = None
) -> list[int]:
    """Running objects whose heartbeat is older than ``stale_after`` (their worker died): those with a
    cancel request become cancelled, the others queued again (lease cleared, the reason kept as
    ``last_error``), or failed with that reason once they have had ``max_attempts`` (a crash loop: a worker
    killed again and again, e.g. by the OOM killer). Rows without any heartbeat were never started by a
    worker (a task the broker refused, ``unqueue_unsent``): re-queued without counting. Human judgements
    are no worker's and are left alone. Returns the ids re-queued, for the caller to send to the broker
    again."""
    kind = _KINDS[model]
    cutoff = utcnow() - stale_after
    stale = and_(
        model.status == "running",
        or_(model.heartbeat_at.is_(None), model.heartbeat_at < cutoff),
        kind.worker_job,
    )
    rows = session.execute(
        select(model.id, model.attempts, model.heartbeat_at, kind.progress.label("progress"))
        .where(stale, model.cancel_requested.is_(False))
        .with_for_update()
    ).all()
    now = utcnow()
    cancelled = {"status": "cancelled", "finished_at": now, "lease_owner": None, "updated_at": now}
    update_rows(session, model, stale, model.cancel_requested.is_(True), values=cancelled, commit=False)
    requeued: list[int] = []
    for row in rows:
        values: dict[str, Any] = {"status": "queued"}
        if row.heartbeat_at is not None:
            reason = (
                f"its worker stopped sending heartbeats for over {stale_after.total_seconds():g} s "
                f"{kind.progress_text.format(row.progress)} (the worker was killed, ran out of memory, or lost "
                "its machine or the database)"
            )
            values["last_error"] = f"attempt {row.attempts}: {reason}"
            if max_attempts is not None and row.attempts >= max_attempts:
                values.update(
                    status="failed", finished_at=now, error=f"{reason}; stopped after {_attempts_text(row.attempts)}"
                )
        if values["status"] == "queued":
            requeued.append(row.id)
        values.update(lease_owner=None, updated_at=now)
        update_rows(session, model, model.id == row.id, stale, values=values, commit=False)
    if commit:
        session.commit()
    return requeued


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
    attempts = session.scalar(select(model.attempts).where(leased_by(model, object_id, owner)).with_for_update())
    if attempts is None:
        return None
    tail = f"; last lines of its log:\n{log_tail}" if log_tail else ""
    now = utcnow()
    values: dict[str, Any] = {"status": "queued", "last_error": f"attempt {attempts}: {reason}{tail}"}
    if attempts >= max_attempts:
        values.update(status="failed", finished_at=now, error=f"{reason}; stopped after {_attempts_text(attempts)}{tail}")
    update_rows(
        session, model, leased_by(model, object_id, owner), values={"lease_owner": None, "updated_at": now, **values},
        commit=commit,
    )
    return values["status"]


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
        **_KINDS[model].reset_on_requeue,
    }
    not_cancelled = model.cancel_requested.is_(False)  # a cancel ends it
    return update_rows(session, model, leased_by(model, object_id, owner), not_cancelled, values=values, commit=commit)


def unqueue_unsent(
    session: Session, table: Literal["runs", "judgements"], object_id: int, *, commit: bool = True
) -> bool:
    """A re-queued run/judgement whose task could not be sent (broker down) goes back to running with no
    heartbeat, so that the next reaper pass re-queues it and tries again (and a worker that still gets an
    older message for it may claim it)."""
    model = _BY_TABLE[table]
    return update_rows(
        session, model, model.id == object_id, model.status == "queued", model.lease_owner.is_(None),
        values={"status": "running", "heartbeat_at": None, "updated_at": utcnow()}, commit=commit,
    )


@dataclass(frozen=True)
class WaitingJobs:
    """The runs and judgements of one broker queue that wait for a worker (queued, no lease, no cancel)."""

    count: int  # all of them
    idle: list[tuple[Literal["runs", "judgements"], int]]  # those untouched for the age asked, oldest first


def waiting_jobs(session: Session, *, idle_for: timedelta) -> dict[str, WaitingJobs]:
    """Per queue, the jobs waiting for a worker and those of them not touched (``updated_at``) for
    ``idle_for``: the reaper's candidates for a lost broker message (see worker.reaper.redispatch_lost)."""
    cutoff = utcnow() - idle_for
    found: dict[str, list[tuple[Any, str, int, bool]]] = {}
    for table, model in _BY_TABLE.items():
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
    model = _BY_TABLE[table]
    now = utcnow()
    return update_rows(
        session,
        model,
        model.id == object_id,
        model.status == "queued",
        model.lease_owner.is_(None),
        model.cancel_requested.is_(False),
        model.updated_at < now - idle_for,
        values={"updated_at": now},
        commit=commit,
    )


def _locked(session: Session, model: Leased, object_id: int) -> Any:
    """The row, locked (FOR UPDATE), or NotFound."""
    row = session.get(model, object_id, with_for_update=True)
    if row is None:
        raise NotFound(f"{_KINDS[model].noun} {object_id} not found")
    return row


def request_cancel(session: Session, model: Leased, object_id: int, *, commit: bool) -> Any:
    """Ask a run or judgement to stop. A queued one is cancelled at once; a running one is stopped by its
    worker (which sees ``cancel_requested`` in its heartbeat). Cancelling a finished one raises Conflict,
    except that cancelling a cancelled one is a no-op. Returns the row."""
    row = _locked(session, model, object_id)
    if row.status in TERMINAL_STATUSES and row.status != "cancelled":
        raise Conflict(f"{_KINDS[model].noun} {object_id} has already {row.status}")
    if row.status not in TERMINAL_STATUSES:
        row.cancel_requested = True
        if row.status == "queued":
            row.status = "cancelled"
            row.finished_at = utcnow()
        row.updated_at = utcnow()
        session.flush()
    if commit:
        session.commit()
    return row


def delete_row(session: Session, model: Leased, object_id: int, *, force: bool, commit: bool) -> None:
    """Delete a run or judgement with its rows (ON DELETE CASCADE). A running one must be cancelled first
    (Conflict) unless ``force``: its worker would keep writing."""
    row = _locked(session, model, object_id)
    if row.status == "running" and not force:
        noun = _KINDS[model].noun
        raise Conflict(f"{noun} {object_id} is running: cancel it first (or delete with force=true)")
    session.expunge(row)
    session.execute(delete(model).where(model.id == object_id))
    if commit:
        session.commit()
