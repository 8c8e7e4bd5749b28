"""The leaderboard: Bradley-Terry ratings (Elo scale) of every judged policy from the pairwise verdicts of
one judge, computed from the stored verdicts whenever it is read (backend.leaderboard)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from .. import store
from ..deps import CanRead, ReadSession
from ..errors import FieldErrors
from ..leaderboard import leaderboard
from ..schemas import INT32_MAX, JudgeBackend, LeaderboardGroupBy, LeaderboardOut, ShortText, Tag

router = APIRouter(prefix="/leaderboard", tags=["leaderboard"])


@router.get(
    "",
    response_model=LeaderboardOut,
    dependencies=[CanRead],
    summary="Bradley-Terry ratings (Elo scale) of the judged policies, from one judge's verdicts",
    description="Every judgement by the judge backend (and model) counts, each prompt with a valid verdict "
    "one comparison; players are runs (or, group_by=algorithm_tau, each algorithm at each tau) and the "
    "reference (SFT) policies, one per reference model. Best first, with 95% bootstrap intervals.",
)
def get_leaderboard(
    session: ReadSession,
    judge_backend: Annotated[JudgeBackend, Query(description="the judge backend whose verdicts count")],
    judge_model: Annotated[
        ShortText | None, Query(description="only judgements by this judge model (judge.model)")
    ] = None,
    tag: Annotated[
        list[Tag] | None,
        Query(
            description="only judgements whose runs (A, and B unless it is the reference) have all these "
            "tags",
            max_length=20,
        ),
    ] = None,
    experiment_id: Annotated[
        int | None, Query(ge=1, le=INT32_MAX, description="only judgements between runs of this experiment")
    ] = None,
    group_by: Annotated[
        LeaderboardGroupBy,
        Query(
            description="run: each run's policy (per judged step) is a player; algorithm_tau: each "
            "(algorithm, kl_coef), its seeds pooled"
        ),
    ] = "run",
) -> LeaderboardOut:
    if experiment_id is not None and store.get_experiment(session, experiment_id) is None:
        raise FieldErrors([(("query", "experiment_id"), f"experiment {experiment_id} does not exist")])
    rows = store.leaderboard_rows(
        session,
        judge_backend=judge_backend,
        judge_model=judge_model,
        tags=tag or (),
        experiment_id=experiment_id,
    )
    return leaderboard(
        rows,
        judge_backend=judge_backend,
        judge_model=judge_model,
        tag=tag or (),
        experiment_id=experiment_id,
        group_by=group_by,
    )
