"""Runs: create, clone, patch, summaries and pages, tag counts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from klq.config import RunConfig

from ._common import Name, Notes, QueueName, RunStatus, Tag, _In


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


class Provenance(BaseModel):
    """What trained a run (klq.provenance.collect() of its latest attempt's training process)."""

    git_commit: str | None = Field(None, description="HEAD of the git checkout of klq's source; None if not one")
    git_dirty: bool | None = Field(None, description="tracked files differed from git_commit")
    packages: dict[str, str | None] = Field(
        default_factory=dict, description="installed versions: klq-lab, torch, transformers, accelerate"
    )
    python: str | None = None
    device: str | None = Field(None, description='the training device, e.g. "cuda:0" or "cpu"')
    gpu: str | None = Field(None, description="the CUDA device's name")
    host: str | None = None


class RunDetail(RunSummary):
    config: dict[str, Any]
    provenance: Provenance | None = Field(
        None, description="the code, library versions, device and host that trained it; None until started"
    )
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
