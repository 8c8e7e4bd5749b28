"""The leaderboard (GET /leaderboard): Bradley-Terry ratings of the judged policies on the Elo scale."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

LeaderboardGroupBy = Literal["run", "algorithm_tau"]
PlayerKind = Literal["run", "algorithm_tau", "reference"]


class LeaderboardPlayer(BaseModel):
    player: str = Field(
        description="run:<id> (a run's final policy) or run:<id>@<step> (its checkpoint at that step); "
        "algorithm_tau:<algorithm>@<kl_coef> (group_by=algorithm_tau: every run of that algorithm and tau); "
        "reference:<model> (the reference (SFT) policy of the runs whose config names that model)"
    )
    label: str
    kind: PlayerKind
    run_ids: list[int] = Field(
        description="the runs behind it; for a reference: the runs judged against it as their reference"
    )
    step: int | None = Field(description="kind run: the checkpoint step (None: the final policy)")
    algorithm: str | None
    kl_coef: float | None
    reference: str | None = Field(
        description="kind reference: the model (config.model.reference, else policy)"
    )
    rating: float = Field(description="Bradley-Terry rating on the Elo scale (400 points = 10:1 odds)")
    ci_low: float | None = Field(
        description="95% percentile bootstrap over comparisons (1000 resamples, seed 0); None if undefined"
    )
    ci_high: float | None
    comparisons: int = Field(description="prompts with a valid verdict this player took part in")
    wins: int
    ties: int
    losses: int


class LeaderboardOut(BaseModel):
    """Ratings from every pairwise verdict of one judge backend (and model), ordered best first: a
    prompt's two presentation orders combined as in a judgement's win-rate (ties count half a win each
    way; invalid verdicts and prompts with one order stored are left out), then
    klq.judge.stats.bradley_terry over all of them."""

    judge_backend: str
    judge_model: str | None
    tag: list[str]
    experiment_id: int | None
    group_by: LeaderboardGroupBy
    anchor: str | None = Field(
        description="the player held at 1000 (its interval is a point): the reference policy when exactly one "
        "takes part; None: the mean rating is 1000"
    )
    judgements: int = Field(description="judgements with at least one comparison counted")
    comparisons: int = Field(description="prompts with a valid verdict between two different players")
    players: list[LeaderboardPlayer] = Field(
        description="by rating, best first; empty with fewer than two comparisons"
    )
