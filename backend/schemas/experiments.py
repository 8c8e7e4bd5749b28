"""Experiments (docs/EXPERIMENTS.md): grids, previews, progress, results and curves."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from klq.config import AlgorithmName, RunConfig, algorithm_names

from ._common import INT32_MAX, Name, Notes, QueueName, RunStatus, Tag, _In
from .judgements import JudgeConfig, LengthDiagnosticsOut

ExperimentStatus = Literal["queued", "running", "judging", "succeeded", "failed", "cancelled"]
# outputs name algorithms as plain strings: a stored run of an algorithm no longer registered still lists
JudgementKind = Annotated[
    str,
    Field(
        pattern=r"^(vs_sft|klq_vs_[a-z][a-z0-9]*)$",
        description="vs_sft: a run against its SFT policy; klq_vs_<algorithm>: KLQ's run against that "
        "algorithm's run of the same tau and seed (klq_vs_ppo, ...)",
    ),
]
Vs = Annotated[
    str | None,
    Field(description="klq_vs_<algorithm>: the algorithm KLQ is judged against; vs_sft: None"),
]
MAX_EXPERIMENT_RUNS = 128
DEFAULT_GROUP_SIZE = 4  # responses per prompt of a grid's group-baseline runs when the base has too few


class ExperimentGrid(_In):
    algorithms: list[AlgorithmName] = Field(
        default_factory=algorithm_names,
        min_length=1,
        description="any of the registered algorithms (GET /algorithms); default: all of them. KLQ is judged "
        "against each other one",
    )
    kl_coefs: list[Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]] = Field(
        min_length=1, max_length=8, description="tau values (kl_coef), distinct"
    )
    seeds: list[Annotated[int, Field(ge=0, le=INT32_MAX)]] = Field(
        default_factory=lambda: [1], min_length=1, max_length=16, description="distinct seeds"
    )
    num_generations: int | None = Field(
        None,
        ge=2,
        le=64,
        description="rollout.num_generations of the runs of algorithms whose baseline compares responses to the "
        "same prompt (GET /algorithms: min_generations of 2 or more, e.g. RLOO, GRPO); the others keep the "
        f"base's. Default: the base's value if it is enough, else {DEFAULT_GROUP_SIZE}. train.batch_size counts "
        "responses, so every algorithm of the grid trains on as many responses per iteration",
    )

    @field_validator("algorithms", "kl_coefs", "seeds")
    @classmethod
    def _distinct(cls, values: list[Any]) -> list[Any]:
        # a field validator, so that a 422 names the list (grid.kl_coefs), not just the grid
        if len(set(values)) != len(values):
            raise ValueError(f"values must be distinct, got {values}")
        return values

    @model_validator(mode="after")
    def _not_too_large(self) -> ExperimentGrid:
        if self.size > MAX_EXPERIMENT_RUNS:
            raise ValueError(f"the grid expands to {self.size} runs; at most {MAX_EXPERIMENT_RUNS}")
        return self

    @property
    def size(self) -> int:
        return len(self.algorithms) * len(self.kl_coefs) * len(self.seeds)


class ExperimentJudge(JudgeConfig):
    """The judge of an experiment: a JudgeConfig plus how many held-out prompts and whether to judge."""

    enabled: bool = Field(True, description="queue the judgements when the runs have finished")
    num_prompts: int = Field(32, ge=1, le=5000, description="held-out prompts per judgement")

    _ALLOW_HUMAN: ClassVar[bool] = False  # an experiment's judgements run on workers
    _OWN: ClassVar[frozenset[str]] = frozenset({"enabled", "num_prompts"})  # the experiment's, not the klq.judge backend's

    def spec(self) -> dict[str, Any]:
        """The klq.judge backend spec: without ``enabled``/``num_prompts`` (validate_spec refuses them)."""
        return self.model_dump(exclude_none=True, exclude={"decoding", "template", *self._OWN})

    def stored(self) -> dict[str, Any]:
        """What each of its judgements keeps (JudgeConfig.stored): without ``enabled``/``num_prompts``."""
        return self.model_dump(mode="json", exclude_none=True, exclude=set(self._OWN))


class ExperimentCreate(_In):
    name: Name | None = Field(None, description="default: 'experiment-<timestamp>'")
    base: RunConfig = Field(description="run configuration shared by every run; the grid sets algorithm, "
                            "kl_coef and seed")
    grid: ExperimentGrid
    judge: ExperimentJudge = Field(default_factory=ExperimentJudge)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    notes: Notes = ""
    queue: QueueName | None = Field(None, description="worker queue of its runs and judgements")


class PlannedRun(BaseModel):
    name: str
    algorithm: str
    kl_coef: float
    seed: int
    config: dict[str, Any]


class ExperimentPreview(BaseModel):
    runs: list[PlannedRun]
    judgements: int = Field(description="judgements queued once the runs finish, if all succeed")


class ExperimentRunOut(BaseModel):
    run_id: int
    name: str
    algorithm: str
    kl_coef: float
    seed: int
    status: RunStatus
    iteration: int
    total_iterations: int | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None


class ExperimentJudgementOut(BaseModel):
    judgement_id: int
    kind: JudgementKind
    kl_coef: float
    seed: int
    algorithm: str | None = Field(description="vs_sft: the run's algorithm; klq_vs_<algorithm>: None")
    vs: Vs = None
    run_a: int
    run_b: int | None
    status: RunStatus
    completed: int
    total: int
    error: str | None


class ExperimentProgress(BaseModel):
    runs_total: int
    runs_finished: int
    runs_failed: int
    judgements_total: int
    judgements_finished: int
    judgements_failed: int


class ExperimentCompute(BaseModel):
    run_hours: float = Field(description="sum of the run durations")
    gpu_hours: float = Field(description="sum of duration x GPUs over the runs that ran on GPUs")
    wall_clock_s: float | None = Field(description="first start to last finish (to now while running)")


class ExperimentSummary(BaseModel):
    id: int
    name: str
    status: ExperimentStatus
    error: str | None
    grid: ExperimentGrid
    tags: list[str]
    notes: str
    queue: str
    created_at: datetime
    judging_started_at: datetime | None
    cancel_requested: bool
    progress: ExperimentProgress
    compute: ExperimentCompute


class ExperimentDetail(ExperimentSummary):
    base: dict[str, Any]
    judge: dict[str, Any]
    runs: list[ExperimentRunOut]
    judgements: list[ExperimentJudgementOut]


class ExperimentPage(BaseModel):
    items: list[ExperimentSummary]
    total: int
    limit: int
    offset: int


class Interval(BaseModel):
    mean: float | None
    ci_low: float | None = Field(description="Student-t 95% interval over seeds; None with one seed")
    ci_high: float | None
    n: int
    values: list[float | None] = Field(description="per succeeded run, in seed order")


class FailedRun(BaseModel):
    run_id: int
    seed: int
    status: RunStatus
    error: str | None


class ResultRow(BaseModel):
    kl_coef: float
    algorithm: str
    runs: int
    succeeded: int
    failed: list[FailedRun] = Field(description="failed or cancelled runs (never silently dropped)")
    pending: int = Field(description="runs not finished yet")
    reward: Interval
    kl: Interval
    rlhf_reward: Interval
    gold: Interval | None
    wall_clock_s: Interval
    iteration_s: Interval


class PooledWinRate(BaseModel):
    kind: JudgementKind
    kl_coef: float
    algorithm: str | None = Field(
        description="vs_sft: whose policy is A; klq_vs_<algorithm>: None (A is KLQ)"
    )
    vs: Vs = None
    judgements: list[int]
    pending: int = Field(description="judgements not finished")
    prompts: int = Field(description="judged prompts pooled over seeds")
    wins: int
    losses: int
    ties: int
    invalid: int
    win_rate: float | None = Field(description="of A: (wins + ties/2) / (wins + losses + ties)")
    ci_low: float | None = Field(description="95% Wilson score interval")
    ci_high: float | None
    length: LengthDiagnosticsOut | None = Field(
        None,
        description="length diagnostics of the pooled verdicts; None while fewer than two prompts have a valid "
        "verdict",
    )


class NotJudged(BaseModel):
    kind: JudgementKind
    kl_coef: float
    seed: int
    algorithm: str | None
    vs: Vs = None
    reason: str


class RunPoint(BaseModel):
    run_id: int
    algorithm: str
    kl_coef: float
    seed: int
    status: RunStatus
    kl: float | None
    reward: float | None
    rlhf_reward: float | None


class ExperimentResults(BaseModel):
    experiment_id: int
    status: ExperimentStatus
    rows: list[ResultRow] = Field(description="per (kl_coef, algorithm), ordered by kl_coef then algorithm")
    win_rates: list[PooledWinRate]
    not_judged: list[NotJudged]
    points: list[RunPoint]
    frontier: dict[str, list[int]] = Field(description="algorithm -> run ids on its Pareto frontier, by KL")
    compute: ExperimentCompute
    convention: Literal["klq-lab", "paper"] = Field(
        "klq-lab", description="numerical convention of every run (the base config's; docs/ALGORITHMS-CONVENTIONS.md)"
    )


class CurveBand(BaseModel):
    algorithm: str
    kl_coef: float
    runs: list[int]
    steps: list[int]
    mean: list[float | None]
    low: list[float | None] = Field(description="min over seeds at the step")
    high: list[float | None] = Field(description="max over seeds at the step")
    seeds_at_step: list[int]


class ExperimentCurves(BaseModel):
    key: str
    max_points: int
    curves: list[CurveBand]
