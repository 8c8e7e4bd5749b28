"""FastAPI dependencies: a database session per request, and bearer-token authentication.

Scopes: ``read`` < ``write`` < ``admin`` (each implies the ones before). Every write needs a token with
``write``; token management needs ``admin``; reads need any valid token unless
``KLQ_AUTH_REQUIRED_FOR_READS=false``. A missing or unknown token is 401, a token without the scope 403.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from . import store
from .db import Database, unavailable_reason
from .models import ApiToken, utcnow
from .settings import Settings

log = logging.getLogger("klq.backend")

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="BearerToken",
    description="An API token: `Authorization: Bearer klq_...`. The first admin token is printed at the "
    "first start and written to <data_dir>/api_token.",
)


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def _closed_quietly_on_outage(session: Session) -> Iterator[Session]:
    """The request's session, closed at the end. If the database went away meanwhile (a restart ends every
    connection), closing it, which rolls back on a dead connection, fails too: the request has already had
    its answer (503 from the query that failed first), so that second failure is logged in one line, not
    raised into the ASGI server as an unhandled exception."""
    try:
        yield session
    finally:
        try:
            session.close()
        except SQLAlchemyError as err:
            reason = unavailable_reason(err)
            if reason is None:
                raise
            log.warning("closing a request's database session: the database is unavailable (%s)", reason)


def read_session(request: Request) -> Iterator[Session]:
    yield from _closed_quietly_on_outage(request.app.state.db.session())


def write_session(request: Request) -> Iterator[Session]:
    yield from _closed_quietly_on_outage(request.app.state.db.write_session())


ReadSession = Annotated[Session, Depends(read_session)]
WriteSession = Annotated[Session, Depends(write_session)]
AppSettings = Annotated[Settings, Depends(get_settings_dep)]

_TOUCH_EVERY = timedelta(seconds=60)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _lookup(request: Request, creds: HTTPAuthorizationCredentials | None) -> ApiToken | None:
    if creds is None:
        return None
    db: Database = request.app.state.db
    with db.session() as session:
        token = store.authenticate(session, creds.credentials)
    if token is None:
        raise _unauthorized("invalid or revoked API token")
    if token.last_used_at is None or utcnow() - token.last_used_at > _TOUCH_EVERY:
        try:
            with db.write_session() as session:
                store.touch_token(session, token.id, min_interval=_TOUCH_EVERY)
        except SQLAlchemyError as err:  # best effort: never fail a request over bookkeeping
            log.debug("could not record token use: %s", err)
    return token


def require_read(
    request: Request, creds: HTTPAuthorizationCredentials | None = Security(bearer)
) -> ApiToken | None:
    token = _lookup(request, creds)
    if token is None and request.app.state.settings.auth_required_for_reads:
        raise _unauthorized("an API token is required (Authorization: Bearer ...)")
    return token


def _require_scope(request: Request, creds: HTTPAuthorizationCredentials | None, scope: str) -> ApiToken:
    token = _lookup(request, creds)
    if token is None:
        raise _unauthorized(f"an API token with the '{scope}' scope is required")
    if scope not in token.scope_list:
        raise HTTPException(status_code=403, detail=f"this token lacks the '{scope}' scope")
    return token


def require_write(
    request: Request, creds: HTTPAuthorizationCredentials | None = Security(bearer)
) -> ApiToken:
    return _require_scope(request, creds, "write")


def require_admin(
    request: Request, creds: HTTPAuthorizationCredentials | None = Security(bearer)
) -> ApiToken:
    return _require_scope(request, creds, "admin")


CanRead = Depends(require_read)
CanWrite = Depends(require_write)
CanAdmin = Depends(require_admin)
