"""Experiments (docs/EXPERIMENTS.md): a grid of KLQ/PPO runs over one base config, judged when they end,
with results computed from the stored rows whenever they are read."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy.orm import Session

from .. import dispatch, store
from .. import experiments as ex
from ..deps import AppSettings, CanRead, CanWrite, ReadSession, WriteSession
from ..downsample import MIN_POINTS
from ..errors import FieldErrors, ServiceUnavailable
from ..models import Run
from ..schemas import (
    INT32_MAX,
    ExperimentCreate,
    ExperimentCurves,
    ExperimentDetail,
    ExperimentGrid,
    ExperimentPage,
    ExperimentPreview,
    ExperimentResults,
    ExperimentSummary,
)
from ..settings import Settings
from .common import Limit, Offset, QueryText
from .judgements import judge_problems
from .runs import check_config, check_queue

router = APIRouter(prefix="/experiments", tags=["experiments"])

ExperimentId = Annotated[int, Path(ge=1, le=INT32_MAX, description="experiment id")]


def _validated(body: ExperimentCreate, settings: Settings) -> str:
    """Checks beyond the schema (model and dataset references, the queue, the judge's model), each
    problem naming its field; returns the queue."""
    check_config(body.base, settings, ("body", "base"))
    problems = [(("body", *loc), msg) for loc, msg in ex.grid_problems(body.base, body.grid)]
    problems += judge_problems(body.judge, settings, ("body", "judge"))
    if problems:
        raise FieldErrors(problems, "invalid judge")
    return check_queue(settings, body.queue)


def _name(body: ExperimentCreate) -> str:
    return body.name or f"experiment-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def _summary(view: store.ExperimentView, *, detail: bool = False) -> ExperimentSummary:
    exp = view.experiment
    data = dict(
        id=exp.id,
        name=exp.name,
        status=view.status,
        error=view.error,
        grid=ExperimentGrid.model_validate(exp.grid),
        tags=list(exp.tags or []),
        notes=exp.notes,
        queue=exp.queue,
        created_at=exp.created_at,
        judging_started_at=exp.judging_started_at,
        cancel_requested=exp.cancel_requested,
        progress=ex.progress(view.runs, view.judgements),
        compute=ex.compute(view.runs, datetime.now(timezone.utc)),
    )
    if not detail:
        return ExperimentSummary(**data)
    by_id = {r.id: r for r in view.runs}
    judgements = [ex.judgement_out(j, by_id) for j in view.judgements]
    return ExperimentDetail(
        **data,
        base=exp.base,
        judge=exp.judge,
        runs=[ex.run_out(r) for r in view.runs],
        judgements=[j for j in judgements if j is not None],
    )


def _queue_runs(session: Session, experiment_id: int, runs: list[Run]) -> None:
    """Send the committed runs to the broker, as POST /runs does; if it cannot be reached, the runs not
    sent are marked failed with the reason and 503 is returned (the experiment then shows them failed)."""
    for i, run in enumerate(runs):
        try:
            dispatch.send_train_run(run.id, run.queue)
        except dispatch.DispatchError as err:
            for unsent in runs[i:]:
                store.finish_run(
                    session, unsent.id, "failed", error=f"could not be queued: {err}", commit=False
                )
            message = f"{len(runs) - i} of its {len(runs)} runs could not be queued (broker unreachable)"
            store.set_experiment_error(session, experiment_id, message, commit=False)
            session.commit()
            raise ServiceUnavailable(
                f"experiment {experiment_id} was created but {message}; they are marked failed",
                experiment_id=experiment_id,
            ) from err


@router.post(
    "/preview",
    response_model=ExperimentPreview,
    dependencies=[CanWrite],
    summary="The runs an experiment would queue (nothing is created)",
    responses={422: {"description": "invalid body; each problem names its field"}},
)
def preview_experiment(body: ExperimentCreate, settings: AppSettings) -> ExperimentPreview:
    _validated(body, settings)
    return ExperimentPreview(
        runs=ex.plan_runs(_name(body), body.base, body.grid),
        judgements=ex.judgements_if_all_succeed(body.grid) if body.judge.enabled else 0,
    )


@router.post(
    "",
    status_code=201,
    response_model=ExperimentDetail,
    dependencies=[CanWrite],
    summary="Create an experiment and queue its runs",
    responses={
        422: {"description": "invalid body; each problem names its field"},
        503: {"description": "broker unreachable (the runs not queued are marked failed)"},
    },
)
def create_experiment(
    body: ExperimentCreate, session: WriteSession, settings: AppSettings
) -> ExperimentDetail:
    queue = _validated(body, settings)
    exp, runs = store.create_experiment(
        session,
        name=_name(body),
        base=body.base,
        grid=body.grid,
        judge=body.judge.model_dump(mode="json", exclude_none=True),
        tags=body.tags,
        notes=body.notes,
        queue=queue,
    )
    _queue_runs(session, exp.id, runs)
    return _summary(store.experiment_view(session, exp.id), detail=True)


@router.get(
    "", response_model=ExperimentPage, dependencies=[CanRead], summary="List experiments, newest first"
)
def list_experiments(session: ReadSession, limit: Limit = 50, offset: Offset = 0) -> ExperimentPage:
    views, total = store.list_experiments(session, limit=limit, offset=offset)
    return ExperimentPage(items=[_summary(v) for v in views], total=total, limit=limit, offset=offset)


@router.get(
    "/{experiment_id}",
    response_model=ExperimentDetail,
    dependencies=[CanRead],
    summary="An experiment: status, grid, progress, compute, its runs and judgements",
)
def get_experiment(experiment_id: ExperimentId, session: ReadSession) -> ExperimentDetail:
    return _summary(store.experiment_view(session, experiment_id), detail=True)


@router.get(
    "/{experiment_id}/results",
    response_model=ExperimentResults,
    dependencies=[CanRead],
    summary="Results: intervals over seeds, pooled win-rates, the reward-vs-KL frontier, compute",
)
def experiment_results(experiment_id: ExperimentId, session: ReadSession) -> ExperimentResults:
    return store.experiment_results(session, experiment_id)


@router.get(
    "/{experiment_id}/results.csv",
    dependencies=[CanRead],
    summary="The results table as CSV (one line per (tau, algorithm))",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def experiment_results_csv(experiment_id: ExperimentId, session: ReadSession) -> Response:
    text = ex.results_csv(store.experiment_results(session, experiment_id))
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="experiment-{experiment_id}-results.csv"'},
    )


@router.get(
    "/{experiment_id}/curves",
    response_model=ExperimentCurves,
    dependencies=[CanRead],
    summary="Seed-averaged curves of one metric with a min-max band, per (algorithm, tau)",
)
def experiment_curves(
    experiment_id: ExperimentId,
    session: ReadSession,
    settings: AppSettings,
    key: Annotated[
        QueryText, Query(min_length=1, max_length=200, description="metric key")
    ] = "objective/scores",
    max_points: Annotated[
        int, Query(ge=MIN_POINTS, le=INT32_MAX, description="per curve (capped by the server's limit)")
    ] = 500,
) -> ExperimentCurves:
    max_points = min(max_points, settings.max_series_points)
    view = store.experiment_view(session, experiment_id)
    points = store.experiment_metric_points(session, experiment_id, key)
    return ExperimentCurves(key=key, max_points=max_points, curves=ex.curves(view.runs, points, max_points))


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentDetail,
    dependencies=[CanWrite],
    summary="Cancel an experiment's unfinished runs and judgements (no judging starts)",
    description="409 if it has already succeeded or failed; cancelling a cancelled experiment is a no-op.",
)
def cancel_experiment(experiment_id: ExperimentId, session: WriteSession) -> ExperimentDetail:
    store.cancel_experiment(session, experiment_id)
    return _summary(store.experiment_view(session, experiment_id), detail=True)


@router.delete(
    "/{experiment_id}",
    status_code=204,
    dependencies=[CanWrite],
    summary="Delete an experiment with its runs and judgements",
    description="409 while it is queued, running or judging (cancel it first) unless force=true.",
)
def delete_experiment(experiment_id: ExperimentId, session: WriteSession, force: bool = False) -> Response:
    store.delete_experiment(session, experiment_id, force=force)
    return Response(status_code=204)
