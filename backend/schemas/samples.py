"""Samples: pages, steps and side-by-side comparisons of runs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SampleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    step: int
    kind: str = Field(
        description="eval: a held-out sample; train: a recorded training rollout of iteration `step`"
    )
    sample_index: int = Field(description="train: the rollout's row in its iteration's batch; eval: 0")
    prompt_id: str
    prompt: str
    response: str
    response_length: int | None = Field(description="response tokens, the stop token included")
    score: float | None
    gold_score: float | None
    kl: float | None
    extra: dict[str, Any] | None = None
    has_tokens: bool = Field(False, description="a token record exists: GET /samples/{id}/tokens")


class SampleTokens(BaseModel):
    """A sample's response token by token: every list has one entry per response token."""

    sample_id: int
    run_id: int
    step: int
    kind: str
    prompt_id: str
    algorithm: str
    token_ids: list[int]
    tokens: list[str] = Field(description="each token's text piece, decoded alone (plain text, never markup)")
    quantities: dict[str, list[float | None]] = Field(
        description="name -> one value per token (NaN and infinities as null): logp, logp_ref, k1, k3, entropy; "
        "value (V_old) with a value model; KLQ: q, delta, target; PPO: reward, advantage_raw, advantage, return; "
        "RLOO/GRPO: advantage (the sequence advantage on every token)"
    )


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
