"""What the schema modules share: id and step bounds, the checked text types, run statuses and scopes, and
``_In``, the base of request bodies (unknown keys refused)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from ..validation import text_problem

INT32_MAX = 2**31 - 1
STEP_MAX = 2**53 - 1
MAX_PAGE = 1000


def _text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(_text)]
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True), AfterValidator(_text)
]
Notes = Annotated[str, StringConstraints(max_length=20_000), AfterValidator(_text)]
Tag = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, strip_whitespace=True, pattern=r"^[^\x00-\x1f\x7f,]+$"),
    AfterValidator(_text),
]
QueueName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Scope = Literal["read", "write", "admin"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")
