"""Samples: a run's evaluation responses per step and prompt, written by its worker and read page by page,
step by step, or aligned across runs for comparison."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from ..models import Run, Sample, utcnow
from . import leases
from ._common import finite, upsert_many

_SAMPLE_FIELDS = ("prompt", "response", "score", "gold_score", "kl", "extra")


def write_samples(
    session: Session,
    run_id: int,
    samples: Iterable[Mapping[str, Any]],
    *,
    owner: str | None = None,
    commit: bool = True,
) -> int:
    """Store evaluation samples: mappings with step, prompt_id, prompt, response and optional score,
    gold_score, kl, extra (a JSON-able dict). Idempotent per (run, step, prompt_id): the newest wins.
    With ``owner``, only while that worker holds the run's lease (else LeaseLost)."""
    if owner is not None:
        leases.require_lease(session, Run, run_id, owner)
    now = utcnow()
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for s in samples:
        row = {
            "run_id": run_id,
            "step": int(s["step"]),
            "prompt_id": str(s["prompt_id"]),
            "prompt": str(s.get("prompt", "")),
            "response": str(s.get("response", "")),
            "score": finite(s.get("score")),
            "gold_score": finite(s.get("gold_score")),
            "kl": finite(s.get("kl")),
            "extra": s.get("extra"),
            "created_at": now,
        }
        rows[(row["step"], row["prompt_id"])] = row
    upsert_many(
        session, Sample.__table__, list(rows.values()), ("run_id", "step", "prompt_id"), _SAMPLE_FIELDS
    )
    if commit:
        session.commit()
    return len(rows)


def list_samples(
    session: Session, run_id: int, *, step: int | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Sample], int]:
    where = [Sample.run_id == run_id] + ([Sample.step == step] if step is not None else [])
    items = list(
        session.scalars(
            select(Sample).where(*where).order_by(Sample.step, Sample.prompt_id).limit(limit).offset(offset)
        )
    )
    total = session.scalar(select(func.count(Sample.id)).where(*where)) or 0
    return items, total


def sample_steps(session: Session, run_id: int, *, since_step: int | None = None) -> list[tuple[int, int]]:
    """(step, number of samples) for each step (after ``since_step``) that has samples."""
    where = [Sample.run_id == run_id] + ([Sample.step > since_step] if since_step is not None else [])
    rows = session.execute(
        select(Sample.step, func.count(Sample.id)).where(*where).group_by(Sample.step).order_by(Sample.step)
    )
    return [(step, n) for step, n in rows]


def iter_samples(
    session: Session, run_id: int, *, step: int | None = None, batch: int = 1000
) -> Iterator[Sample]:
    stmt = select(Sample).where(Sample.run_id == run_id)
    if step is not None:
        stmt = stmt.where(Sample.step == step)
    yield from session.scalars(
        stmt.order_by(Sample.step, Sample.prompt_id).execution_options(yield_per=batch)
    )


def latest_sample_steps(session: Session, run_ids: Sequence[int]) -> dict[int, int]:
    rows = session.execute(
        select(Sample.run_id, func.max(Sample.step))
        .where(Sample.run_id.in_(list(run_ids)))
        .group_by(Sample.run_id)
    )
    return {rid: step for rid, step in rows}


@dataclass
class AlignedSamples:
    runs: list[tuple[int, int | None]]  # (run_id, step) in request order; step None: the run has no samples
    total: int  # prompts in the comparison
    items: list[tuple[str, list[Sample | None]]]  # (prompt_id, one sample per run or None)


def compare_samples(
    session: Session,
    run_ids: Sequence[int],
    steps: Sequence[int | None],
    *,
    mode: Literal["intersection", "union"] = "intersection",
    limit: int = 50,
    offset: int = 0,
) -> AlignedSamples:
    """Align the samples of several runs on prompt_id, each run at its step (None: its latest sample
    step). "intersection" keeps prompts every run has; "union" keeps all (missing ones None).
    Three queries whatever the number of runs and prompts."""
    if len(steps) != len(run_ids):
        raise ValueError("one step per run")
    resolved = list(steps)
    if any(s is None for s in resolved):
        latest = latest_sample_steps(session, run_ids)
        resolved = [s if s is not None else latest.get(rid) for rid, s in zip(run_ids, resolved, strict=True)]
    pairs = [(rid, s) for rid, s in zip(run_ids, resolved, strict=True) if s is not None]
    runs = list(zip(run_ids, resolved, strict=True))
    if not pairs:
        return AlignedSamples(runs, 0, [])
    cond = or_(*[and_(Sample.run_id == rid, Sample.step == s) for rid, s in pairs])
    id_rows = session.execute(select(Sample.run_id, Sample.step, Sample.prompt_id).where(cond)).all()
    have: dict[str, set[tuple[int, int]]] = {}
    for rid, step, pid in id_rows:
        have.setdefault(pid, set()).add((rid, step))
    wanted = set(pairs)
    if mode == "intersection":
        prompt_ids = sorted(pid for pid, got in have.items() if wanted <= got and len(pairs) == len(runs))
    else:
        prompt_ids = sorted(have)
    page = prompt_ids[offset : offset + limit]
    by_key: dict[tuple[int, int, str], Sample] = {}
    if page:
        for s in session.scalars(select(Sample).where(cond, Sample.prompt_id.in_(page))):
            by_key[(s.run_id, s.step, s.prompt_id)] = s
    items = [(pid, [by_key.get((rid, s, pid)) if s is not None else None for rid, s in runs]) for pid in page]
    return AlignedSamples(runs, len(prompt_ids), items)

