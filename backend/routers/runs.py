"""Runs: create (queued to a worker), list/filter, get, patch tags/notes, cancel, clone, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from klq.config import AlgorithmName, RunConfig

from .. import dispatch, store
from ..deps import AppSettings, CanRead, CanWrite, ReadSession, WriteSession
from ..errors import FieldErrors, ServiceUnavailable
from ..http_cache import cached_json
from ..models import Run
from ..schemas import INT32_MAX, RunClone, RunCreate, RunDetail, RunPage, RunPatch, RunStatus, Tag, TagCount
from ..settings import Settings
from ..validation import config_problems, value_problems
from .common import Limit, Offset, QueryText, RunId, run_summary, run_summary_data

router = APIRouter(prefix="/runs", tags=["runs"])
tags_router = APIRouter(tags=["runs"])


def check_queue(settings: Settings, queue: str | None, loc: tuple[str, ...] = ("body", "queue")) -> str:
    queue = queue or settings.default_queue
    if queue not in settings.queues:
        raise FieldErrors([(loc, f"unknown queue {queue!r}; this server has {settings.queues}")])
    return queue


def check_config(cfg: RunConfig, settings: Settings, loc: tuple[str, ...]) -> None:
    problems = config_problems(cfg, settings)
    if problems:
        raise FieldErrors([((*loc, *p), msg) for p, msg in problems], "invalid run configuration")


def queue_run(session: Session, run: Run) -> None:
    """Send the committed run to the broker; if that fails the run is marked failed and 503 returned."""
    try:
        dispatch.send_train_run(run.id, run.queue)
    except dispatch.DispatchError as err:
        store.finish_run(session, run.id, "failed", error=f"could not be queued: {err}")
        raise ServiceUnavailable(
            f"run {run.id} was created but could not be queued (broker unreachable); it is marked failed",
            run_id=run.id,
        ) from err


@router.post(
    "",
    status_code=201,
    response_model=RunDetail,
    dependencies=[CanWrite],
    summary="Create a run and queue it",
    responses={
        422: {"description": "invalid configuration; each problem names its field"},
        503: {"description": "broker unreachable"},
    },
)
def create_run(body: RunCreate, session: WriteSession, settings: AppSettings) -> RunDetail:
    check_config(body.config, settings, ("body", "config"))
    queue = check_queue(settings, body.queue)
    run = store.create_run(
        session, body.config, name=body.name, tags=body.tags, notes=body.notes, queue=queue
    )
    queue_run(session, run)
    return run_summary(store.require_run(session, run.id), detail=True)


@router.get("", response_model=RunPage, dependencies=[CanRead], summary="List runs (filters, pagination)")
def list_runs(
    request: Request,
    session: ReadSession,
    status: Annotated[list[RunStatus] | None, Query(description="any of these statuses")] = None,
    algorithm: Annotated[
        list[AlgorithmName] | None, Query(description="any of these algorithms (GET /algorithms)")
    ] = None,
    tag: Annotated[list[Tag] | None, Query(description="runs having all these tags", max_length=20)] = None,
    q: Annotated[QueryText | None, Query(max_length=200, description="text in the name or notes")] = None,
    experiment_id: Annotated[
        int | None, Query(ge=1, le=INT32_MAX, description="runs of this experiment")
    ] = None,
    order: Literal["newest", "oldest", "name"] = "newest",
    latest: Annotated[
        list[QueryText] | None,
        Query(max_length=50, description="metric keys whose latest value to include (default all)"),
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Response:
    def page() -> dict:
        runs, total = store.list_runs(
            session,
            status=status,
            algorithm=algorithm,
            tags=tag,
            q=q,
            experiment_id=experiment_id,
            limit=limit,
            offset=offset,
            order=order,
        )
        values = store.latest_metrics(session, [r.id for r in runs], latest)
        # Rendered straight to JSON (same bytes as RunPage's): a page of 50 runs has 1,000 latest values,
        # and building and validating them as models was the largest part of this endpoint's CPU.
        items = [run_summary_data(r, values[r.id]) for r in runs]
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    return cached_json(request, session, page)


@router.get(
    "/{run_id}",
    response_model=RunDetail,
    dependencies=[CanRead],
    summary="A run with its config and latest metrics",
)
def get_run(request: Request, run_id: RunId, session: ReadSession) -> Response:
    def detail() -> RunDetail:
        run = store.require_run(session, run_id)
        return run_summary(run, store.latest_metrics(session, [run_id])[run_id], detail=True)

    return cached_json(request, session, detail)


@router.patch(
    "/{run_id}", response_model=RunDetail, dependencies=[CanWrite], summary="Rename, re-tag or annotate a run"
)
def patch_run(run_id: RunId, body: RunPatch, session: WriteSession) -> RunDetail:
    run = store.update_run_meta(session, run_id, name=body.name, notes=body.notes, tags=body.tags)
    return run_summary(run, store.latest_metrics(session, [run_id])[run_id], detail=True)


@router.post(
    "/{run_id}/cancel",
    response_model=RunDetail,
    dependencies=[CanWrite],
    summary="Cancel a run",
    description="A queued run is cancelled at once; a running one stops at its next iteration boundary. "
    "409 if it has already finished.",
)
def cancel_run(run_id: RunId, session: WriteSession) -> RunDetail:
    run = store.request_cancel(session, run_id)
    return run_summary(run, store.latest_metrics(session, [run_id])[run_id], detail=True)


@router.post(
    "/{run_id}/clone",
    status_code=201,
    response_model=RunDetail,
    dependencies=[CanWrite],
    summary="Queue a copy of a run's config with overrides",
)
def clone_run(run_id: RunId, body: RunClone, session: WriteSession, settings: AppSettings) -> RunDetail:
    source = store.require_run(session, run_id)
    problems = value_problems(body.overrides, ("body", "overrides"))
    if problems:
        raise FieldErrors(problems, "invalid overrides")
    try:
        cfg = RunConfig.model_validate(source.config).with_overrides(body.overrides)
    except ValidationError as err:
        raise FieldErrors(
            [(("body", "overrides", *e["loc"]), e["msg"]) for e in err.errors()], "invalid run configuration"
        ) from err
    except (AttributeError, TypeError, ValueError) as err:
        raise FieldErrors([(("body", "overrides"), f"conflicting or malformed keys: {err}")]) from err
    check_config(cfg, settings, ("body", "overrides"))
    queue = check_queue(settings, body.queue or source.queue)
    name = body.name or f"{source.name} (clone)"[:200]
    run = store.create_run(
        session,
        cfg,
        name=name,
        tags=source.tags if body.tags is None else body.tags,
        notes=source.notes if body.notes is None else body.notes,
        queue=queue,
        parent_id=source.id,
    )
    queue_run(session, run)
    return run_summary(store.require_run(session, run.id), detail=True)


@router.delete(
    "/{run_id}",
    status_code=204,
    dependencies=[CanWrite],
    summary="Delete a run and all its rows",
    description="Metrics, samples, checkpoint records and judgements go with it (files on disk stay). "
    "A running run must be cancelled first (409) unless force=true.",
)
def delete_run(run_id: RunId, session: WriteSession, force: bool = False) -> Response:
    store.delete_run(session, run_id, force=force)
    return Response(status_code=204)


@tags_router.get(
    "/tags", response_model=list[TagCount], dependencies=[CanRead], summary="All tags with their run counts"
)
def list_tags(session: ReadSession) -> list[TagCount]:
    return [TagCount(tag=t, runs=n) for t, n in store.tag_counts(session)]
