"""Server settings: one pydantic-settings class, read from the environment (prefix ``KLQ_``).

Every process that touches the database or the broker (the API server, Celery workers, the CLI) builds
its settings from the same environment, so they agree on where things are. ``get_settings()`` caches
one instance per process; tests that change the environment call ``get_settings.cache_clear()``.

List-valued settings (``KLQ_MODEL_ROOTS``, ``KLQ_DATASET_ROOTS``, ``KLQ_QUEUES``) accept a JSON list or
an ``os.pathsep``/comma separated string.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from klq.paths import data_dir as default_data_dir


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        sep = "," if "," in text else os.pathsep
        return [part.strip() for part in text.split(sep) if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KLQ_", extra="ignore", validate_default=True)

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="SQLite database, broker folders, runs and the initial API token live here",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite (WAL) at <data_dir>/klq.db"
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker (redis://...); default: kombu's filesystem:// under <data_dir>/broker",
    )
    broker_transport_options: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description="extra kombu transport options (JSON), e.g. a Redis global_keyprefix",
    )
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["gpu", "cpu"], description="queue names a run or judgement may ask for"
    )
    default_queue: str = "gpu"

    model_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="directories local model paths in run configs must lie in; "
        "default: <data_dir>/models and <data_dir>/runs",
    )
    dataset_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="directories local dataset files must lie in; default: <data_dir>/datasets and the model roots",
    )
    allow_hub_models: bool = Field(False, description="allow Hugging Face hub ids as model names")
    allow_hub_datasets: bool = Field(False, description="allow Hugging Face hub ids as task datasets")

    auth_required_for_reads: bool = True
    token_file: Path | None = Field(
        None, description="where the first admin token is written; default <data_dir>/api_token"
    )
    print_initial_token: bool = True

    sqlite_busy_timeout_ms: int = Field(30_000, ge=0)
    db_connect_timeout: float = Field(
        5.0,
        gt=0,
        description="seconds to wait for a PostgreSQL connection before the database counts as unavailable "
        "(the API answers 503 instead of hanging)",
    )
    db_retry_timeout: float = Field(
        300.0,
        gt=0,
        description="seconds a worker keeps retrying a database write (metrics, samples, checkpoints, the "
        "run's outcome) while the database is unreachable, with backoff, before it fails the run",
    )

    # workers (see worker/tasks.py)
    heartbeat_interval: float = Field(5.0, gt=0, description="seconds between a worker's heartbeats")
    lease_timeout: float = Field(
        60.0,
        gt=0,
        description="a run whose heartbeat is older than this (seconds) is taken to have lost its worker",
    )
    cancel_grace: float = Field(
        30.0,
        gt=0,
        description="seconds a cancelled run, or one whose worker is shutting down (SIGTERM), gets to stop by "
        "itself at its next iteration boundary (with a checkpoint) before its process is killed",
    )
    stall_timeout_s: float = Field(
        1800.0,
        ge=0,
        description="a training (judge) process that has logged no iteration (saved no verdicts) for this many "
        "seconds is taken to be hung: it is killed and the job re-queued from its last checkpoint (stored "
        "verdicts); counted from its previous progress report; 0: never",
    )
    startup_timeout_s: float = Field(
        7200.0,
        ge=0,
        description="seconds a training (judge) process may take to its first progress report of an attempt "
        "(loading or downloading models, building assets, the first iteration; a judge's responses) before "
        "it counts as hung like a stall; 0: no limit",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="a run or judgement whose process stalled, died or lost its worker this many times "
        "(attempts, counted per start; a graceful stop after progress does not count) fails with the last "
        "reason instead of being re-queued again",
    )
    reap_interval: float = Field(
        30.0, gt=0, description="seconds between passes re-queueing runs of dead workers"
    )
    requeue_queued_after: float = Field(
        300.0,
        gt=0,
        description="a queued run or judgement no worker has taken for this many seconds, while its broker "
        "queue holds fewer messages than it has jobs waiting, is taken to have lost its message (Redis without "
        "AOF, a purged queue) and is sent again by the reaper, at most once per this interval",
    )
    sse_poll_interval: float = Field(
        0.5, gt=0, description="seconds between database polls of a live stream (one cheap query per stream)"
    )
    sse_ping_interval: float = Field(15.0, gt=0)
    max_series_points: int = Field(5000, ge=10, description="largest max_points a series request may ask for")
    max_series_per_request: int = Field(400, ge=1, description="most (run, key) series in one request")
    response_cache_entries: int = Field(
        1024,
        ge=0,
        description="responses of the polled reads (run list, run, series, samples) kept per API process until "
        "anything is committed to the database (0: none kept; ETags and 304s work either way)",
    )
    max_request_bytes: int = Field(1 << 20, ge=1024, description="largest request body accepted (413 beyond)")
    api_max_concurrency: int = Field(
        16,
        ge=1,
        le=512,
        description="requests the API works on at once (more wait their turn without holding a thread or a "
        "database connection; see backend/concurrency.py); the connection pool holds twice as many plus 8",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    judge_base_url: str | None = Field(None, description="OpenAI-compatible endpoint for the judge")
    judge_api_key: SecretStr | None = Field(None, description="never stored in the database or returned")
    judge_model: str | None = None
    judge_timeout: float = Field(60.0, gt=0)
    judge_max_retries: int = Field(5, ge=0)

    @field_validator("model_roots", "dataset_roots", "queues", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("broker_transport_options", mode="before")
    @classmethod
    def _json_dict(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        if self.lease_timeout <= self.heartbeat_interval:
            raise ValueError("KLQ_LEASE_TIMEOUT must be longer than KLQ_HEARTBEAT_INTERVAL")
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if not self.model_roots:
            self.model_roots = [self.data_dir / "models", self.data_dir / "runs"]
        self.model_roots = [Path(p).expanduser().resolve() for p in self.model_roots]
        if not self.dataset_roots:
            self.dataset_roots = [self.data_dir / "datasets", *self.model_roots]
        self.dataset_roots = [Path(p).expanduser().resolve() for p in self.dataset_roots]
        if self.default_queue not in self.queues:
            raise ValueError(
                f"KLQ_DEFAULT_QUEUE {self.default_queue!r} is not one of KLQ_QUEUES {self.queues}"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'klq.db'}"

    @property
    def resolved_token_file(self) -> Path:
        return self.token_file or self.data_dir / "api_token"

    @property
    def broker_folder(self) -> Path:
        """Root of the filesystem:// broker's folders (used when no broker_url is set)."""
        return self.data_dir / "broker"


@lru_cache
def get_settings() -> Settings:
    return Settings()
