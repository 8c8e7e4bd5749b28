"""Metrics: keys and (downsampled) series."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
