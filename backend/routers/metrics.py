"""Metrics: keys of a run, downsampled series of several runs and keys, exports, and a live event stream."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from .. import store
from ..db import Database
from ..deps import CanRead, ReadSession
from ..downsample import MIN_POINTS
from ..errors import FieldErrors
from ..http_cache import cached_json
from ..models import TERMINAL_STATUSES, Run
from ..schemas import INT32_MAX, STEP_MAX, MetricKey, Series, SeriesResponse
from .common import QueryText, RunId, finite

router = APIRouter(tags=["metrics"])


@router.get(
    "/runs/{run_id}/metrics/keys",
    response_model=list[MetricKey],
    dependencies=[CanRead],
    summary="Metric keys of a run",
)
def metric_keys(run_id: RunId, session: ReadSession) -> list[MetricKey]:
    store.require_run(session, run_id)
    return [
        MetricKey(key=m.key, last_step=m.step, last_value=finite(m.value), wall_time=finite(m.wall_time))
        for m in store.metric_keys(session, run_id)
    ]


@router.get(
    "/metrics/series",
    response_model=SeriesResponse,
    dependencies=[CanRead],
    summary="Series of several keys of several runs, downsampled on the server",
    description="Each (run, key) series has at most `max_points` points: a longer range is cut into at most "
    "(max_points - 2) / 2 aligned buckets of 2^s steps and each bucket's minimum and maximum come back (with the "
    "range's first and last points), so every spike survives; read from write-time roll-ups. `since_step` returns only newer points (live tails: pass the previous `last_step`). "
    "Without `key`, all keys of each run. NaN/inf points are left out.",
)
def series(
    request: Request,
    session: ReadSession,
    run_id: Annotated[list[Annotated[int, Query(ge=1, le=INT32_MAX)]], Query(min_length=1, max_length=20)],
    key: Annotated[list[QueryText] | None, Query(max_length=100)] = None,
    max_points: Annotated[int, Query(ge=MIN_POINTS)] = 500,
    since_step: Annotated[int | None, Query(ge=-1, le=STEP_MAX)] = None,
    until_step: Annotated[int | None, Query(ge=0, le=STEP_MAX)] = None,
    include_wall_time: bool = False,
) -> Response:
    return cached_json(
        request,
        session,
        lambda: _series(request, session, run_id, key, max_points, since_step, until_step, include_wall_time),
    )


def _series(
    request: Request,
    session: Session,
    run_id: list[int],
    key: list[str] | None,
    max_points: int,
    since_step: int | None,
    until_step: int | None,
    include_wall_time: bool,
) -> SeriesResponse:
    settings = request.app.state.settings
    max_points = min(max_points, settings.max_series_points)
    run_ids = list(dict.fromkeys(run_id))
    found = set(session.scalars(select(Run.id).where(Run.id.in_(run_ids))))
    for rid in run_ids:
        if rid not in found:
            raise store.NotFound(f"run {rid} not found")
    keys_by_run = {rid: list(dict.fromkeys(key)) for rid in run_ids} if key else None
    if keys_by_run is None:
        latest = store.latest_metrics(session, run_ids)
        keys_by_run = {rid: sorted(latest[rid]) for rid in run_ids}
    count = sum(len(v) for v in keys_by_run.values())
    if count > settings.max_series_per_request:
        raise FieldErrors(
            [
                (
                    ("query", "key"),
                    f"{count} series requested; at most {settings.max_series_per_request} per request",
                )
            ]
        )
    out = []
    for rid in run_ids:
        for k in keys_by_run[rid]:
            pp = store.plot_points(
                session, rid, k, since_step=since_step, until_step=until_step, max_points=max_points
            )
            out.append(
                Series(
                    run_id=rid,
                    key=k,
                    steps=[p[0] for p in pp.points],
                    values=[p[1] for p in pp.points],
                    wall_times=[finite(p[2]) for p in pp.points] if include_wall_time else None,
                    total_points=pp.total,
                    downsampled=pp.downsampled,
                    last_step=pp.last_step,
                )
            )
    return SeriesResponse(max_points=max_points, series=out)


def _csv_value(value: float | None) -> str:
    return "" if value is None else repr(value)


def _export_rows(db: Database, run_id: int, keys: list[str] | None) -> Iterator[tuple[Any, ...]]:
    with db.session() as session:
        yield from store.iter_metrics(session, run_id, keys)


@router.get(
    "/runs/{run_id}/metrics/export",
    dependencies=[CanRead],
    summary="Export a run's metrics (CSV or JSON), streamed",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/json": {}}}},
)
def export_metrics(
    request: Request,
    run_id: RunId,
    session: ReadSession,
    format: Literal["csv", "json"] = "csv",
    key: Annotated[list[QueryText] | None, Query(max_length=100)] = None,
) -> StreamingResponse:
    run = store.require_run(session, run_id)
    db: Database = request.app.state.db
    rows = _export_rows(db, run_id, key)
    filename = f"klq-run-{run.id}-metrics.{format}"

    def csv_chunks() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["run_id", "key", "step", "value", "wall_time"])
        for i, (k, step, value, wall) in enumerate(rows):
            writer.writerow([run_id, k, step, _csv_value(value), _csv_value(wall)])
            if i % 2000 == 1999:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    def json_chunks() -> Iterator[str]:
        yield f'{{"run_id": {run_id}, "metrics": ['
        sep = ""
        batch = []
        for k, step, value, wall in rows:
            batch.append(
                sep
                + json.dumps(
                    {"key": k, "step": step, "value": finite(value), "wall_time": finite(wall)},
                    allow_nan=False,
                )
            )
            sep = ", "
            if len(batch) >= 2000:
                yield "".join(batch)
                batch = []
        yield "".join(batch) + "]}"

    media = "text/csv; charset=utf-8" if format == "csv" else "application/json"
    return StreamingResponse(
        csv_chunks() if format == "csv" else json_chunks(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# --- live updates ----------------------------------------------------------------------------------------


def _status_payload(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "status": run.status,
        "iteration": run.iteration,
        "total_iterations": run.total_iterations,
        "episodes": run.episodes,
        "error": run.error,
        "cancel_requested": run.cancel_requested,
        "heartbeat_at": run.heartbeat_at.isoformat() if run.heartbeat_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def _poll(
    db: Database, run_id: int, after_step: int, after_sample_step: int, max_steps: int
) -> tuple[Any, ...]:
    with db.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            return None, [], []
        status = _status_payload(run)
        rows = store.metrics_after(session, run_id, after_step, max_steps=max_steps)
        samples = store.sample_steps(session, run_id, since_step=after_sample_step)
        return status, rows, samples


def _json(data: Any) -> str:
    return json.dumps(data, allow_nan=False, separators=(",", ":"))


@router.get(
    "/runs/{run_id}/events",
    dependencies=[CanRead],
    response_class=EventSourceResponse,
    summary="Live updates of a run (server-sent events)",
    description="Events: `status` (status and progress, sent at connect and on change), `metrics` (one per "
    "step, `id` = the step, data `{step, values: {key: value}, wall_time}`), `samples` (new sample steps), "
    "and `end` once the run has finished and everything was sent. A reconnect with `Last-Event-ID` "
    "resumes after that step; without it the stream starts after `since_step` (-1: from the beginning), "
    "else from the latest step at connect time.",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def run_events(
    request: Request,
    run_id: RunId,
    since_step: Annotated[int | None, Query(ge=-1, le=STEP_MAX)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> EventSourceResponse:
    db: Database = request.app.state.db
    settings = request.app.state.settings

    def _start() -> int:
        with db.session() as session:
            store.require_run(session, run_id)
            latest = store.max_metric_step(session, run_id)
        return -1 if latest is None else latest

    current = await anyio.to_thread.run_sync(_start)
    start: int | None = None
    if last_event_id is not None:
        try:
            start = int(last_event_id)
        except ValueError:
            start = None
    if start is None:
        start = since_step if since_step is not None else current
    poll_interval = settings.sse_poll_interval

    async def events() -> AsyncIterator[ServerSentEvent]:
        after = start
        after_samples = start
        last_status = None
        max_steps = 200
        while True:
            status, rows, samples = await anyio.to_thread.run_sync(
                _poll, db, run_id, after, after_samples, max_steps
            )
            if status is None:
                yield ServerSentEvent(event="deleted", data=_json({"run_id": run_id}))
                return
            if status != last_status:
                last_status = status
                yield ServerSentEvent(event="status", data=_json(status))
            by_step: dict[int, dict[str, Any]] = {}
            for k, step, value, wall in rows:
                entry = by_step.setdefault(step, {"step": step, "values": {}, "wall_time": None})
                entry["values"][k] = value if value is not None and math.isfinite(value) else None
                if wall is not None and math.isfinite(wall):
                    entry["wall_time"] = max(entry["wall_time"] or wall, wall)
            for step in sorted(by_step):
                yield ServerSentEvent(event="metrics", id=str(step), data=_json(by_step[step]))
                after = step
            for step, count in samples:
                yield ServerSentEvent(event="samples", data=_json({"step": step, "count": count}))
                after_samples = max(after_samples, step)
            if rows:
                continue  # more may be waiting: poll again at once
            if status["status"] in TERMINAL_STATUSES:
                yield ServerSentEvent(
                    event="end", data=_json({"status": status["status"], "last_step": after})
                )
                return
            await anyio.sleep(poll_interval)

    return EventSourceResponse(events(), ping=settings.sse_ping_interval)
