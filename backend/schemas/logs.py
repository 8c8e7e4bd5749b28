"""Pages of a run's or a judgement's log."""

from __future__ import annotations

from pydantic import BaseModel, Field


class LogPage(BaseModel):
    lines: list[str] = Field(description="whole lines of the log, decoded as UTF-8 (invalid bytes replaced)")
    start: int = Field(description="byte offset of the first line returned")
    offset: int = Field(
        description="byte offset after the last line returned: pass it as ?offset= to get what follows"
    )
    size: int = Field(description="size of the log file in bytes when it was read")
    truncated: bool = Field(
        description="the page was cut at the byte cap: fewer lines than asked for, or (offset) more "
        "follows at once"
    )
