"""Human votes: a judgement with judge backend ``human`` is a voting session over a fixed set of pairs
(ballot_pairs: a prompt and the two policies' responses). No worker runs it: it is ``running`` from its
creation, without a lease, until every pair has its vote (then ``succeeded``) or it is closed or
cancelled. A vote is stored as the judgement's verdict row of that prompt (in terms of the policies; its
``order`` is the side the policies were shown on), with the voter's API token name and comment, and the
judgement's summary is recomputed from its verdicts as for any judgement (refresh_judgement_summary).

A session collects one vote per pair, from whichever voter casts it first: several people may share a
session (each gets the next pair nobody has voted on), and a second vote on a pair is refused (Conflict),
since the first vote's names were revealed to its voter. People who want independent votes on the same
pairs each start their own session (e.g. from the same automatic judgement).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, insert, or_, select
from sqlalchemy.orm import Session, aliased

from ..models import HUMAN, BallotPair, Judgement, Sample, Verdict, utcnow
from ._common import Conflict, NotFound, chunks, rows_per_statement
from .judgements import VerdictRow, is_human, refresh_judgement_summary, verdict_rows


class NotOnBallot(ValueError):
    """A vote names a prompt that is not one of the session's pairs (bad input, not a missing resource)."""


@dataclass(frozen=True)
class Pair:
    """A prompt and the two policies' responses to it."""

    prompt_id: str
    prompt: str
    response_a: str
    response_b: str


def ballot_order(judgement_id: int, prompt_id: str) -> str:
    """The side the policies of a pair are shown on in one session: "ab" (A's response on the left) or
    "ba", fixed per (session, prompt) so that a reload shows the same, and unpredictable from the prompt
    alone (the first bit of a SHA-256 of both)."""
    digest = hashlib.sha256(f"{judgement_id}\x00{prompt_id}".encode()).digest()
    return "ab" if digest[0] & 1 == 0 else "ba"


def judgement_pairs(session: Session, judgement_id: int) -> list[Pair]:
    """The pairs an (automatic) judgement judged, one per prompt with a stored verdict, by prompt_id; the
    responses from its "ab" row where that has them (the order rows carry the same two responses)."""
    best: dict[str, Pair] = {}
    rows = session.execute(
        select(Verdict.prompt_id, Verdict.order, Verdict.prompt, Verdict.response_a, Verdict.response_b)
        .where(Verdict.judgement_id == judgement_id)
        .order_by(Verdict.prompt_id, Verdict.order)  # "ab" before "ba"
    )
    for pid, _order, prompt, ra, rb in rows:
        if pid not in best or not (best[pid].response_a or best[pid].response_b):
            best[pid] = Pair(pid, prompt, ra, rb)
    return [best[p] for p in sorted(best)]


def sample_pairs(session: Session, run_a: int, step_a: int, run_b: int, step_b: int) -> list[Pair]:
    """Two runs' stored eval samples at these steps aligned on prompt_id (the prompts both have), by
    prompt_id, in one query."""
    a, b = aliased(Sample), aliased(Sample)
    rows = session.execute(
        select(a.prompt_id, a.prompt, a.response, b.response)
        .join(b, and_(b.prompt_id == a.prompt_id, b.run_id == run_b, b.step == step_b, b.kind == "eval"))
        .where(a.run_id == run_a, a.step == step_a, a.kind == "eval")
        .order_by(a.prompt_id)
    )
    return [Pair(pid, prompt, ra, rb) for pid, prompt, ra, rb in rows]


def draw_pairs(pairs: Sequence[Pair], seed: int, limit: int | None) -> list[Pair]:
    """The pairs in the order a session puts them to its voters: shuffled by ``seed`` (random.Random), the
    first ``limit`` (None: all)."""
    drawn = random.Random(seed).sample(list(pairs), len(pairs))
    return drawn if limit is None else drawn[:limit]


def create_human_judgement(
    session: Session,
    *,
    run_a_id: int,
    step_a: int | None,
    run_b_id: int | None,
    step_b: int | None,
    pairs: Sequence[Pair],
    seed: int = 0,
    source_judgement_id: int | None = None,
    commit: bool = True,
) -> Judgement:
    """A voting session (judge backend ``human``, status running, no lease) over ``pairs``, voted on in
    the given order; each pair's sides by ``ballot_order``. Batched inserts."""
    if not pairs:
        raise ValueError("a voting session needs at least one pair")
    now = utcnow()
    j = Judgement(
        status="running",
        queue=HUMAN,
        run_a_id=run_a_id,
        step_a=step_a,
        run_b_id=run_b_id,
        step_b=step_b,
        num_prompts=len(pairs),
        judge={"backend": HUMAN},
        seed=seed,
        source_judgement_id=source_judgement_id,
        total=len(pairs),
        created_at=now,
        updated_at=now,
        started_at=now,
    )
    session.add(j)
    session.flush()
    rows = [
        {
            "judgement_id": j.id,
            "position": i,
            "prompt_id": p.prompt_id,
            "prompt": p.prompt,
            "response_a": p.response_a,
            "response_b": p.response_b,
            "order": ballot_order(j.id, p.prompt_id),
        }
        for i, p in enumerate(pairs)
    ]
    for chunk in chunks(rows, rows_per_statement(session, len(rows[0]))):
        session.execute(insert(BallotPair.__table__), list(chunk))
    if commit:
        session.commit()
    return j


def _human(session: Session, judgement_id: int, *, lock: bool = False) -> Judgement:
    j = session.get(Judgement, judgement_id, with_for_update=lock or None, populate_existing=lock)
    if j is None:
        raise NotFound(f"judgement {judgement_id} not found")
    if not is_human(j):
        raise Conflict(
            f"judgement {judgement_id} is judged by {j.judge.get('backend')!r}, not by human votes: it has no ballot"
        )
    return j


def next_ballot(session: Session, judgement_id: int) -> tuple[Judgement, BallotPair | None]:
    """A human judgement and its first pair (by position) that has no vote; None once every pair is voted,
    or when the session is no longer running. Conflict for a judgement that is not human."""
    j = _human(session, judgement_id)
    if j.status != "running":
        return j, None
    voted = (
        select(Verdict.id)
        .where(Verdict.judgement_id == judgement_id, Verdict.prompt_id == BallotPair.prompt_id)
        .exists()
    )
    pair = session.scalars(
        select(BallotPair)
        .where(BallotPair.judgement_id == judgement_id, ~voted)
        .order_by(BallotPair.position)
        .limit(1)
    ).first()
    return j, pair


def policy_verdict(choice: str, order: str) -> str:
    """A vote by screen side ("left", "right", "tie") in terms of the policies, for a pair shown in
    ``order`` ("ab": A on the left)."""
    if choice == "tie":
        return "tie"
    left, right = ("A", "B") if order == "ab" else ("B", "A")
    return {"left": left, "right": right}[choice]


def record_vote(
    session: Session,
    judgement_id: int,
    prompt_id: str,
    choice: str,
    *,
    voter: str,
    comment: str | None = None,
    commit: bool = True,
) -> tuple[Judgement, BallotPair, Verdict]:
    """Store one vote on a pair of a running human judgement and recompute the judgement's summary; it
    succeeds once every pair is voted. Conflict: not a human judgement, no longer running, or the pair
    already has a vote (votes are final: its voter has seen the names). NotOnBallot: no such pair.

    The judgement's row is locked (FOR UPDATE on PostgreSQL; a SQLite write_session holds the write lock)
    from the check to the commit, so two votes on one pair cannot both be stored."""
    j = _human(session, judgement_id, lock=True)
    if j.status != "running":
        raise Conflict(f"judgement {judgement_id} is {j.status}: it takes no more votes")
    pair = session.scalars(
        select(BallotPair).where(BallotPair.judgement_id == judgement_id, BallotPair.prompt_id == prompt_id)
    ).first()
    if pair is None:
        raise NotOnBallot(f"judgement {judgement_id} has no pair with prompt_id {prompt_id!r}")
    earlier = session.scalar(
        select(Verdict.voter).where(Verdict.judgement_id == judgement_id, Verdict.prompt_id == prompt_id)
    )
    if earlier is not None:
        raise Conflict(
            f"the pair {prompt_id!r} of judgement {judgement_id} already has a vote (by {earlier!r}); votes are "
            "final, since the names were revealed after it"
        )
    now = utcnow()
    verdict = Verdict(
        judgement_id=judgement_id,
        prompt_id=prompt_id,
        prompt=pair.prompt,
        response_a=pair.response_a,
        response_b=pair.response_b,
        order=pair.order,
        verdict=policy_verdict(choice, pair.order),
        raw_output=choice,
        voter=voter,
        comment=comment or None,
        created_at=now,
    )
    session.add(verdict)
    session.flush()
    j = refresh_judgement_summary(session, judgement_id, commit=False)
    j.progress_at = now
    if j.completed >= j.total:
        j.status, j.finished_at = "succeeded", now
    session.flush()
    if commit:
        session.commit()
    return j, pair, verdict


def close_human_judgement(session: Session, judgement_id: int, *, commit: bool = True) -> Judgement:
    """End a voting session before every pair is voted: it succeeds with the votes it has. Conflict for a
    judgement that is not human or not running."""
    j = _human(session, judgement_id, lock=True)
    if j.status != "running":
        raise Conflict(f"judgement {judgement_id} is already {j.status}")
    now = utcnow()
    j.status, j.finished_at, j.updated_at = "succeeded", now, now
    session.flush()
    if commit:
        session.commit()
    return j


@dataclass
class AgreementInputs:
    """What the agreement of one judgement with those of the other kind is computed from: the judgements,
    their verdict rows, and each human judgement's voters."""

    judgements: dict[int, Judgement]  # this one and its counterparts
    rows: dict[int, list[VerdictRow]]
    voters: dict[int, list[str]]


def agreement_inputs(session: Session, judgement: Judgement) -> AgreementInputs:
    """The judgements of the other kind (human for an automatic one, automatic for a human one) between
    the same two policies, in either orientation, and the verdict rows of all of them: three queries
    (judgements, verdicts, voters), whatever their number."""
    same = and_(
        Judgement.run_a_id == judgement.run_a_id,
        Judgement.run_b_id.is_(None)
        if judgement.run_b_id is None
        else Judgement.run_b_id == judgement.run_b_id,
    )
    either = (
        same
        if judgement.run_b_id is None
        else or_(
            same, and_(Judgement.run_a_id == judgement.run_b_id, Judgement.run_b_id == judgement.run_a_id)
        )
    )
    backend = Judgement.judge["backend"].as_string()
    other_kind = backend != HUMAN if is_human(judgement) else backend == HUMAN
    others = list(
        session.scalars(
            select(Judgement).where(either, other_kind, Judgement.id != judgement.id).order_by(Judgement.id)
        )
    )
    judgements = {judgement.id: judgement, **{j.id: j for j in others}}
    if not others:
        return AgreementInputs(judgements, {}, {})
    rows = verdict_rows(session, Verdict.judgement_id.in_(list(judgements)))
    human_ids = [jid for jid, j in judgements.items() if is_human(j)]
    voters: dict[int, list[str]] = {jid: [] for jid in human_ids}
    for jid, voter in session.execute(
        select(Verdict.judgement_id, Verdict.voter)
        .where(Verdict.judgement_id.in_(human_ids), Verdict.voter.is_not(None))
        .distinct()
        .order_by(Verdict.judgement_id, Verdict.voter)
    ):
        voters[jid].append(voter)
    return AgreementInputs(judgements, rows, voters)
