"""Samples: paged per run and step, aligned comparison of runs on the same prompts, export.

Prompts and responses are plain text, returned as JSON strings (or CSV/JSONL on export), never HTML.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from .. import store
from ..db import Database
from ..deps import CanRead, ReadSession
from ..errors import FieldErrors
from ..http_cache import cached_json
from ..models import Run, Sample
from ..schemas import (
    INT32_MAX,
    STEP_MAX,
    ComparedPrompt,
    ComparedRun,
    SampleComparison,
    SampleOut,
    SamplePage,
    SampleStep,
    SampleTokens,
)
from .common import Limit, Offset, QueryText, RunId, StepQuery

router = APIRouter(tags=["samples"])


SampleKindQuery = Annotated[
    Literal["eval", "train"],
    Query(description="eval: held-out samples (default); train: the recorded training rollouts"),
]
CompareSort = Literal[
    "prompt_id",
    "score_spread",
    "-score_spread",
    "gold_spread",
    "-gold_spread",
    "kl_spread",
    "-kl_spread",
    "length_spread",
    "-length_spread",
]
SortQuery = Literal[
    "score",
    "-score",
    "gold",
    "-gold",
    "kl",
    "-kl",
    "length",
    "-length",
    "rm_gold_gap",
    "-rm_gold_gap",
    "step",
    "-step",
    "prompt_id",
    "-prompt_id",
]  # store.SAMPLE_SORT_KEYS, '-' first for descending
Bound = Annotated[float | None, Query(allow_inf_nan=False)]
LengthBound = Annotated[int | None, Query(ge=0, le=INT32_MAX)]


@router.get(
    "/runs/{run_id}/samples",
    response_model=SamplePage,
    dependencies=[CanRead],
    summary="Samples of a run, filtered, sorted and paged",
    description="`kind=train`: the training rollouts recorded at each iteration (`step`). `sort`: score, gold, "
    "kl, length (response tokens), rm_gold_gap (score - gold_score: reward-model score up, gold down), step "
    "or prompt_id, '-' first for descending, NULLs last; top/bottom k = sort + limit. Bounds keep samples "
    "with min_x <= x <= max_x (a sample without that value is left out).",
)
def list_samples(
    request: Request,
    run_id: RunId,
    session: ReadSession,
    step: Annotated[StepQuery, Query(description="only this step")] = None,
    kind: SampleKindQuery = "eval",
    sort: SortQuery | None = None,
    min_score: Bound = None,
    max_score: Bound = None,
    min_gold: Bound = None,
    max_gold: Bound = None,
    min_kl: Bound = None,
    max_kl: Bound = None,
    min_length: LengthBound = None,
    max_length: LengthBound = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Response:
    bounds = {
        "min_score": min_score,
        "max_score": max_score,
        "min_gold": min_gold,
        "max_gold": max_gold,
        "min_kl": min_kl,
        "max_kl": max_kl,
        "min_length": min_length,
        "max_length": max_length,
    }
    problems = [
        (("query", f"min_{name}"), f"min_{name} is above max_{name}")
        for name in ("score", "gold", "kl", "length")
        if bounds[f"min_{name}"] is not None
        and bounds[f"max_{name}"] is not None
        and bounds[f"min_{name}"] > bounds[f"max_{name}"]
    ]
    if problems:
        raise FieldErrors(problems)

    def page() -> SamplePage:
        store.require_run(session, run_id)
        items, total = store.list_samples(
            session,
            run_id,
            step=step,
            kind=kind,
            sort=sort,
            filters={k: v for k, v in bounds.items() if v is not None},
            limit=limit,
            offset=offset,
        )
        return SamplePage(
            items=[SampleOut.model_validate(s) for s in items], total=total, limit=limit, offset=offset
        )

    return cached_json(request, session, page)


@router.get(
    "/runs/{run_id}/prompts/{prompt_id:path}/samples",
    response_model=list[SampleOut],
    dependencies=[CanRead],
    summary="One prompt's samples across all steps of a run",
    description="Ordered by step (then sample index); the prompt id URL-encoded in the path.",
)
def prompt_samples(
    run_id: RunId,
    prompt_id: Annotated[QueryText, Path(min_length=1, max_length=200, description="the prompt's id")],
    session: ReadSession,
    kind: SampleKindQuery = "eval",
) -> list[SampleOut]:
    store.require_run(session, run_id)
    return [SampleOut.model_validate(s) for s in store.prompt_samples(session, run_id, prompt_id, kind=kind)]


@router.get(
    "/samples/{sample_id}/tokens",
    response_model=SampleTokens,
    dependencies=[CanRead],
    summary="A sample's response token by token",
    description='Token ids, their text pieces and the per-token quantities (docs/ALGORITHMS.md, "Per-token '
    'quantities"); 404 if the sample does not exist or has no token record.',
)
def sample_tokens(
    sample_id: Annotated[int, Path(ge=1, le=INT32_MAX, description="sample id")], session: ReadSession
) -> SampleTokens:
    found = store.sample_tokens(session, sample_id)
    if found is None:
        raise store.NotFound(f"sample {sample_id} has no token record (or does not exist)")
    return _tokens_out(*found)


MAX_TOKEN_RECORDS = 100


@router.get(
    "/samples/tokens",
    response_model=list[SampleTokens],
    dependencies=[CanRead],
    summary="Several samples' responses token by token",
    description=f"The token records of up to {MAX_TOKEN_RECORDS} samples in one request (e.g. one prompt's "
    "samples across steps), in the order of the `sample_id` parameters; samples that do not exist or have "
    "no token record are left out (each record names its `sample_id`).",
)
def samples_tokens(
    session: ReadSession,
    sample_id: Annotated[
        list[Annotated[int, Query(ge=1, le=INT32_MAX)]],
        Query(min_length=1, max_length=MAX_TOKEN_RECORDS, description="sample ids (the parameter repeated)"),
    ],
) -> list[SampleTokens]:
    return [_tokens_out(*found) for found in store.samples_tokens(session, sample_id)]


def _tokens_out(sample: Sample, algorithm: str, record: dict) -> SampleTokens:
    return SampleTokens(
        sample_id=sample.id,
        run_id=sample.run_id,
        step=sample.step,
        kind=sample.kind,
        prompt_id=sample.prompt_id,
        algorithm=algorithm,
        **record,
    )


@router.get(
    "/runs/{run_id}/samples/steps",
    response_model=list[SampleStep],
    dependencies=[CanRead],
    summary="Steps that have samples",
)
def sample_steps(run_id: RunId, session: ReadSession) -> list[SampleStep]:
    store.require_run(session, run_id)
    return [SampleStep(step=s, count=n) for s, n in store.sample_steps(session, run_id)]


@router.get(
    "/samples/compare",
    response_model=SampleComparison,
    dependencies=[CanRead],
    summary="Samples of two or more runs side by side, aligned on prompt id",
    description="`step`: one value for all runs, or one per run (in the order of `run_id`); omitted, each "
    "run's latest sample step. `mode=intersection` keeps the prompts every run has, `union` all of them. "
    "`sort`: prompt_id (default), or score_spread, gold_spread, kl_spread, length_spread - a prompt's "
    "largest minus smallest value over the runs, '-' first for descending (where the runs disagree most); "
    "prompts with fewer than two values last either way.",
)
def compare(
    session: ReadSession,
    run_id: Annotated[list[Annotated[int, Query(ge=1, le=INT32_MAX)]], Query(min_length=2, max_length=10)],
    step: Annotated[list[Annotated[int, Query(ge=0, le=STEP_MAX)]] | None, Query(max_length=10)] = None,
    mode: Literal["intersection", "union"] = "intersection",
    sort: CompareSort = "prompt_id",
    limit: Limit = 50,
    offset: Offset = 0,
) -> SampleComparison:
    if len(set(run_id)) != len(run_id):
        raise FieldErrors([(("query", "run_id"), "each run may appear once")])
    steps: list[int | None]
    if not step:
        steps = [None] * len(run_id)
    elif len(step) == 1:
        steps = [step[0]] * len(run_id)
    elif len(step) == len(run_id):
        steps = list(step)
    else:
        raise FieldErrors([(("query", "step"), "give one step for all runs or one per run")])
    found = set(session.scalars(select(Run.id).where(Run.id.in_(run_id))))
    for rid in run_id:
        if rid not in found:
            raise store.NotFound(f"run {rid} not found")
    aligned = store.compare_samples(session, run_id, steps, mode=mode, sort=sort, limit=limit, offset=offset)
    items = []
    for prompt_id, samples in aligned.items:
        first = next(s for s in samples if s is not None)
        items.append(
            ComparedPrompt(
                prompt_id=prompt_id,
                prompt=first.prompt,
                samples=[SampleOut.model_validate(s) if s is not None else None for s in samples],
            )
        )
    return SampleComparison(
        runs=[ComparedRun(run_id=r, step=s) for r, s in aligned.runs],
        items=items,
        total=aligned.total,
        limit=limit,
        offset=offset,
    )


_EXPORT_FIELDS = ("run_id", "step", "prompt_id", "prompt", "response", "score", "gold_score", "kl")


def _row(s: Sample) -> dict:
    return {f: getattr(s, f) for f in _EXPORT_FIELDS}


@router.get(
    "/runs/{run_id}/samples/export",
    dependencies=[CanRead],
    summary="Export a run's samples (JSONL or CSV), streamed",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
def export_samples(
    request: Request,
    run_id: RunId,
    session: ReadSession,
    format: Literal["jsonl", "csv"] = "jsonl",
    step: StepQuery = None,
) -> StreamingResponse:
    store.require_run(session, run_id)
    db: Database = request.app.state.db

    def rows() -> Iterator[dict]:
        with db.session() as s:
            for sample in store.iter_samples(s, run_id, step=step):
                yield _row(sample)

    def jsonl() -> Iterator[str]:
        for r in rows():
            yield json.dumps(r, ensure_ascii=False) + "\n"

    def csv_chunks() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(_EXPORT_FIELDS))
        writer.writeheader()
        for i, r in enumerate(rows()):
            writer.writerow(r)
            if i % 500 == 499:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    name = f"klq-run-{run_id}-samples" + (f"-step-{step}" if step is not None else "")
    if format == "csv":
        return StreamingResponse(
            csv_chunks(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    return StreamingResponse(
        jsonl(),
        media_type="application/x-ndjson; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}.jsonl"'},
    )
