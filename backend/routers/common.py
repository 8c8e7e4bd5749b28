"""Shared parameter types and converters of the routers."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator

from ..models import Judgement, Run
from ..schemas import (
    INT32_MAX,
    MAX_PAGE,
    STEP_MAX,
    AgreementOut,
    JudgementOut,
    LengthDiagnosticsOut,
    RunDetail,
    RunSummary,
    WinRateOut,
)
from ..schemas._common import _text

RunId = Annotated[int, Path(ge=1, le=INT32_MAX, description="run id")]
JudgementPath = Annotated[int, Path(ge=1, le=INT32_MAX, description="judgement id")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"page size (at most {MAX_PAGE})")]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX)]
StepQuery = Annotated[int | None, Query(ge=0, le=STEP_MAX)]
QueryText = Annotated[str, AfterValidator(_text)]


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def run_summary_data(run: Run, latest: dict | None = None) -> dict[str, Any]:
    """A RunSummary's fields as a plain dict, in the model's field order, already of the model's types
    (``latest`` as ``{key: {"step": int, "value": float | None}}``)."""
    progress = None
    if run.total_iterations:
        progress = min(1.0, max(0.0, run.iteration / run.total_iterations))
    return dict(
        id=run.id,
        name=run.name,
        algorithm=run.algorithm,
        status=run.status,
        queue=run.queue,
        tags=run.tags,
        notes=run.notes,
        error=run.error,
        parent_id=run.parent_id,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        iteration=run.iteration,
        total_iterations=run.total_iterations,
        episodes=run.episodes,
        progress=progress,
        heartbeat_at=run.heartbeat_at,
        worker_host=run.worker_host,
        worker_gpu=run.worker_gpu,
        cancel_requested=run.cancel_requested,
        experiment_id=run.experiment_id,
        # rows of store.latest_metrics: (run_id, key, step, value, wall_time); indexing is the cheap access
        latest={
            k: {"step": int(m[2]), "value": None if m[3] is None else finite(float(m[3]))}
            for k, m in (latest or {}).items()
        },
    )


def run_summary(run: Run, latest: dict | None = None, *, detail: bool = False) -> RunSummary:
    data = run_summary_data(run, latest)
    if detail:
        return RunDetail(
            **data,
            config=run.config,
            provenance=run.provenance,
            attempts=run.attempts,
            last_error=run.last_error,
            updated_at=run.updated_at,
        )
    return RunSummary(**data)


def judgement_out(
    j: Judgement, length: LengthDiagnosticsOut | None = None, agreement: list[AgreementOut] | None = None
) -> JudgementOut:
    """A judgement as the API shows it; ``length``: its length diagnostics (store.judgement_lengths), and
    ``agreement``: its agreement with the judgements of the other kind (backend.agreement), if they were
    asked for."""
    return JudgementOut(
        id=j.id,
        status=j.status,
        queue=j.queue,
        run_a=j.run_a_id,
        step_a=j.step_a,
        run_b=j.run_b_id,
        step_b=j.step_b,
        num_prompts=j.num_prompts,
        seed=j.seed,
        judge=j.judge,
        error=j.error,
        created_at=j.created_at,
        started_at=j.started_at,
        finished_at=j.finished_at,
        cancel_requested=j.cancel_requested,
        completed=j.completed,
        total=j.total,
        source_judgement=j.source_judgement_id,
        agreement=agreement,
        result=WinRateOut(
            wins_a=j.wins_a,
            wins_b=j.wins_b,
            ties=j.ties,
            invalid=j.invalid,
            win_rate=j.win_rate,
            ci_low=j.ci_low,
            ci_high=j.ci_high,
            position_consistency=j.position_consistency,
            length=length,
        ),
    )
