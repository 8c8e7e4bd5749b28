"""Human votes: the blind ballot a voter sees, a vote and what it reveals, and the agreement of an
automatic judge with the votes on the same pairs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from ._common import RunStatus, _In, _text

Choice = Literal["left", "right", "tie"]
PromptId = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_text)]
Comment = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_text)]


class BallotPairOut(BaseModel):
    """One pair to vote on, blind: the prompt and the two responses by screen side. Which policy (run)
    wrote which response is not said until the vote is cast (VoteOut)."""

    prompt_id: str = Field(description="the pair's key in this session (POST .../votes takes it back)")
    position: int = Field(description="1-based place of this pair in the session's order")
    prompt: str
    left: str = Field(description="the response shown on the left")
    right: str = Field(description="the response shown on the right")


class BallotOut(BaseModel):
    """The next pair of a human judgement that nobody has voted on yet (``pair`` None: every pair is voted,
    or the session was closed or cancelled)."""

    judgement_id: int
    status: RunStatus
    completed: int = Field(description="pairs voted")
    total: int = Field(description="pairs in the session")
    pair: BallotPairOut | None


class VoteCreate(_In):
    prompt_id: PromptId = Field(description="the pair voted on (BallotPairOut.prompt_id)")
    choice: Choice = Field(description="the better response by screen side: left, right, or tie")
    comment: Comment | None = Field(None, description="optional, kept with the vote")


class RevealedSide(BaseModel):
    """Which policy wrote the response shown on one side."""

    policy: Literal["A", "B"]
    run_id: int | None = Field(description="None: run A's reference (SFT) policy")
    run_name: str | None
    step: int | None = Field(description="the checkpoint (or samples') step; None: the final policy")
    label: str = Field(description="e.g. '#3 klq-a @ step 50', 'reference (SFT) of #3 klq-a'")


class VoteOut(BaseModel):
    """A stored vote and the reveal: which run was on which side."""

    judgement_id: int
    prompt_id: str
    choice: Choice
    verdict: Literal["A", "B", "tie"] = Field(description="the vote in terms of the policies")
    voter: str = Field(description="the name of the API token that voted")
    comment: str | None
    left: RevealedSide
    right: RevealedSide
    status: RunStatus = Field(description="of the human judgement: succeeded once every pair is voted")
    completed: int
    total: int


class AgreementOut(BaseModel):
    """How often an automatic judgement's combined verdict equals the human vote on the same pair (same
    prompt_id and the same two responses), over the pairs both labelled A, B or tie
    (klq.judge.stats.rater_agreement); the human votes are turned to the automatic judgement's A/B when its
    A is the human judgement's B."""

    automatic_judgement: int
    human_judgement: int
    judge: dict[str, Any] = Field(description="the automatic judgement's judge")
    voters: list[str] = Field(description="the API token names whose votes are among the pairs")
    n: int = Field(description="pairs with a valid label from both")
    excluded: int = Field(description="shared pairs left out: an invalid automatic verdict")
    agreement: float | None = Field(description="fraction of pairs with the same label")
    agreement_low: float | None = Field(description="95% Wilson score interval")
    agreement_high: float | None
    kappa: float | None = Field(description="Cohen's kappa; None where undefined (one label used by both)")
    kappa_low: float | None = Field(
        description="95% percentile bootstrap over pairs (2000 resamples, seed 0)"
    )
    kappa_high: float | None
    labels: list[str] = Field(description="the order of the confusion matrix's rows and columns")
    confusion: list[list[int]] = Field(
        description="confusion[i][j]: pairs the automatic judge labelled labels[i] and the human labels[j]"
    )
