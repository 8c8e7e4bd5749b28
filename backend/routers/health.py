"""Liveness/readiness: the database answers and its schema is current."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from .. import __version__
from ..migrate import current_revision
from ..schemas import Health

router = APIRouter(tags=["health"])
log = logging.getLogger("klq.backend")


@router.get(
    "/health",
    response_model=Health,
    summary="Health check (no token needed)",
    responses={503: {"model": Health}},
)
def health(request: Request) -> Health | JSONResponse:
    db = request.app.state.db
    try:
        with db.session() as session:
            session.execute(text("SELECT 1"))
        revision = current_revision(db.engine)
    except Exception as err:
        log.warning("health check: database unavailable: %s", err)
        body = Health(
            status="error", database=f"unavailable: {type(err).__name__}", revision=None, version=__version__
        )
        return JSONResponse(status_code=503, content=body.model_dump())
    return Health(status="ok", database="ok", revision=revision, version=__version__)
