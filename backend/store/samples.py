"""Samples: a run's evaluation responses per step and prompt, and the training rollouts it recorded, with
their token records; written by its worker and read page by page (filtered and sorted in SQL), step by
step, prompt by prompt, or aligned across runs for comparison."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sqlalchemy import and_, delete, exists, func, null, or_, select, tuple_
from sqlalchemy.orm import Session

from ..models import Run, Sample, SampleTokens, utcnow
from . import leases
from ._common import finite, upsert_many

_SAMPLE_FIELDS = ("prompt", "response", "response_length", "score", "gold_score", "kl", "extra")
_TOKEN_FIELDS = ("num_tokens", "token_ids", "tokens", "names", "quantities")
_KEY = ("run_id", "kind", "step", "prompt_id", "sample_index")
SampleKind = Literal["eval", "train"]


@dataclass(frozen=True)
class TrainRetention:
    """Which recorded training rollouts the database keeps (eval samples are all kept): those of the last
    ``keep_last`` iterations and of every ``keep_every``-th (0: none besides the last)."""

    keep_last: int
    keep_every: int = 0


def pack_tokens(record: Mapping[str, Any]) -> dict[str, Any]:
    """A token record (token_ids, tokens, quantities: name -> T floats, None for missing) as a
    sample_tokens row's packed columns: int32 and float32 little-endian bytes (Q x T row-major, NaN for
    None). Raises ValueError if the lists' lengths disagree."""
    ids = list(record["token_ids"])
    pieces = [str(t) for t in record["tokens"]]
    quantities = dict(record.get("quantities") or {})
    n = len(ids)
    if len(pieces) != n or any(len(v) != n for v in quantities.values()):
        raise ValueError("token record: token_ids, tokens and every quantity need one entry per token")
    values = np.array([[math.nan if x is None else x for x in v] for v in quantities.values()], dtype="<f4")
    return {
        "num_tokens": n,
        "token_ids": np.asarray(ids, dtype="<i4").tobytes(),
        "tokens": pieces,
        "names": list(quantities),
        "quantities": values.tobytes(),
    }


def unpack_tokens(row: SampleTokens) -> dict[str, Any]:
    """The inverse of ``pack_tokens``: token_ids, tokens, quantities (name -> T floats, NaN and +-inf as
    None)."""
    n = row.num_tokens
    values = np.frombuffer(row.quantities, dtype="<f4").reshape(len(row.names), n).astype(float)
    return {
        "token_ids": np.frombuffer(row.token_ids, dtype="<i4").tolist(),
        "tokens": list(row.tokens),
        "quantities": {
            name: [x if math.isfinite(x) else None for x in column.tolist()]
            for name, column in zip(row.names, values, strict=True)
        },
    }


def write_samples(
    session: Session,
    run_id: int,
    samples: Iterable[Mapping[str, Any]],
    *,
    owner: str | None = None,
    retention: TrainRetention | None = None,
    commit: bool = True,
) -> int:
    """Store samples: mappings with step, prompt_id, prompt, response and optional kind ('eval', default,
    or 'train'), sample_index (0), response_length, score, gold_score, kl, extra (a JSON-able dict) and
    tokens (a token record, see ``pack_tokens``). Idempotent per (run, kind, step, prompt_id,
    sample_index): the newest wins. Three statements whatever the number of samples: the samples' upsert,
    reading back their ids, the token records' upsert; then, with ``retention`` and training rollouts
    among them, one DELETE of the training rollouts it no longer keeps (their token records go by
    cascade). With ``owner``, only while that worker holds the run's lease (else LeaseLost)."""
    if owner is not None:
        leases.require_lease(session, Run, run_id, owner)
    now = utcnow()
    rows: dict[tuple[str, int, str, int], dict[str, Any]] = {}
    tokens: dict[tuple[str, int, str, int], dict[str, Any]] = {}
    for s in samples:
        kind = str(s.get("kind") or "eval")
        if kind not in ("eval", "train"):
            raise ValueError(f"sample kind {kind!r}: 'eval' or 'train'")
        length = s.get("response_length")
        row = {
            "run_id": run_id,
            "kind": kind,
            "step": int(s["step"]),
            "prompt_id": str(s["prompt_id"]),
            "sample_index": int(s.get("sample_index") or 0),
            "prompt": str(s.get("prompt", "")),
            "response": str(s.get("response", "")),
            "response_length": None if length is None else int(length),
            "score": finite(s.get("score")),
            "gold_score": finite(s.get("gold_score")),
            "kl": finite(s.get("kl")),
            "extra": s.get("extra"),
            "created_at": now,
        }
        key = (row["kind"], row["step"], row["prompt_id"], row["sample_index"])
        rows[key] = row
        if s.get("tokens") is not None:
            tokens[key] = pack_tokens(s["tokens"])
    upsert_many(session, Sample.__table__, list(rows.values()), _KEY, _SAMPLE_FIELDS)
    if tokens:
        kind_steps = sorted({(kind, step) for kind, step, _, _ in tokens})
        ids = session.execute(
            select(Sample.id, Sample.kind, Sample.step, Sample.prompt_id, Sample.sample_index).where(
                Sample.run_id == run_id, tuple_(Sample.kind, Sample.step).in_(kind_steps)
            )
        )
        sample_ids = {(kind, step, pid, index): sid for sid, kind, step, pid, index in ids}
        token_rows = [{"sample_id": sample_ids[key], **packed} for key, packed in tokens.items()]
        upsert_many(session, SampleTokens.__table__, token_rows, ("sample_id",), _TOKEN_FIELDS)
    train_steps = [step for kind, step, _, _ in rows if kind == "train"]
    if retention is not None and train_steps:
        prune_train_samples(session, run_id, max(train_steps), retention)
    if commit:
        session.commit()
    return len(rows)


def prune_train_samples(session: Session, run_id: int, latest_step: int, retention: TrainRetention) -> int:
    """Delete the run's recorded training rollouts that ``retention`` no longer keeps once iteration
    ``latest_step`` is recorded: steps at or before latest_step - keep_last that are not a multiple of
    keep_every. One DELETE; returns the number of samples deleted."""
    old = [Sample.run_id == run_id, Sample.kind == "train", Sample.step <= latest_step - retention.keep_last]
    if retention.keep_every > 0:
        old.append(Sample.step % retention.keep_every != 0)
    return session.execute(delete(Sample).where(*old).execution_options(synchronize_session=False)).rowcount


SORT_KEYS = ("score", "gold", "kl", "length", "rm_gold_gap", "step", "prompt_id")
# compare_samples' sort keys besides prompt_id: a prompt's spread of the column over the runs compared
COMPARE_SPREADS = {
    "score_spread": Sample.score,
    "gold_spread": Sample.gold_score,
    "kl_spread": Sample.kl,
    "length_spread": Sample.response_length,
}
_SORT_COLUMNS = {
    "score": Sample.score,
    "gold": Sample.gold_score,
    "kl": Sample.kl,
    "length": Sample.response_length,
    "rm_gold_gap": Sample.score - Sample.gold_score,
    "step": Sample.step,
    "prompt_id": Sample.prompt_id,
}
# filter name -> (column, bound): min_x keeps column >= value, max_x column <= value
FILTERS = {
    f"{bound}_{name}": (column, bound)
    for name, column in (
        ("score", Sample.score),
        ("gold", Sample.gold_score),
        ("kl", Sample.kl),
        ("length", Sample.response_length),
    )
    for bound in ("min", "max")
}


def has_tokens_column():
    """EXISTS (a token record for the sample): the ``has_tokens`` of a listed sample."""
    return exists().where(SampleTokens.sample_id == Sample.id).label("has_tokens")


def _with_has_tokens(session: Session, stmt) -> list[Sample]:
    """The samples of ``stmt`` (a select of Sample and has_tokens), each with ``has_tokens`` set."""
    out = []
    for sample, has in session.execute(stmt):
        sample.has_tokens = bool(has)
        out.append(sample)
    return out


def list_samples(
    session: Session,
    run_id: int,
    *,
    step: int | None = None,
    kind: SampleKind = "eval",
    sort: str | None = None,
    filters: Mapping[str, float] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Sample], int]:
    """A page of a run's samples of ``kind`` (and ``step``), each with ``has_tokens``, and their total.
    ``sort``: one of SORT_KEYS, '-' first for descending (NULLs last either way; ties by step, prompt id,
    sample index); default step, prompt id, sample index. ``filters``: FILTERS' names -> bound (a sample
    whose value is NULL is left out by any bound on it). Filtering, sorting and paging run in SQL."""
    where = [Sample.run_id == run_id, Sample.kind == kind]
    if step is not None:
        where.append(Sample.step == step)
    for name, value in (filters or {}).items():
        column, bound = FILTERS[name]
        where.append(column >= value if bound == "min" else column <= value)
    order = []
    if sort:
        key = sort.lstrip("-")
        column = _SORT_COLUMNS[key]
        order.append((column.desc() if sort.startswith("-") else column.asc()).nulls_last())
    order += [Sample.step, Sample.prompt_id, Sample.sample_index, Sample.id]
    items = _with_has_tokens(
        session, select(Sample, has_tokens_column()).where(*where).order_by(*order).limit(limit).offset(offset)
    )
    total = session.scalar(select(func.count(Sample.id)).where(*where)) or 0
    return items, total


def prompt_samples(session: Session, run_id: int, prompt_id: str, *, kind: SampleKind = "eval") -> list[Sample]:
    """One prompt's samples of ``kind`` across all steps of a run, by step (then sample index)."""
    return _with_has_tokens(
        session,
        select(Sample, has_tokens_column())
        .where(Sample.run_id == run_id, Sample.kind == kind, Sample.prompt_id == prompt_id)
        .order_by(Sample.step, Sample.sample_index),
    )


def samples_tokens(session: Session, sample_ids: Sequence[int]) -> list[tuple[Sample, str, dict[str, Any]]]:
    """Each of these samples with its run's algorithm and its unpacked token record (``unpack_tokens``), in
    the order of ``sample_ids`` (repeats once); samples that do not exist or have no token record are left
    out. One query."""
    wanted = list(dict.fromkeys(int(i) for i in sample_ids))
    if not wanted:
        return []
    rows = session.execute(
        select(Sample, Run.algorithm, SampleTokens)
        .join(SampleTokens, SampleTokens.sample_id == Sample.id)
        .join(Run, Run.id == Sample.run_id)
        .where(Sample.id.in_(wanted))
    ).all()
    found = {row[0].id: (row[0], row[1], unpack_tokens(row[2])) for row in rows}
    return [found[i] for i in wanted if i in found]


def sample_tokens(session: Session, sample_id: int) -> tuple[Sample, str, dict[str, Any]] | None:
    """A sample, its run's algorithm and its unpacked token record; None if the sample does not exist or
    has no token record (``samples_tokens`` of one)."""
    found = samples_tokens(session, [sample_id])
    return found[0] if found else None


def sample_steps(session: Session, run_id: int, *, since_step: int | None = None) -> list[tuple[int, int]]:
    """(step, number of eval samples) for each step (after ``since_step``) that has eval samples."""
    where = [Sample.run_id == run_id, Sample.kind == "eval"]
    where += [Sample.step > since_step] if since_step is not None else []
    rows = session.execute(
        select(Sample.step, func.count(Sample.id)).where(*where).group_by(Sample.step).order_by(Sample.step)
    )
    return [(step, n) for step, n in rows]


def iter_samples(
    session: Session, run_id: int, *, step: int | None = None, batch: int = 1000
) -> Iterator[Sample]:
    stmt = select(Sample).where(Sample.run_id == run_id, Sample.kind == "eval")
    if step is not None:
        stmt = stmt.where(Sample.step == step)
    yield from session.scalars(
        stmt.order_by(Sample.step, Sample.prompt_id).execution_options(yield_per=batch)
    )


def latest_sample_steps(session: Session, run_ids: Sequence[int]) -> dict[int, int]:
    rows = session.execute(
        select(Sample.run_id, func.max(Sample.step))
        .where(Sample.run_id.in_(list(run_ids)), Sample.kind == "eval")
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
    sort: str = "prompt_id",
    limit: int = 50,
    offset: int = 0,
) -> AlignedSamples:
    """Align the eval samples of several runs on prompt_id, each run at its step (None: its latest sample
    step). "intersection" keeps prompts every run has; "union" keeps all (missing ones None). ``sort``:
    prompt_id, or one of COMPARE_SPREADS - a prompt's largest minus smallest value of that column over the
    runs, '-' first for descending (where the runs disagree most); prompts with fewer than two values of
    it last either way, ties by prompt id. Three queries whatever the number of runs and prompts."""
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
    cond = and_(Sample.kind == "eval", or_(*[and_(Sample.run_id == rid, Sample.step == s) for rid, s in pairs]))
    spread_column = COMPARE_SPREADS.get(sort.lstrip("-"))  # None: by prompt id
    id_rows = session.execute(
        select(Sample.run_id, Sample.step, Sample.prompt_id, null() if spread_column is None else spread_column)
        .where(cond)
    ).all()
    have: dict[str, set[tuple[int, int]]] = {}
    values: dict[str, list[float]] = {}
    for rid, step, pid, value in id_rows:
        have.setdefault(pid, set()).add((rid, step))
        if value is not None and math.isfinite(value):
            values.setdefault(pid, []).append(value)
    wanted = set(pairs)
    if mode == "intersection":
        prompt_ids = sorted(pid for pid, got in have.items() if wanted <= got and len(pairs) == len(runs))
    else:
        prompt_ids = sorted(have)
    if spread_column is not None:
        sign = -1.0 if sort.startswith("-") else 1.0

        def spread_key(pid: str) -> tuple[bool, float]:
            got = values.get(pid, [])
            return (len(got) < 2, sign * (max(got) - min(got)) if len(got) >= 2 else 0.0)

        prompt_ids.sort(key=spread_key)  # stable: ties stay in prompt id order
    page = prompt_ids[offset : offset + limit]
    by_key: dict[tuple[int, int, str], Sample] = {}
    if page:
        for s in _with_has_tokens(session, select(Sample, has_tokens_column()).where(cond, Sample.prompt_id.in_(page))):
            by_key[(s.run_id, s.step, s.prompt_id)] = s
    items = [(pid, [by_key.get((rid, s, pid)) if s is not None else None for rid, s in runs]) for pid in page]
    return AlignedSamples(runs, len(prompt_ids), items)

