"""Judgements: the judge's configuration, requests, results (win rates) and verdicts."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from ._common import INT32_MAX, STEP_MAX, QueueName, RunStatus, _In, _text
from .votes import AgreementOut, PromptId

_SECRET_KEY = re.compile(
    r"^(api[_-]?key|key|token|access[_-]?token|bearer|authorization|headers|base[_-]?url|api[_-]?base|url|endpoint"
    r"|organization|.*secret.*|.*passw(or)?d.*|.*_key|.*_token)$",
    re.IGNORECASE,
)


JudgeBackend = Literal["openai", "local_hf", "reward_model", "gold", "human"]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_text)]


class JudgeConfig(_In):
    """How to judge: a ``klq.judge`` backend spec plus the decoding of the two policies and the judge
    template. Keys that a backend does not take are refused (klq.judge.backends.validate_spec). Endpoint
    URLs and API keys of remote judges are server settings (KLQ_JUDGE_*): refused here, never stored in
    the database, never returned by the API."""

    backend: JudgeBackend = Field(
        "gold",
        description="openai: an OpenAI-compatible chat endpoint (server settings); local_hf: a local causal LM "
        "judging by answer-token log-probabilities; reward_model: a reward model; gold: the built-in task's "
        "gold reward; human: people voting blind in the dashboard (a voting session: no worker runs it, it "
        "takes no other key)",
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

    _ALLOW_HUMAN: ClassVar[bool] = True  # a human judgement is made by POST /judgements, not by an experiment

    @model_validator(mode="after")
    def _valid_for_backend(self) -> JudgeConfig:
        from klq.judge.backends import HUMAN, validate_spec
        from klq.judge.templates import resolve_template

        validate_spec(self.spec(), allow_human=self._ALLOW_HUMAN)
        if self.backend == HUMAN and "decoding" in self.model_fields_set:
            raise ValueError("judge backend 'human' takes no decoding: people vote on stored responses")
        if self.template is not None:
            if self.backend not in ("openai", "local_hf"):
                raise ValueError(f"judge backend {self.backend!r} takes no template")
            resolve_template(self.template)
        return self

    def spec(self) -> dict[str, Any]:
        """The klq.judge backend spec (what make_judge takes)."""
        return self.model_dump(exclude_none=True, exclude={"decoding", "template"})

    def stored(self) -> dict[str, Any]:
        """What the judgement row keeps: the spec plus ``decoding`` and ``template`` (the worker pops them);
        a human judgement's is its spec alone."""
        from klq.judge.backends import HUMAN

        if self.backend == HUMAN:
            return self.spec()
        return self.model_dump(mode="json", exclude_none=True)


class JudgementCreate(_In):
    """A judgement to queue, or (judge ``{"backend": "human"}``) a voting session: people vote blind on
    pairs, either those of ``source_judgement`` or the two runs' stored eval samples aligned on prompt id."""

    run_a: int | None = Field(
        None, ge=1, le=INT32_MAX, description="policy A: this run (required unless source_judgement is given)"
    )
    step_a: int | None = Field(
        None,
        ge=0,
        le=STEP_MAX,
        description="checkpoint step of run A (default: final); human votes on runs: the step of its stored "
        "samples (default: its latest)",
    )
    run_b: int | None = Field(
        None,
        ge=1,
        le=INT32_MAX,
        description="policy B: this run (default: A's reference/SFT policy; required for human votes on runs)",
    )
    step_b: int | None = Field(None, ge=0, le=STEP_MAX)
    num_prompts: int = Field(
        64,
        ge=1,
        le=5000,
        description="held-out prompts to judge; human votes: at most this many pairs, drawn with the seed "
        "(default: every pair)",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    seed: int = Field(
        0, ge=0, le=INT32_MAX, description="human votes: draws the pairs and the order they are voted in"
    )
    queue: QueueName | None = Field(None, description="the worker queue (not for human votes: no worker)")
    source_judgement: int | None = Field(
        None,
        ge=1,
        le=INT32_MAX,
        description="human votes only: vote on this automatic judgement's pairs (its prompts and both "
        "responses), so that its agreement with the votes is measured on the same pairs",
    )
    prompt_ids: list[PromptId] | None = Field(
        None, min_length=1, max_length=5000, description="human votes only: only the pairs of these prompts"
    )


class LengthBucketOut(BaseModel):
    """The prompts whose length difference d = words of A's response - words of B's lies in [low, high),
    with A's win-rate among them."""

    low: float | None = Field(description="d from (inclusive); None: no lower bound")
    high: float | None = Field(description="d up to (exclusive); None: no upper bound")
    prompts: int
    mean_diff: float | None = Field(description="mean d in the bucket")
    win_rate: float | None = Field(description="of policy A in the bucket, ties counting half")
    ci_low: float | None = Field(description="95% Wilson score interval")
    ci_high: float | None


class LengthDiagnosticsOut(BaseModel):
    """How the responses' lengths relate to the verdicts, over the prompts with a valid verdict: lengths in
    words (``len(text.split())``, klq.judge.stats.word_count), computed from the stored verdicts when read
    (klq.judge.stats.length_controlled_win_rate)."""

    unit: Literal["words"] = "words"
    prompts: int = Field(description="prompts with a valid verdict (the other fields are over these)")
    mean_length_a: float = Field(description="mean length of policy A's responses")
    mean_length_b: float = Field(description="mean length of policy B's responses")
    lc_win_rate: float | None = Field(
        description="length-controlled win-rate of A (AlpacaEval 2's GLM without its instruction term): "
        "P(A preferred) = sigmoid(theta + phi * tanh(d / sd(d))), d = length of A's response - B's, at d = 0"
    )
    lc_ci_low: float | None = Field(
        description="95% percentile bootstrap interval over prompts (1000 resamples, seed 0)"
    )
    lc_ci_high: float | None
    length_preference: float | None = Field(
        description="phi: > 0 the judge prefers the longer response, < 0 the shorter, 0 neither"
    )
    length_scale: float = Field(description="sd(d), the sample standard deviation of the length difference")
    buckets: list[LengthBucketOut] = Field(description="A's win-rate by quartile of d (fewer when d repeats)")


class WinRateOut(BaseModel):
    wins_a: int
    wins_b: int
    ties: int
    invalid: int
    win_rate: float | None = Field(description="of policy A: (wins_a + ties/2) / (wins_a + wins_b + ties)")
    ci_low: float | None = Field(description="95% Wilson score interval")
    ci_high: float | None
    position_consistency: float | None
    length: LengthDiagnosticsOut | None = Field(
        None,
        description="length diagnostics: in GET /judgements/{id} and, with include_length=true, in "
        "GET /judgements; None elsewhere, and while fewer than two prompts have a valid verdict",
    )


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
    voter: str | None = Field(None, description="a human vote's API token name; None for a judge's verdict")
    comment: str | None = Field(None, description="a human voter's comment")


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
    source_judgement: int | None = Field(
        None, description="a human judgement's: the automatic judgement whose pairs it votes on"
    )
    agreement: list[AgreementOut] | None = Field(
        None,
        description="in GET /judgements/{id}: the agreement of each automatic judgement with each human "
        "judgement on the pairs they share (of this judgement with the others of the other kind)",
    )
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
