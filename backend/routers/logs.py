"""Logs: the stdout/stderr of a run's training process, or of a judgement's judge process, as the worker
wrote it to the data directory (see backend/logfiles.py).

``GET .../logs`` answers a JSON page of whole lines: the last ``tail`` lines (default 200), or with
``offset`` everything after that byte offset (at most 1 MiB per page), with the offset to ask for next, so
that a client follows a live log by polling. ``format=text`` streams the log (whole, or from ``offset`` or
the last ``tail`` lines) as ``text/plain`` for download. The file's path comes from the id alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from .. import logfiles, store
from ..deps import AppSettings, CanRead, ReadSession
from ..errors import FieldErrors
from ..models import TERMINAL_STATUSES, Judgement, Run
from ..schemas import LogPage
from ..settings import Settings
from .common import RunId
from .judgements import JudgementPath

router = APIRouter(tags=["logs"])

Tail = Annotated[
    int | None,
    Query(
        ge=0,
        le=logfiles.MAX_TAIL,
        description=f"the last N lines (default 200, at most {logfiles.MAX_TAIL}; 0: none, only the offsets)",
    ),
]
ByteOffset = Annotated[
    int | None,
    Query(
        ge=0,
        le=2**62,
        description="the lines after this byte offset (the `offset` of a previous page); "
        f"at most {logfiles.MAX_PAGE_BYTES >> 20} MiB per page",
    ),
]
Format = Annotated[
    Literal["json", "text"],
    Query(description="json: a page of lines; text: the log itself (text/plain, streamed, as a download)"),
]

_RESPONSES = {
    200: {
        "content": {"text/plain": {}},
        "description": "a page of lines (JSON), or with format=text the log",
    },
    404: {"description": "no such run/judgement, or it has no log (yet) on this server's data directory"},
}


def _missing(what: str, row: Run | Judgement, path: Path, settings: Settings) -> str:
    """Why the log of a run or judgement that exists is not there, in words a user can act on."""
    if row.started_at is None:
        if row.status == "queued":
            return f"{what} has no log yet: it has not started"
        return f"{what} has no log: it never started ({row.status})"
    rel = path.relative_to(settings.data_dir)
    return (
        f"the log of {what} is not on this server's data directory (KLQ_DATA_DIR={settings.data_dir}): "
        f"no {rel}. The worker that ran it writes it there; if this persists, the API and the worker do "
        "not share their data directory"
    )


def _serve(
    what: str,
    row: Run | Judgement,
    path: Path,
    settings: Settings,
    tail: int | None,
    offset: int | None,
    format: str,
    filename: str,
) -> LogPage | StreamingResponse:
    if tail is not None and offset is not None:
        raise FieldErrors([(("query", "offset"), "give either tail or offset, not both")])
    try:
        f = logfiles.open_log(path, settings.data_dir)
    except logfiles.LogUnavailable as err:
        reason = (
            _missing(what, row, path, settings) if err.missing else f"the log of {what} is not served: {err}"
        )
        raise store.NotFound(reason) from err
    if format == "text":
        start = offset or 0
        if tail is not None:
            start, _ = logfiles.tail_start(f, logfiles.size_of(f), tail, max_bytes=None)
        return StreamingResponse(
            logfiles.stream_text(f, start),
            media_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    with f:
        page = logfiles.read_page(f, finished=row.status in TERMINAL_STATUSES, tail=tail, offset=offset)
    return LogPage(
        lines=page.lines, start=page.start, offset=page.offset, size=page.size, truncated=page.truncated
    )


@router.get(
    "/runs/{run_id}/logs",
    response_model=LogPage,
    dependencies=[CanRead],
    responses=_RESPONSES,
    summary="A run's training log (stdout/stderr of its training process): tail, page or download",
)
def run_log(
    run_id: RunId,
    session: ReadSession,
    settings: AppSettings,
    tail: Tail = None,
    offset: ByteOffset = None,
    format: Format = "json",
) -> LogPage | StreamingResponse:
    run = store.require_run(session, run_id)
    path = logfiles.run_log_path(settings.data_dir, run_id)
    return _serve(f"run {run_id}", run, path, settings, tail, offset, format, f"klq-run-{run_id}-train.log")


@router.get(
    "/judgements/{judgement_id}/logs",
    response_model=LogPage,
    dependencies=[CanRead],
    responses=_RESPONSES,
    summary="A judgement's log (stdout/stderr of its judge process): tail, page or download",
)
def judgement_log(
    judgement_id: JudgementPath,
    session: ReadSession,
    settings: AppSettings,
    tail: Tail = None,
    offset: ByteOffset = None,
    format: Format = "json",
) -> LogPage | StreamingResponse:
    j = store.get_judgement(session, judgement_id)
    if j is None:
        raise store.NotFound(f"judgement {judgement_id} not found")
    path = logfiles.judgement_log_path(settings.data_dir, judgement_id)
    return _serve(
        f"judgement {judgement_id}",
        j,
        path,
        settings,
        tail,
        offset,
        format,
        f"klq-judgement-{judgement_id}-judge.log",
    )
