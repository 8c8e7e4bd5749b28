"""Human votes: a voting session is a judgement with judge backend ``human`` (created by POST /judgements,
``create_human_judgement`` here); its voters take the next blind pair, vote, and see which run was which
(backend.store.votes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from .. import store
from ..deps import CanRead, CanWrite, ReadSession, WriteSession, require_write
from ..errors import FieldErrors, Loc
from ..models import ApiToken, Judgement, Run
from ..schemas import (
    BallotOut,
    BallotPairOut,
    JudgementCreate,
    JudgementOut,
    RevealedSide,
    VoteCreate,
    VoteOut,
)
from .common import JudgementPath, judgement_out

router = APIRouter(prefix="/judgements", tags=["votes"])
Voter = Annotated[ApiToken, Depends(require_write)]


def _step_problem(session: Session, run_id: int, step: int | None, field: str) -> tuple[int | None, list]:
    """The step of a run's stored samples to vote on (None: its latest), or the problem with it."""
    steps = [s for s, _n in store.sample_steps(session, run_id)]
    if not steps:
        return None, [(("body", field), f"run {run_id} has no stored eval samples to vote on")]
    if step is None:
        return steps[-1], []
    if step not in steps:
        shown = ", ".join(str(s) for s in steps[-10:])
        return None, [
            (("body", f"step_{field[-1]}"), f"run {run_id} has no samples at step {step} (it has: {shown})")
        ]
    return step, []


def _human_problems(body: JudgementCreate) -> list[tuple[Loc, str]]:
    """What a human judgement's request may not carry."""
    problems: list[tuple[Loc, str]] = []
    if body.queue is not None:
        problems.append((("body", "queue"), "human votes are not queued: no worker runs them"))
    if body.source_judgement is not None:
        for field in ("run_a", "run_b", "step_a", "step_b"):
            if getattr(body, field) is not None:
                problems.append(
                    (("body", field), "give either source_judgement (its pairs and policies) or the runs")
                )
    elif body.run_a is None:
        problems.append((("body", "run_a"), "human votes need source_judgement, or run_a and run_b"))
    elif body.run_b is None:
        problems.append(
            (("body", "run_b"), "human votes on runs compare two runs' stored samples: give run_b")
        )
    return problems


def create_human_judgement(body: JudgementCreate, session: Session) -> JudgementOut:
    """POST /judgements with judge {"backend": "human"}: a running voting session over the pairs of
    ``source_judgement`` or of two runs' stored samples, optionally only ``prompt_ids``, at most
    ``num_prompts`` of them (when given) drawn with ``seed``."""
    problems = _human_problems(body)
    if problems:
        raise FieldErrors(problems, "invalid voting session")
    if body.source_judgement is not None:
        source = store.get_judgement(session, body.source_judgement)
        if source is None:
            problems.append(
                (("body", "source_judgement"), f"judgement {body.source_judgement} does not exist")
            )
        elif store.is_human(source):
            problems.append(
                (("body", "source_judgement"), "a human judgement: vote on an automatic one's pairs")
            )
        else:
            pairs = store.judgement_pairs(session, source.id)
            if not pairs:
                problems.append(
                    (
                        ("body", "source_judgement"),
                        f"judgement {source.id} has no verdicts yet: no pairs to vote on",
                    )
                )
            run_a, step_a, run_b, step_b = source.run_a_id, source.step_a, source.run_b_id, source.step_b
    else:
        assert body.run_a is not None and body.run_b is not None  # _human_problems
        for field, rid in (("run_a", body.run_a), ("run_b", body.run_b)):
            if session.get(Run, rid) is None:
                problems.append((("body", field), f"run {rid} does not exist"))
        if not problems:
            step_a, pa = _step_problem(session, body.run_a, body.step_a, "run_a")
            step_b, pb = _step_problem(session, body.run_b, body.step_b, "run_b")
            problems += pa + pb
        if not problems:
            assert step_a is not None and step_b is not None
            pairs = store.sample_pairs(session, body.run_a, step_a, body.run_b, step_b)
            if not pairs:
                problems.append(
                    (
                        ("body", "run_b"),
                        f"runs {body.run_a} and {body.run_b} have no prompt in common at steps "
                        f"{step_a} and {step_b}",
                    )
                )
            run_a, run_b = body.run_a, body.run_b
    if problems:
        raise FieldErrors(problems, "invalid voting session")
    if body.prompt_ids is not None:
        by_id = {p.prompt_id: p for p in pairs}
        missing = [
            (("body", "prompt_ids", i), f"no pair for prompt {pid!r}")
            for i, pid in enumerate(body.prompt_ids)
            if pid not in by_id
        ]
        if missing:
            raise FieldErrors(missing[:20], "invalid voting session")
        pairs = [by_id[pid] for pid in dict.fromkeys(body.prompt_ids)]
    limit = body.num_prompts if "num_prompts" in body.model_fields_set else None
    j = store.create_human_judgement(
        session,
        run_a_id=run_a,
        step_a=step_a,
        run_b_id=run_b,
        step_b=step_b,
        pairs=store.draw_pairs(pairs, body.seed, limit),
        seed=body.seed,
        source_judgement_id=body.source_judgement,
    )
    return judgement_out(j)


@router.get(
    "/{judgement_id}/ballot/next",
    response_model=BallotOut,
    dependencies=[CanRead],
    summary="The next pair of a human judgement that has no vote, blind",
    description="The prompt and the two responses by screen side (the same sides on every reload); which run "
    "wrote which is not in the answer. ``pair`` is null once every pair is voted or the session is closed. "
    "409 for a judgement that is not human.",
)
def next_ballot(judgement_id: JudgementPath, session: ReadSession) -> BallotOut:
    j, pair = store.next_ballot(session, judgement_id)
    shown = None
    if pair is not None:
        left, right = (
            (pair.response_a, pair.response_b) if pair.order == "ab" else (pair.response_b, pair.response_a)
        )
        shown = BallotPairOut(
            prompt_id=pair.prompt_id, position=pair.position + 1, prompt=pair.prompt, left=left, right=right
        )
    return BallotOut(judgement_id=j.id, status=j.status, completed=j.completed, total=j.total, pair=shown)


def _side(session: Session, j: Judgement, policy: str) -> RevealedSide:
    """Who policy A or B of a judgement is."""
    run_a = session.get(Run, j.run_a_id)
    name_a = run_a.name if run_a is not None else None
    if policy == "A":
        step = j.step_a
        label = f"#{j.run_a_id} {name_a}" + ("" if step is None else f" @ step {step}")
        return RevealedSide(policy="A", run_id=j.run_a_id, run_name=name_a, step=step, label=label)
    if j.run_b_id is None:
        return RevealedSide(
            policy="B",
            run_id=None,
            run_name=None,
            step=None,
            label=f"reference (SFT) of #{j.run_a_id} {name_a}",
        )
    run_b = session.get(Run, j.run_b_id)
    name_b = run_b.name if run_b is not None else None
    label = f"#{j.run_b_id} {name_b}" + ("" if j.step_b is None else f" @ step {j.step_b}")
    return RevealedSide(policy="B", run_id=j.run_b_id, run_name=name_b, step=j.step_b, label=label)


@router.post(
    "/{judgement_id}/votes",
    status_code=201,
    response_model=VoteOut,
    dependencies=[CanWrite],
    summary="Vote on a pair of a human judgement; the answer reveals which run was on which side",
    description="The vote is stored as the judgement's verdict of that prompt (in terms of the policies) "
    "with the token's name as the voter. A pair has one vote: a second one (by anyone) is 409, since the "
    "first voter has seen the names. 409 too once the session is closed; 422 for a prompt_id not on its ballot.",
)
def cast_vote(judgement_id: JudgementPath, body: VoteCreate, session: WriteSession, token: Voter) -> VoteOut:
    try:
        j, pair, verdict = store.record_vote(
            session, judgement_id, body.prompt_id, body.choice, voter=token.name, comment=body.comment
        )
    except store.NotOnBallot as err:
        raise FieldErrors([(("body", "prompt_id"), str(err))], "invalid vote") from err
    first, second = ("A", "B") if pair.order == "ab" else ("B", "A")
    return VoteOut(
        judgement_id=j.id,
        prompt_id=pair.prompt_id,
        choice=body.choice,
        verdict=verdict.verdict,  # type: ignore[arg-type]
        voter=token.name,
        comment=verdict.comment,
        left=_side(session, j, first),
        right=_side(session, j, second),
        status=j.status,
        completed=j.completed,
        total=j.total,
    )


@router.post(
    "/{judgement_id}/close",
    response_model=JudgementOut,
    dependencies=[CanWrite],
    summary="End a human judgement's voting: it succeeds with the votes it has",
)
def close_judgement(judgement_id: JudgementPath, session: WriteSession) -> JudgementOut:
    return judgement_out(store.close_human_judgement(session, judgement_id))
