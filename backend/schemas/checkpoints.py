"""Checkpoints of a run."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    step: int
    path: str
    is_final: bool
    created_at: datetime
