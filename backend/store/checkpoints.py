"""Checkpoints: the rows that record a run's checkpoint directories (the files stay where the worker wrote
them)."""

from __future__ import annotations

import os

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..models import Checkpoint, Run, utcnow
from . import leases
from ._common import dialect_insert, update_rows


def add_checkpoint(
    session: Session,
    run_id: int,
    step: int,
    path: str | os.PathLike[str],
    *,
    is_final: bool = False,
    owner: str | None = None,
    commit: bool = True,
) -> Checkpoint:
    """Record a checkpoint directory (idempotent per (run, step)). ``path`` is a directory in HF layout
    (config.json, weights, tokenizer), or one holding such a directory as ``policy/``. Marking one final
    unmarks the run's other checkpoints. With ``owner``, only while that worker holds the run's lease
    (else LeaseLost)."""
    if owner is not None:
        leases.require_lease(session, Run, run_id, owner)
    stmt = dialect_insert(session, Checkpoint.__table__)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "step"],
        set_={"path": stmt.excluded.path, "is_final": stmt.excluded.is_final},
    )
    if is_final:
        others = (Checkpoint.run_id == run_id, Checkpoint.step != step)
        update_rows(session, Checkpoint, *others, values={"is_final": False}, commit=False)
    session.execute(
        stmt,
        [
            {
                "run_id": run_id,
                "step": int(step),
                "path": str(path),
                "is_final": is_final,
                "created_at": utcnow(),
            }
        ],
    )
    ckpt = session.scalars(
        select(Checkpoint)
        .where(Checkpoint.run_id == run_id, Checkpoint.step == step)
        .execution_options(populate_existing=True)
    ).one()
    if commit:
        session.commit()
    return ckpt


def list_checkpoints(session: Session, run_id: int) -> list[Checkpoint]:
    return list(
        session.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step))
    )


def final_checkpoint(session: Session, run_id: int) -> Checkpoint | None:
    """The checkpoint marked final, else none."""
    return session.scalar(
        select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.is_final.is_(True))
    )


def get_checkpoint(session: Session, run_id: int, checkpoint_id: int) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.id == checkpoint_id)
    )

