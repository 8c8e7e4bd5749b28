"""Judgements: a judge's comparison of two runs' policies, leased to a worker like a run (the lease is
backend.store.leases), and its verdicts with the summary recomputed from them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from ..leaderboard import LeaderboardRow
from ..models import HUMAN, ORDERS, VERDICTS, Judgement, Run, RunTag, Verdict, utcnow
from ..schemas import LengthDiagnosticsOut
from ..winrate import length_diagnostics, summarize_rows
from . import leases
from ._common import NotFound, upsert_many
from .leases import HeartbeatResult


def create_judgement(
    session: Session,
    *,
    run_a_id: int,
    step_a: int | None = None,
    run_b_id: int | None = None,
    step_b: int | None = None,
    num_prompts: int,
    judge: Mapping[str, Any],
    seed: int = 0,
    queue: str = "gpu",
    experiment_id: int | None = None,
    kind: str | None = None,
    commit: bool = True,
) -> Judgement:
    """A queued judgement of run A (at step_a; None = final) against run B (None = A's reference);
    ``experiment_id``/``kind`` mark the judgements an experiment queues itself."""
    for rid in (run_a_id, run_b_id):
        if rid is not None and session.get(Run, rid) is None:
            raise NotFound(f"run {rid} not found")
    now = utcnow()
    j = Judgement(
        status="queued",
        queue=queue,
        run_a_id=run_a_id,
        step_a=step_a,
        run_b_id=run_b_id,
        step_b=step_b,
        num_prompts=num_prompts,
        judge=dict(judge),
        seed=seed,
        experiment_id=experiment_id,
        kind=kind,
        total=2 * num_prompts,
        created_at=now,
        updated_at=now,
    )
    session.add(j)
    session.flush()
    if commit:
        session.commit()
    return j


def get_judgement(session: Session, judgement_id: int) -> Judgement | None:
    return session.get(Judgement, judgement_id)


def list_judgements(
    session: Session,
    *,
    run_id: int | None = None,
    status: Sequence[str] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Judgement], int]:
    where = []
    if run_id is not None:
        where.append(or_(Judgement.run_a_id == run_id, Judgement.run_b_id == run_id))
    if status:
        where.append(Judgement.status.in_(list(status)))
    items = list(
        session.scalars(
            select(Judgement).where(*where).order_by(Judgement.id.desc()).limit(limit).offset(offset)
        )
    )
    total = session.scalar(select(func.count(Judgement.id)).where(*where)) or 0
    return items, total


def set_judgement_status(
    session: Session,
    judgement_id: int,
    status: str,
    *,
    error: str | None = None,
    owner: str | None = None,
    commit: bool = True,
) -> bool:
    """Set a judgement's status (and error); see ``leases.set_status`` (claim one with ``acquire_judgement``)."""
    return leases.set_status(session, Judgement, judgement_id, status, error=error, owner=owner, commit=commit)


def acquire_judgement(
    session: Session,
    judgement_id: int,
    owner: str,
    *,
    stale_after: timedelta = timedelta(seconds=60),
    commit: bool = True,
) -> bool:
    """Claim a judgement for ``owner``, like ``acquire_lease`` for runs."""
    return leases.acquire(session, Judgement, judgement_id, owner, stale_after, {}, commit)


def heartbeat_judgement(
    session: Session, judgement_id: int, owner: str, *, commit: bool = True
) -> HeartbeatResult:
    """Renew a judgement's lease; says whether it is still ours and whether a cancel was requested."""
    return leases.heartbeat(session, Judgement, judgement_id, owner, {}, commit)


def requeue_stale_judgements(
    session: Session,
    *,
    stale_after: timedelta = timedelta(seconds=120),
    max_attempts: int | None = None,
    commit: bool = True,
) -> list[int]:
    """Like ``requeue_stale_runs`` for judgements whose worker died (their stored verdicts are kept and
    not judged again)."""
    return leases.requeue_stale(session, Judgement, stale_after, commit, max_attempts)


def is_human(judgement: Judgement) -> bool:
    """Whether a judgement is people's votes (judge backend ``human``, backend/store/votes.py)."""
    return judgement.judge.get("backend") == HUMAN


def request_judgement_cancel(session: Session, judgement_id: int, *, commit: bool = True) -> Judgement:
    """Ask a judgement to stop, like ``request_cancel`` for runs (``leases.request_cancel``). A human
    judgement has no worker to ask: it is cancelled at once (its votes are kept)."""
    j = leases.request_cancel(session, Judgement, judgement_id, commit=False)
    if is_human(j) and j.status == "running":
        j.status, j.finished_at, j.updated_at = "cancelled", utcnow(), utcnow()
        session.flush()
    if commit:
        session.commit()
    return j


def delete_judgement(
    session: Session, judgement_id: int, *, force: bool = False, commit: bool = True
) -> None:
    """Delete a judgement and its verdicts; a running one must be cancelled first unless ``force``."""
    leases.delete_row(session, Judgement, judgement_id, force=force, commit=commit)


def record_verdicts(
    session: Session,
    judgement_id: int,
    verdicts: Iterable[Mapping[str, Any]],
    *,
    owner: str | None = None,
    commit: bool = True,
) -> Judgement:
    """Store judge verdicts: mappings with prompt_id, order ("ab": A shown first, "ba": swapped),
    verdict (A/B/tie/invalid, in terms of the policies), prompt, response_a, response_b, raw_output.

    Idempotent per (judgement, prompt_id, order): a retried call replaces, never double-counts. The
    judgement's counts, win-rate, Wilson CI and position consistency are recomputed from the table.
    With ``owner``, only while that worker holds the judgement's lease (else LeaseLost)."""
    if owner is not None:
        leases.require_lease(session, Judgement, judgement_id, owner)
    now = utcnow()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for v in verdicts:
        if v["order"] not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {v['order']!r}")
        if v["verdict"] not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {v['verdict']!r}")
        row = {
            "judgement_id": judgement_id,
            "prompt_id": str(v["prompt_id"]),
            "prompt": str(v.get("prompt", "")),
            "response_a": str(v.get("response_a", "")),
            "response_b": str(v.get("response_b", "")),
            "order": v["order"],
            "verdict": v["verdict"],
            "raw_output": v.get("raw_output"),
            "created_at": now,
        }
        rows[(row["prompt_id"], row["order"])] = row
    upsert_many(
        session,
        Verdict.__table__,
        list(rows.values()),
        ("judgement_id", "prompt_id", "order"),
        ("prompt", "response_a", "response_b", "verdict", "raw_output"),
    )
    judgement = refresh_judgement_summary(session, judgement_id, commit=False)
    judgement.progress_at = now  # verdicts saved: the judge process is not hung (stall_timeout_s)
    if commit:
        session.commit()
    return judgement


def refresh_judgement_summary(session: Session, judgement_id: int, *, commit: bool = True) -> Judgement:
    """Recompute a judgement's counts, win-rate, Wilson CI and position consistency from its verdicts
    (per prompt, once both orders are in, or its one vote for a human judgement; see backend.winrate)."""
    j = session.get(Judgement, judgement_id, populate_existing=True)
    if j is None:
        raise NotFound(f"judgement {judgement_id} not found")
    triples = session.execute(
        select(Verdict.prompt_id, Verdict.order, Verdict.verdict).where(Verdict.judgement_id == judgement_id)
    ).all()
    summary = summarize_rows(((p, o, v) for p, o, v in triples), single_order=is_human(j))
    j.completed = len(triples)
    j.wins_a, j.wins_b, j.ties, j.invalid = summary.wins_a, summary.wins_b, summary.ties, summary.invalid
    j.win_rate, j.ci_low, j.ci_high = summary.win_rate, summary.ci_low, summary.ci_high
    j.position_consistency = summary.position_consistency
    j.updated_at = utcnow()
    session.flush()
    if commit:
        session.commit()
    return j


def list_verdicts(
    session: Session, judgement_id: int, *, limit: int = 100, offset: int = 0
) -> tuple[list[Verdict], int]:
    where = Verdict.judgement_id == judgement_id
    items = list(
        session.scalars(
            select(Verdict)
            .where(where)
            .order_by(Verdict.prompt_id, Verdict.order)
            .limit(limit)
            .offset(offset)
        )
    )
    total = session.scalar(select(func.count(Verdict.id)).where(where)) or 0
    return items, total



def judgement_lengths(
    session: Session, judgements: Sequence[Judgement]
) -> dict[int, LengthDiagnosticsOut | None]:
    """The length diagnostics of several judgements (backend.winrate.length_diagnostics; None while fewer
    than two prompts have a valid verdict), from their verdict rows fetched in one query."""
    rows: dict[int, list[VerdictRow]] = {j.id: [] for j in judgements}
    if rows:
        rows.update(verdict_rows(session, Verdict.judgement_id.in_(list(rows))))
    human = {j.id for j in judgements if is_human(j)}
    return {jid: length_diagnostics(r, single_order=jid in human) for jid, r in rows.items()}


VerdictRow = tuple[str, str, str, str, str]  # (prompt_id, order, verdict, response_a, response_b)


def verdict_rows(session: Session, *where: Any) -> dict[int, list[VerdictRow]]:
    """The verdict rows matching ``where`` (on Verdict, or Judgement, which is joined), by judgement id, in
    one query: what backend.winrate summarises (win-rates, length diagnostics)."""
    rows: dict[int, list[VerdictRow]] = {}
    for jid, *row in session.execute(
        select(
            Verdict.judgement_id,
            Verdict.prompt_id,
            Verdict.order,
            Verdict.verdict,
            Verdict.response_a,
            Verdict.response_b,
        )
        .join(Judgement, Judgement.id == Verdict.judgement_id)
        .where(*where)
    ):
        rows.setdefault(jid, []).append(tuple(row))  # type: ignore[arg-type]
    return rows


def _has_tag(run_id: Any, tag: str) -> Any:
    return select(RunTag.run_id).where(RunTag.run_id == run_id, RunTag.tag == tag).exists()


def leaderboard_rows(
    session: Session,
    *,
    judge_backend: str,
    judge_model: str | None = None,
    tags: Sequence[str] = (),
    experiment_id: int | None = None,
) -> list[LeaderboardRow]:
    """Every verdict of the judgements by this judge backend (and model) with the columns of its two
    policies (backend.leaderboard.LeaderboardRow), in one query. ``tags`` / ``experiment_id``: only
    judgements whose run A, and run B unless it is A's reference policy, have all these tags / belong to
    that experiment."""
    run_a, run_b = aliased(Run), aliased(Run)
    where = [Judgement.judge["backend"].as_string() == judge_backend]
    if judge_model is not None:
        where.append(Judgement.judge["model"].as_string() == judge_model)
    for tag in tags:
        where.append(_has_tag(run_a.id, tag))
        where.append(or_(Judgement.run_b_id.is_(None), _has_tag(run_b.id, tag)))
    if experiment_id is not None:
        where.append(run_a.experiment_id == experiment_id)
        where.append(or_(Judgement.run_b_id.is_(None), run_b.experiment_id == experiment_id))
    reference = func.coalesce(
        run_a.config[("model", "reference")].as_string(), run_a.config[("model", "policy")].as_string()
    )
    stmt = (
        select(
            Verdict.judgement_id,
            Verdict.prompt_id,
            Verdict.order,
            Verdict.verdict,
            Judgement.run_a_id,
            run_a.name,
            Judgement.step_a,
            run_a.algorithm,
            run_a.config["kl_coef"].as_float(),
            reference,
            Judgement.run_b_id,
            run_b.name,
            Judgement.step_b,
            run_b.algorithm,
            run_b.config["kl_coef"].as_float(),
        )
        .join(Judgement, Judgement.id == Verdict.judgement_id)
        .join(run_a, run_a.id == Judgement.run_a_id)
        .outerjoin(run_b, run_b.id == Judgement.run_b_id)
        .where(and_(*where))
    )
    return [LeaderboardRow(*row) for row in session.execute(stmt)]
