"""The trainer's sink for runs executed by a worker: metrics, samples, checkpoints and progress go to the
database through the backend's data-access layer (backend.store), one transaction per iteration."""

from __future__ import annotations

import time

from sqlalchemy import select

from backend import store
from backend.db import Database
from backend.models import Run
from klq.sinks import SampleRecord

# Another worker owns this run now (this one was presumed dead): stop without touching its files. Raised by
# should_stop, and by every write below, which the store refuses once this worker has lost the lease.
LeaseLost = store.LeaseLost


class DatabaseSink:
    def __init__(self, db: Database, run_id: int, owner: str) -> None:
        self.db, self.run_id, self.owner = db, run_id, owner

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
        with self.db.write_session() as session:
            # stopped_by has no column of its own: it goes into the sample's JSON `extra`
            rows = [{**vars(s), "extra": {"stopped_by": s.stopped_by} if s.stopped_by else None} for s in samples]
            store.write_samples(session, self.run_id, rows, owner=self.owner)

    def log_checkpoint(self, step: int, path: str, final: bool) -> None:
        with self.db.write_session() as session:
            store.add_checkpoint(session, self.run_id, step, path, is_final=final, owner=self.owner)

    def should_stop(self) -> bool:
        """True on a user's cancel; raises LeaseLost if another worker has taken the run over."""
        with self.db.session() as session:
            row = session.execute(
                select(Run.cancel_requested, Run.lease_owner).where(Run.id == self.run_id)
            ).one_or_none()
        if row is None:
            raise LeaseLost(f"run {self.run_id} was deleted")
        if row.lease_owner != self.owner:
            raise LeaseLost(f"run {self.run_id} is now leased by {row.lease_owner!r}")
        return bool(row.cancel_requested)

    def close(self) -> None:
        pass
