"""Error responses: 404 unknown ids, 409 wrong state, 422 bad input naming the field, 503 broker or
database down.

A database that cannot be reached (stopped, restarting, unreachable: backend.db.unavailable_reason) is a
503 ``{"detail": "the database is unavailable: ...; retry later"}`` with ``Retry-After``, never a 500; the
connection pool replaces dropped connections by itself once the database is back.

Every 422 has FastAPI's shape (``{"detail": [{"loc", "msg", "type"}]}``) plus, per problem, ``field``
(the dotted location without the "body"/"query" prefix, e.g. ``config.model.policy``) and a top-level
``message`` with one ``field: message`` line per problem. The submitted values are not echoed back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InterfaceError, OperationalError

from .db import unavailable_reason
from .store import Conflict, NotFound

log = logging.getLogger("klq.backend")

# Seconds a client is told to wait after a 503 for an unreachable database: a restart takes a few.
DB_RETRY_AFTER_S = 5

Loc = Sequence[str | int]


class FieldErrors(Exception):
    """Input that passed the schema but is still invalid: [(loc, message)], answered with 422."""

    def __init__(self, problems: Sequence[tuple[Loc, str]], title: str = "invalid input") -> None:
        super().__init__(title)
        self.problems = list(problems)
        self.title = title


class ServiceUnavailable(Exception):
    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


def _field(loc: Loc) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "(request)"


def unprocessable(problems: list[dict[str, Any]], title: str) -> JSONResponse:
    for p in problems:
        p.pop("input", None)
        p.pop("url", None)
        p["field"] = _field(p.get("loc", ()))
        if isinstance(p.get("msg"), str) and p["msg"].startswith("Value error, "):
            p["msg"] = p["msg"][len("Value error, ") :]
    message = title + "\n" + "\n".join(f"{p['field']}: {p['msg']}" for p in problems)
    return JSONResponse(status_code=422, content=jsonable_encoder({"detail": problems, "message": message}))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [dict(e) for e in exc.errors()]
        for p in problems:
            ctx = p.get("ctx")
            if isinstance(ctx, dict):
                p["ctx"] = {
                    k: (v if isinstance(v, int | float | str | bool | None) else str(v))
                    for k, v in ctx.items()
                }
        return unprocessable(problems, "invalid request")

    @app.exception_handler(FieldErrors)
    async def _fields(_request: Request, exc: FieldErrors) -> JSONResponse:
        return unprocessable(
            [{"loc": list(loc), "msg": msg, "type": "value_error"} for loc, msg in exc.problems], exc.title
        )

    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(Conflict)
    async def _conflict(_request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(_request: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc), **exc.extra})

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_unavailable(request: Request, exc: OperationalError | InterfaceError) -> JSONResponse:
        reason = unavailable_reason(exc) or type(exc).__name__
        log.warning("%s %s: the database is unavailable: %s", request.method, request.url.path, reason)
        return JSONResponse(
            status_code=503,
            content={"detail": f"the database is unavailable: {reason}; retry later"},
            headers={"Retry-After": str(DB_RETRY_AFTER_S)},
        )

    # Last lines of defence: a value the database refuses is bad input, not a server error.
    @app.exception_handler(DataError)
    async def _data_error(_request: Request, exc: DataError) -> JSONResponse:
        log.warning("database refused a value: %s", exc.orig)
        return unprocessable(
            [
                {
                    "loc": ["body"],
                    "msg": "a value could not be stored (out of range or invalid)",
                    "type": "value_error",
                }
            ],
            "invalid input",
        )

    @app.exception_handler(UnicodeEncodeError)
    async def _unicode(_request: Request, _exc: UnicodeEncodeError) -> JSONResponse:
        return unprocessable(
            [{"loc": ["body"], "msg": "text must be valid Unicode", "type": "value_error"}], "invalid input"
        )
