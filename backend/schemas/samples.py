"""Samples: pages, steps and side-by-side comparisons of runs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
