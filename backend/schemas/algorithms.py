"""The registered algorithms (GET /algorithms)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
