"""The trainer's sink for runs executed by a worker: metrics, samples, checkpoints and progress go to the
database through the backend's data-access layer (backend.store), one transaction per iteration."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select

from backend import store
from backend.db import Database, retry_while_unavailable
from backend.models import Run
from klq.sinks import SampleRecord

# Another worker owns this run now (this one was presumed dead): stop without touching its files. Raised by
# should_stop, and by every write below, which the store refuses once this worker has lost the lease.
LeaseLost = store.LeaseLost


class DatabaseSink:
    """``retention``: which recorded training rollouts the database keeps (the run's capture settings);
    None keeps them all."""

    def __init__(self, db: Database, run_id: int, owner: str, retention: store.TrainRetention | None = None) -> None:
        self.db, self.run_id, self.owner, self.retention = db, run_id, owner, retention
        self.preempted = False  # should_stop said stop because the worker is shutting down (not a cancel)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        rows = [(key, step, value, now) for key, value in metrics.items()]
        with self.db.write_session() as session:
            store.write_metrics(session, self.run_id, rows, owner=self.owner, commit=False)
            store.set_progress(
                session,
                self.run_id,
                iteration=step,
                episodes=int(metrics.get("episode", 0)),
                owner=self.owner,
                commit=False,
            )
            session.commit()

    def log_samples(self, step: int, samples: list[SampleRecord]) -> None:
        """The step's samples and their token records in one fenced transaction (store.write_samples)."""
        with self.db.write_session() as session:
            # stopped_by has no column of its own: it goes into the sample's JSON `extra`
            rows = [
                {**vars(s), "extra": {"stopped_by": s.stopped_by} if s.stopped_by else None,
                 "tokens": None if s.token_record is None else vars(s.token_record)}
                for s in samples
            ]
            store.write_samples(session, self.run_id, rows, owner=self.owner, retention=self.retention)

    def log_checkpoint(self, step: int, path: str, final: bool) -> None:
        with self.db.write_session() as session:
            store.add_checkpoint(session, self.run_id, step, path, is_final=final, owner=self.owner)

    def log_provenance(self, provenance: dict[str, Any]) -> None:
        with self.db.write_session() as session:
            store.set_provenance(session, self.run_id, provenance, owner=self.owner)

    def should_stop(self) -> bool:
        """True on a user's cancel, or when the worker is shutting down (store.request_preempt: then
        ``preempted`` is set, and the run is to be resumed, not cancelled); raises LeaseLost if another
        worker has taken the run over."""
        row = self._owned_row()
        self.preempted = bool(row.preempt_requested) and not row.cancel_requested  # a cancel wins
        return bool(row.cancel_requested or row.preempt_requested)

    def check_owner(self) -> None:
        """Raises LeaseLost if another worker has taken the run over (before a checkpoint is published)."""
        self._owned_row()

    def _owned_row(self):
        with self.db.session() as session:
            row = session.execute(
                select(Run.cancel_requested, Run.preempt_requested, Run.lease_owner).where(Run.id == self.run_id)
            ).one_or_none()
        if row is None:
            raise LeaseLost(f"run {self.run_id} was deleted")
        if row.lease_owner != self.owner:
            raise LeaseLost(f"run {self.run_id} is now leased by {row.lease_owner!r}")
        return row

    def close(self) -> None:
        pass


log = logging.getLogger("klq.worker.sink")


class RetryingSink:
    """A DatabaseSink that rides out a database outage: each call (one whole transaction) is retried with
    backoff while the database is unreachable, for up to ``timeout`` seconds (KLQ_DB_RETRY_TIMEOUT), then
    raises backend.db.DatabaseUnavailable, which fails the run with that reason. Training waits meanwhile
    (the one pending iteration's records are the buffer). A retried write that had in fact committed is
    harmless: metrics, samples, checkpoints and progress are upserts keyed by (run, key or prompt, step).
    LeaseLost and any other error go straight through: they are never retried."""

    def __init__(self, sink: DatabaseSink, timeout: float) -> None:
        self.sink, self.timeout = sink, timeout

    def _retry(self, what: str, call, *args):
        return retry_while_unavailable(lambda: call(*args), timeout=self.timeout, what=what, log=log)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._retry(f"writing the metrics of step {step}", self.sink.log_metrics, step, metrics)

    def log_samples(self, step: int, samples: list[SampleRecord]) -> None:
        self._retry(f"writing the samples of step {step}", self.sink.log_samples, step, samples)

    def log_checkpoint(self, step: int, path: str, final: bool) -> None:
        self._retry(f"recording the checkpoint of step {step}", self.sink.log_checkpoint, step, path, final)

    def log_provenance(self, provenance: dict[str, Any]) -> None:
        self._retry("recording the run's provenance", self.sink.log_provenance, provenance)

    def should_stop(self) -> bool:
        return self._retry("reading the cancel flag", self.sink.should_stop)

    def check_owner(self) -> None:
        self._retry("checking the lease", self.sink.check_owner)

    @property
    def preempted(self) -> bool:
        return self.sink.preempted

    def close(self) -> None:
        self.sink.close()
