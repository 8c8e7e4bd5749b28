"""Pydantic models of the API's requests and responses (what the OpenAPI document shows)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from klq.config import AlgorithmName, RunConfig, algorithm_names

from .validation import text_problem

INT32_MAX = 2**31 - 1
STEP_MAX = 2**53 - 1
MAX_PAGE = 1000


def _text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(_text)]
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True), AfterValidator(_text)
]
Notes = Annotated[str, StringConstraints(max_length=20_000), AfterValidator(_text)]
Tag = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, strip_whitespace=True, pattern=r"^[^\x00-\x1f\x7f,]+$"),
    AfterValidator(_text),
]
QueueName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Scope = Literal["read", "write", "admin"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- runs ------------------------------------------------------------------------------------------------


class RunCreate(_In):
    config: RunConfig = Field(
        default_factory=RunConfig, description="the run configuration (klq.config.RunConfig)"
    )
    name: Name | None = Field(None, description="default: config.name, else '<algorithm>-<timestamp>'")
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    notes: Notes = ""
    queue: QueueName | None = Field(None, description="worker queue, e.g. 'gpu' (default) or 'cpu'")


class RunClone(_In):
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description='config changes, as dotted keys ({"train.batch_size": 8}) or nested dicts',
        max_length=200,
    )
    name: Name | None = Field(None, description="default: '<source name> (clone)'")
    tags: list[Tag] | None = Field(None, max_length=32, description="default: the source run's tags")
    notes: Notes | None = None
    queue: QueueName | None = Field(None, description="default: the source run's queue")


class RunPatch(_In):
    name: Name | None = None
    tags: list[Tag] | None = Field(None, max_length=32, description="replaces the run's tags")
    notes: Notes | None = None


class LatestValue(BaseModel):
    step: int
    value: float | None


class RunSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    algorithm: str
    status: RunStatus
    queue: str
    tags: list[str]
    notes: str
    error: str | None
    parent_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    iteration: int
    total_iterations: int | None
    episodes: int
    progress: float | None = Field(None, description="iteration / total_iterations")
    heartbeat_at: datetime | None
    worker_host: str | None
    worker_gpu: str | None
    cancel_requested: bool
    experiment_id: int | None = Field(None, description="the experiment this run belongs to, if any")
    latest: dict[str, LatestValue] = Field(
        default_factory=dict, description="latest value of each metric key"
    )


class RunDetail(RunSummary):
    config: dict[str, Any]
    attempts: int
    last_error: str | None = Field(
        None, description="why the previous attempt ended (a stall, a killed process, a lost worker), if one did"
    )
    updated_at: datetime


class RunPage(BaseModel):
    items: list[RunSummary]
    total: int
    limit: int
    offset: int


class TagCount(BaseModel):
    tag: str
    runs: int


# --- metrics ---------------------------------------------------------------------------------------------


class MetricKey(BaseModel):
    key: str
    last_step: int
    last_value: float | None
    wall_time: float | None


class Series(BaseModel):
    run_id: int
    key: str
    steps: list[int]
    values: list[float | None]
    wall_times: list[float | None] | None = None
    total_points: int = Field(description="finite points in the requested range, before downsampling")
    downsampled: bool
    last_step: int | None = Field(
        description="largest step in the requested range (use as the next since_step)"
    )


class SeriesResponse(BaseModel):
    max_points: int
    series: list[Series]


# --- samples ---------------------------------------------------------------------------------------------


class SampleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    step: int
    prompt_id: str
    prompt: str
    response: str
    score: float | None
    gold_score: float | None
    kl: float | None
    extra: dict[str, Any] | None = None


class SamplePage(BaseModel):
    items: list[SampleOut]
    total: int
    limit: int
    offset: int


class SampleStep(BaseModel):
    step: int
    count: int


class ComparedRun(BaseModel):
    run_id: int
    step: int | None


class ComparedPrompt(BaseModel):
    prompt_id: str
    prompt: str
    samples: list[SampleOut | None] = Field(
        description="one per run, in the order of `runs`; null if missing"
    )


class SampleComparison(BaseModel):
    runs: list[ComparedRun]
    items: list[ComparedPrompt]
    total: int
    limit: int
    offset: int


# --- checkpoints -----------------------------------------------------------------------------------------


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    step: int
    path: str
    is_final: bool
    created_at: datetime


# --- logs ------------------------------------------------------------------------------------------------


class LogPage(BaseModel):
    lines: list[str] = Field(description="whole lines of the log, decoded as UTF-8 (invalid bytes replaced)")
    start: int = Field(description="byte offset of the first line returned")
    offset: int = Field(
        description="byte offset after the last line returned: pass it as ?offset= to get what follows"
    )
    size: int = Field(description="size of the log file in bytes when it was read")
    truncated: bool = Field(
        description="the page was cut at the byte cap: fewer lines than asked for, or (offset) more "
        "follows at once"
    )


# --- judgements ------------------------------------------------------------------------------------------

_SECRET_KEY = re.compile(
    r"^(api[_-]?key|key|token|access[_-]?token|bearer|authorization|headers|base[_-]?url|api[_-]?base|url|endpoint"
    r"|organization|.*secret.*|.*passw(or)?d.*|.*_key|.*_token)$",
    re.IGNORECASE,
)


ShortText = Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_text)]


class JudgeConfig(_In):
    """How to judge: a ``klq.judge`` backend spec plus the decoding of the two policies and the judge
    template. Keys that a backend does not take are refused (klq.judge.backends.validate_spec). Endpoint
    URLs and API keys of remote judges are server settings (KLQ_JUDGE_*): refused here, never stored in
    the database, never returned by the API."""

    backend: Literal["openai", "local_hf", "reward_model", "gold"] = Field(
        "gold",
        description="openai: an OpenAI-compatible chat endpoint (server settings); local_hf: a local causal LM "
        "judging by answer-token log-probabilities; reward_model: a reward model; gold: the built-in task's "
        "gold reward",
    )
    model: ShortText | None = Field(
        None,
        description="openai: model name (default KLQ_JUDGE_MODEL); local_hf/reward_model: builtin:<name>, a "
        "path under the model roots, or a hub id if the server allows them",
    )
    template: (
        Annotated[str, StringConstraints(min_length=1, max_length=20_000), AfterValidator(_text)] | None
    ) = Field(
        None,
        description="openai/local_hf: a built-in template (summarisation, dialogue, generic) or a template text "
        "with {prompt}, {response_a} and {response_b}; default: by the run's task",
    )
    decoding: Literal["greedy", "sampled"] = Field("greedy", description="how both policies generate")
    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    system_prompt: Annotated[str, StringConstraints(max_length=20_000), AfterValidator(_text)] | None = None
    concurrency: int | None = Field(None, ge=1, le=64)
    device: Annotated[str, StringConstraints(pattern=r"^(auto|cpu|mps|cuda(:[0-9]{1,2})?)$")] | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    margin: float | None = Field(None, ge=0, le=1e6)
    batch_size: int | None = Field(None, ge=1, le=1024)
    use_chat_template: bool | None = None
    append_eos: bool | None = None
    task: Literal["builtin", "tldr", "hh", "prompts"] | None = Field(
        None, description="gold: the task's gold reward"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if isinstance(key, str) and key != "max_tokens" and _SECRET_KEY.match(key):
                    raise ValueError(
                        f"{key!r}: endpoints and secrets such as API keys are configured on the server "
                        "(KLQ_JUDGE_BASE_URL, KLQ_JUDGE_API_KEY), never sent with a judgement"
                    )
        return data

    @model_validator(mode="after")
    def _valid_for_backend(self) -> JudgeConfig:
        from klq.judge.backends import validate_spec
        from klq.judge.templates import resolve_template

        validate_spec(self.spec())
        if self.template is not None:
            if self.backend not in ("openai", "local_hf"):
                raise ValueError(f"judge backend {self.backend!r} takes no template")
            resolve_template(self.template)
        return self

    def spec(self) -> dict[str, Any]:
        """The klq.judge backend spec (what make_judge takes)."""
        return self.model_dump(exclude_none=True, exclude={"decoding", "template"})

    def stored(self) -> dict[str, Any]:
        """What the judgement row keeps: the spec plus ``decoding`` and ``template`` (the worker pops them)."""
        return self.model_dump(mode="json", exclude_none=True)


class JudgementCreate(_In):
    run_a: int = Field(ge=1, le=INT32_MAX, description="policy A: this run")
    step_a: int | None = Field(
        None, ge=0, le=STEP_MAX, description="checkpoint step of run A (default: final)"
    )
    run_b: int | None = Field(
        None, ge=1, le=INT32_MAX, description="policy B: this run (default: A's reference/SFT policy)"
    )
    step_b: int | None = Field(None, ge=0, le=STEP_MAX)
    num_prompts: int = Field(64, ge=1, le=5000, description="held-out prompts to judge")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    seed: int = Field(0, ge=0, le=INT32_MAX)
    queue: QueueName | None = None


class WinRateOut(BaseModel):
    wins_a: int
    wins_b: int
    ties: int
    invalid: int
    win_rate: float | None = Field(description="of policy A: (wins_a + ties/2) / (wins_a + wins_b + ties)")
    ci_low: float | None = Field(description="95% Wilson score interval")
    ci_high: float | None
    position_consistency: float | None


class VerdictOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    prompt_id: str
    prompt: str
    response_a: str
    response_b: str
    order: Literal["ab", "ba"]
    verdict: Literal["A", "B", "tie", "invalid"]
    raw_output: str | None


class JudgementOut(BaseModel):
    id: int
    status: RunStatus
    queue: str
    run_a: int
    step_a: int | None
    run_b: int | None
    step_b: int | None
    num_prompts: int
    seed: int
    judge: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool
    completed: int
    total: int
    result: WinRateOut
    verdicts: list[VerdictOut] | None = None
    verdicts_total: int | None = None


class JudgementPage(BaseModel):
    items: list[JudgementOut]
    total: int
    limit: int
    offset: int


class VerdictPage(BaseModel):
    items: list[VerdictOut]
    total: int
    limit: int
    offset: int


# --- experiments (docs/EXPERIMENTS.md) -------------------------------------------------------------------

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


class AlgorithmOut(BaseModel):
    """A registered algorithm (klq.algorithms): what a form or a filter needs to offer it."""

    name: str = Field(description="the config's `algorithm`")
    label: str = Field(description="display name")
    description: str = Field(description="the first line of the class's docstring")
    params: dict[str, Any] | None = Field(
        description="JSON schema of its parameter group (the config section `<name>:`); None: it has none"
    )
    uses_value_model: bool = Field(description="it trains a value model (a second network beside the policy)")
    min_generations: int = Field(
        description="rollout.num_generations must be at least this (2 or more: a baseline over the responses "
        "to the same prompt)"
    )


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


# --- tokens and health -----------------------------------------------------------------------------------


class TokenCreate(_In):
    name: Annotated[
        str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True), AfterValidator(_text)
    ]
    scopes: list[Scope] = Field(default_factory=lambda: ["read"], min_length=1, max_length=3)


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


class TokenCreated(TokenOut):
    token: str = Field(description="the token itself: shown once, store it now")


class Health(BaseModel):
    status: Literal["ok", "error"]
    database: str
    revision: str | None
    version: str
