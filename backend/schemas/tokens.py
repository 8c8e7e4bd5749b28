"""API tokens and the health check."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from ._common import Scope, _In, _text


class TokenCreate(_In):
    name: Annotated[
        str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True), AfterValidator(_text)
    ]
    scopes: list[Scope] = Field(default_factory=lambda: ["read"], min_length=1, max_length=3)


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


class TokenCreated(TokenOut):
    token: str = Field(description="the token itself: shown once, store it now")


class Health(BaseModel):
    status: Literal["ok", "error"]
    database: str
    revision: str | None
    version: str
