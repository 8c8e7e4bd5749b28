"""Judgements: pairwise LLM-as-a-judge comparisons of two policies (the judging runs on a worker)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from .. import dispatch, store
from ..agreement import agreement_rows
from ..deps import AppSettings, CanRead, CanWrite, ReadSession, WriteSession
from ..errors import FieldErrors, Loc, ServiceUnavailable
from ..models import HUMAN, Judgement, Run
from ..schemas import (
    INT32_MAX,
    JudgeConfig,
    JudgementCreate,
    JudgementOut,
    JudgementPage,
    RunStatus,
    VerdictOut,
    VerdictPage,
)
from ..settings import Settings
from ..validation import reference_problem
from .common import JudgementPath, Limit, Offset, judgement_out
from .runs import check_queue
from .votes import create_human_judgement

router = APIRouter(prefix="/judgements", tags=["judgements"])

INCLUDE_LENGTH = (
    "result.length: the length diagnostics, computed from the verdicts (a bootstrap of about a second per "
    "judgement the first time its verdicts are read)"
)


def judge_problems(judge: JudgeConfig, settings: Settings, loc: tuple[str, ...]) -> list[tuple[Loc, str]]:
    """Where a judge's model may come from on this server (the model roots, hub ids if allowed)."""
    if judge.backend not in ("local_hf", "reward_model") or judge.model is None:
        return []
    msg = reference_problem(
        judge.model,
        roots=settings.model_roots,
        allow_hub=settings.allow_hub_models,
        kind="model",
        hub_setting="KLQ_ALLOW_HUB_MODELS",
    )
    return [((*loc, "model"), msg)] if msg else []


@router.post(
    "",
    status_code=201,
    response_model=JudgementOut,
    dependencies=[CanWrite],
    summary="Queue a judgement of policy A against policy B, or start a human voting session",
    description="B defaults to A's reference (SFT) policy; steps default to the final checkpoints. The judge "
    "backend's secrets (API keys) are server settings and are refused here. With judge {\"backend\": "
    "\"human\"}: a voting session (running at once, never queued) over the pairs of source_judgement, or of "
    "run_a's and run_b's stored samples at step_a/step_b (default: their latest) aligned on prompt id; "
    "voters take GET /judgements/{id}/ballot/next and POST /judgements/{id}/votes.",
)
def create_judgement(body: JudgementCreate, session: WriteSession, settings: AppSettings) -> JudgementOut:
    if body.judge.backend == HUMAN:
        return create_human_judgement(body, session)
    problems: list[tuple[Loc, str]] = []
    if body.run_a is None:
        problems.append((("body", "run_a"), "Field required"))
    for field in ("source_judgement", "prompt_ids"):
        if getattr(body, field) is not None:
            problems.append((("body", field), "only for human votes (judge backend 'human')"))
    for field, rid in (("run_a", body.run_a), ("run_b", body.run_b)):
        if rid is not None and session.get(Run, rid) is None:
            problems.append((("body", field), f"run {rid} does not exist"))
    problems += judge_problems(body.judge, settings, ("body", "judge"))
    if problems:
        raise FieldErrors(problems, "invalid judgement")
    queue = check_queue(settings, body.queue)
    assert body.run_a is not None
    j = store.create_judgement(
        session,
        run_a_id=body.run_a,
        step_a=body.step_a,
        run_b_id=body.run_b,
        step_b=body.step_b,
        num_prompts=body.num_prompts,
        judge=body.judge.stored(),
        seed=body.seed,
        queue=queue,
    )
    try:
        dispatch.send_judgement(j.id, queue)
    except dispatch.DispatchError as err:
        store.set_judgement_status(session, j.id, "failed", error=f"could not be queued: {err}")
        raise ServiceUnavailable(
            f"judgement {j.id} was created but could not be queued (broker unreachable)", judgement_id=j.id
        ) from err
    return judgement_out(store.get_judgement(session, j.id))


@router.get("", response_model=JudgementPage, dependencies=[CanRead], summary="List judgements")
def list_judgements(
    session: ReadSession,
    run_id: Annotated[
        int | None, Query(ge=1, le=INT32_MAX, description="judgements involving this run")
    ] = None,
    status: Annotated[list[RunStatus] | None, Query()] = None,
    include_length: Annotated[bool, Query(description=INCLUDE_LENGTH)] = False,
    limit: Limit = 50,
    offset: Offset = 0,
) -> JudgementPage:
    items, total = store.list_judgements(session, run_id=run_id, status=status, limit=limit, offset=offset)
    lengths = store.judgement_lengths(session, items) if include_length else {}
    return JudgementPage(
        items=[judgement_out(j, lengths.get(j.id)) for j in items], total=total, limit=limit, offset=offset
    )


def _get(session: Session, judgement_id: int) -> Judgement:
    j = store.get_judgement(session, judgement_id)
    if j is None:
        raise store.NotFound(f"judgement {judgement_id} not found")
    return j


@router.get(
    "/{judgement_id}",
    response_model=JudgementOut,
    dependencies=[CanRead],
    summary="A judgement: progress, win-rate with 95% Wilson CI, length diagnostics, agreement with human "
    "votes, and a page of verdicts",
)
def get_judgement(
    judgement_id: JudgementPath,
    session: ReadSession,
    include_verdicts: bool = True,
    include_length: Annotated[bool, Query(description=INCLUDE_LENGTH)] = True,
    include_agreement: Annotated[
        bool,
        Query(
            description="agreement: of this automatic judgement with each human judgement of the same two "
            "policies (or of this human one with each automatic one) on the pairs they share"
        ),
    ] = True,
    limit: Limit = 100,
    offset: Offset = 0,
) -> JudgementOut:
    j = _get(session, judgement_id)
    agreement = None
    if include_agreement:
        inputs = store.agreement_inputs(session, j)
        agreement = agreement_rows(j.id, inputs.judgements, inputs.rows, inputs.voters)
    out = judgement_out(j, store.judgement_lengths(session, [j])[j.id] if include_length else None, agreement)
    if include_verdicts:
        items, total = store.list_verdicts(session, judgement_id, limit=limit, offset=offset)
        out.verdicts = [VerdictOut.model_validate(v) for v in items]
        out.verdicts_total = total
    return out


@router.get(
    "/{judgement_id}/verdicts", response_model=VerdictPage, dependencies=[CanRead], summary="Verdicts, paged"
)
def list_verdicts(
    judgement_id: JudgementPath, session: ReadSession, limit: Limit = 100, offset: Offset = 0
) -> VerdictPage:
    _get(session, judgement_id)
    items, total = store.list_verdicts(session, judgement_id, limit=limit, offset=offset)
    return VerdictPage(
        items=[VerdictOut.model_validate(v) for v in items], total=total, limit=limit, offset=offset
    )


@router.post(
    "/{judgement_id}/cancel",
    response_model=JudgementOut,
    dependencies=[CanWrite],
    summary="Cancel a judgement",
)
def cancel_judgement(judgement_id: JudgementPath, session: WriteSession) -> JudgementOut:
    return judgement_out(store.request_judgement_cancel(session, judgement_id))


@router.delete(
    "/{judgement_id}", status_code=204, dependencies=[CanWrite], summary="Delete a judgement and its verdicts"
)
def delete_judgement(judgement_id: JudgementPath, session: WriteSession, force: bool = False) -> Response:
    store.delete_judgement(session, judgement_id, force=force)
    return Response(status_code=204)
