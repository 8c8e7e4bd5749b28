"""SQLAlchemy 2 ORM models: the whole schema (created by the Alembic migrations in backend/alembic/).

Metrics are stored narrow, one row per (run, key, step), so any number of keys can be logged without a
schema change; ``metric_latest`` keeps the newest value per (run, key) so run lists and key listings
never scan the metrics table. Timestamps are timezone-aware UTC on both SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# the judge backend of people's votes (a judgement that no worker runs: backend/store/votes.py)
from klq.judge.backends import HUMAN as HUMAN  # re-exported: backend code names it from here

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
VERDICTS = ("A", "B", "tie", "invalid")
ORDERS = ("ab", "ba")
SCOPES = ("read", "write", "admin")
# of an experiment's judgements (docs/EXPERIMENTS.md): vs_sft, or klq_vs_<algorithm> for each algorithm KLQ is
# judged against (the registry's names, at most 16 characters; the application checks them)
JUDGEMENT_KIND_CHECK = "kind IS NULL OR kind = 'vs_sft' OR kind LIKE 'klq_vs_%'"

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC; always returns an aware UTC datetime (SQLite keeps no zone, PostgreSQL does)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Experiment(Base):
    """A grid of runs (algorithms x KL coefficients x seeds) over one base config, judged once they end.

    Its status is never stored: it is derived from its runs and judgements when read (backend.experiments).
    ``judging_started_at`` is set once, by whoever claims the judging step (store.claim_judging)."""

    __tablename__ = "experiments"
    __table_args__ = (Index("ix_experiments_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    base: Mapped[dict[str, Any]] = mapped_column(JSON)  # the RunConfig shared by every run
    grid: Mapped[dict[str, Any]] = mapped_column(
        JSON
    )  # {"algorithms": [...], "kl_coefs": [...], "seeds": [...]}
    judge: Mapped[dict[str, Any]] = mapped_column(JSON)  # ExperimentJudge: JudgeConfig + enabled, num_prompts
    tags: Mapped[list[str]] = mapped_column(JSON)
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    queue: Mapped[str] = mapped_column(String(64), default="gpu")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    judging_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    error: Mapped[str | None] = mapped_column(Text)  # a failure of the experiment itself (queueing judges)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        Index("ix_runs_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    algorithm: Mapped[str] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    queue: Mapped[str] = mapped_column(String(64), default="gpu")
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    error: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    # CASCADE: an experiment's runs are part of it (deleting it deletes them, and with them their metrics,
    # samples and judgements); SET NULL would leave orphans that look like plain runs of a grid.
    experiment_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # progress, written by the worker
    iteration: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    total_iterations: Mapped[int | None] = mapped_column(BigInteger)
    episodes: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))

    # execution: which worker holds the run (a lease renewed by heartbeats)
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_gpu: Mapped[str | None] = mapped_column(String(255))
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # set by a worker that is shutting down: its training process checkpoints at the next iteration
    # boundary and the run is queued again (not cancelled); cleared when a worker claims the run
    preempt_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # when this attempt last made progress (an iteration logged); None until its first (see stall_timeout_s)
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # why the previous attempt ended (a stall, a killed process, a lost worker); kept across attempts
    last_error: Mapped[str | None] = mapped_column(Text)
    # klq.provenance.collect() of the latest attempt's training process: git commit and dirty flag,
    # library versions, device, GPU, host (None until a worker has started it)
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    tag_rows: Mapped[list[RunTag]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="RunTag.tag"
    )

    @property
    def tags(self) -> list[str]:
        cached = self.__dict__.get("_tag_list")  # set by store.list_runs, which aggregates tags in SQL
        return cached if cached is not None else [t.tag for t in self.tag_rows]


class RunTag(Base):
    __tablename__ = "run_tags"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)

    run: Mapped[Run] = relationship(back_populates="tag_rows")


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    value: Mapped[float | None] = mapped_column(Float)  # NULL = NaN
    wall_time: Mapped[float | None] = mapped_column(Float)  # seconds since the epoch


class MetricLatest(Base):
    __tablename__ = "metric_latest"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float | None] = mapped_column(Float)
    wall_time: Mapped[float | None] = mapped_column(Float)


SAMPLE_KINDS = ("eval", "train")


class MetricRollup(Base):
    """Per-bucket summary of one series, kept exact at write time (store.metrics.write_metrics): at level
    ``level`` (a shift: buckets of 2**level steps) bucket ``bucket`` covers steps
    [bucket << level, (bucket + 1) << level). ``count`` finite points, and the minimum and maximum finite
    point with their steps and wall times. Buckets without a finite point have no row. A downsampled read
    of a long series reads these instead of every point (store.metrics.plot_points)."""

    __tablename__ = "metric_rollups"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(Integer)
    min_value: Mapped[float] = mapped_column(Float)
    min_step: Mapped[int] = mapped_column(BigInteger)
    min_wall: Mapped[float | None] = mapped_column(Float)
    max_value: Mapped[float] = mapped_column(Float)
    max_step: Mapped[int] = mapped_column(BigInteger)
    max_wall: Mapped[float | None] = mapped_column(Float)


class Sample(Base):
    """A held-out eval sample (kind 'eval', one per prompt and eval step) or a recorded training rollout
    (kind 'train', ``sample_index`` = its row in the iteration's batch)."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("run_id", "kind", "step", "prompt_id", "sample_index"),
        CheckConstraint("kind IN ('eval', 'train')", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8), default="eval", server_default="eval")
    step: Mapped[int] = mapped_column(BigInteger)
    prompt_id: Mapped[str] = mapped_column(String(200))
    sample_index: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    response_length: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    gold_score: Mapped[float | None] = mapped_column(Float)
    kl: Mapped[float | None] = mapped_column(Float)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SampleTokens(Base):
    """A sample's response token by token, packed: one row per sample, not one per token. T tokens:
    ``token_ids`` T little-endian int32; ``tokens`` the T text pieces (JSON list); ``quantities`` the
    values of the quantities named in ``names`` (JSON list, Q of them) as Q x T little-endian float32, row-major (NaN for
    a missing value). Deleted with its sample (and so with its run)."""

    __tablename__ = "sample_tokens"

    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True)
    num_tokens: Mapped[int] = mapped_column(Integer)
    token_ids: Mapped[bytes] = mapped_column(LargeBinary)
    tokens: Mapped[list[str]] = mapped_column(JSON)
    names: Mapped[list[str]] = mapped_column(JSON)
    quantities: Mapped[bytes] = mapped_column(LargeBinary)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)
    is_final: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Judgement(Base):
    __tablename__ = "judgements"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        CheckConstraint(JUDGEMENT_KIND_CHECK, name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    queue: Mapped[str] = mapped_column(String(64), default="gpu")
    run_a_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_a: Mapped[int | None] = mapped_column(BigInteger)  # None: the run's final policy
    run_b_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_b: Mapped[int | None] = mapped_column(BigInteger)  # run_b None: run A's reference (SFT) policy
    num_prompts: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    judge: Mapped[dict[str, Any]] = mapped_column(JSON)  # backend config; never secrets
    error: Mapped[str | None] = mapped_column(Text)
    # set on the judgements an experiment queues itself (None on judgements created by POST /judgements)
    experiment_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str | None] = mapped_column(String(32))  # JUDGEMENT_KIND_CHECK
    # human votes on the pairs of this (automatic) judgement; None: on runs' stored samples, or not human
    source_judgement_id: Mapped[int | None] = mapped_column(ForeignKey("judgements.id", ondelete="SET NULL"))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # when verdicts were last saved
    last_error: Mapped[str | None] = mapped_column(Text)  # why the previous attempt ended

    # progress and results (recomputed from the verdicts table by store.record_verdicts)
    completed: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    total: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    wins_a: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    wins_b: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    ties: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    invalid: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    win_rate: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    position_consistency: Mapped[float | None] = mapped_column(Float)


class Verdict(Base):
    __tablename__ = "verdicts"
    __table_args__ = (
        UniqueConstraint("judgement_id", "prompt_id", "order"),
        CheckConstraint(_in("verdict", VERDICTS), name="verdict"),
        CheckConstraint(_in('"order"', ORDERS), name="order"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    judgement_id: Mapped[int] = mapped_column(ForeignKey("judgements.id", ondelete="CASCADE"))
    prompt_id: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    response_a: Mapped[str] = mapped_column(Text)  # policy A's response
    response_b: Mapped[str] = mapped_column(Text)  # policy B's response
    order: Mapped[str] = mapped_column("order", String(2))  # "ab": A shown first; "ba": swapped
    verdict: Mapped[str] = mapped_column(String(8))  # in terms of the policies, not the positions
    raw_output: Mapped[str | None] = mapped_column(Text)
    voter: Mapped[str | None] = mapped_column(String(100))  # a human vote's API token name; None: a judge's
    comment: Mapped[str | None] = mapped_column(Text)  # a human voter's optional comment
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BallotPair(Base):
    """A pair that a human judgement (judge backend ``human``) puts to its voters: the prompt and the two
    policies' responses, at ``position`` in the order they are voted on, shown with ``order`` ("ab": A's
    response on the left; "ba": on the right). Its vote, once cast, is the judgement's verdict row of this
    prompt_id (backend/store/votes.py)."""

    __tablename__ = "ballot_pairs"
    __table_args__ = (
        UniqueConstraint("judgement_id", "prompt_id"),
        UniqueConstraint("judgement_id", "position"),
        CheckConstraint(_in('"order"', ORDERS), name="order"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    judgement_id: Mapped[int] = mapped_column(ForeignKey("judgements.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    prompt_id: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    response_a: Mapped[str] = mapped_column(Text)
    response_b: Mapped[str] = mapped_column(Text)
    order: Mapped[str] = mapped_column("order", String(2))


class ApiToken(Base):
    """Bearer tokens, stored as the SHA-256 of the token.

    A plain (unsalted, fast) hash is the right tool here: the tokens are 256-bit random strings made
    by ``secrets``, not passwords, so there is no dictionary to try and a brute-force preimage search
    over 2**256 values is infeasible however fast the hash. Slow salted KDFs (bcrypt, argon2) exist
    to protect low-entropy human secrets; for random tokens they would only add latency to every
    request and prevent the indexed lookup by hash that authentication uses.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell tokens apart
    scopes: Mapped[str] = mapped_column(String(64))  # space separated: read write admin
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()
