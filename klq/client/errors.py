"""The errors the client raises: `APIError` (a refused or unanswered request, with the backend's detail
and, for a 422, the field errors), and the failures and timeouts of the waits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx


class APIError(Exception):
    """A request the API refused or could not answer.

    ``status``: the HTTP status (0: no answer at all); ``detail``: the backend's ``detail`` (a string, or
    for 422 the list of problems); ``field_errors``: for 422, ``{"config.train.batch_size": [message,
    ...]}`` (the field is the dotted location without the ``body``/``query`` prefix).
    """

    def __init__(
        self, status: int, detail: Any, *, message: str | None = None, method: str = "", url: str = ""
    ) -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url
        self.field_errors: dict[str, list[str]] = _field_errors(detail) if status == 422 else {}
        self.message = message or _message(status, detail, self.field_errors)
        super().__init__(self.message)

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method else ""
        return f"{self.status or 'no answer'}: {self.message}{where}"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Streamlit caches and processes)
        return (_rebuild_error, (type(self), self.status, self.detail, self.message, self.method, self.url))


class APIConnectionError(APIError):
    """The API could not be reached (connection refused, DNS, timeout)."""


def _rebuild_error(
    cls: type[APIError], status: int, detail: Any, message: str, method: str, url: str
) -> APIError:
    return cls(status, detail, message=message, method=method, url=url)


def _field_errors(detail: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not isinstance(detail, list):
        return out
    for problem in detail:
        if not isinstance(problem, Mapping):
            continue
        field = problem.get("field")
        if not field:
            loc = [str(p) for p in problem.get("loc") or []]
            if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
                loc = loc[1:]
            field = ".".join(loc) or "(request)"
        out.setdefault(str(field), []).append(str(problem.get("msg", "invalid")))
    return out


def _message(status: int, detail: Any, fields: dict[str, list[str]]) -> str:
    if fields:
        return "; ".join(f"{f}: {m}" for f, msgs in fields.items() for m in msgs)
    if isinstance(detail, str):
        return detail
    if detail is None:
        return {
            401: "missing or invalid API token",
            403: "this API token lacks the needed scope",
            404: "not found",
        }.get(status, "request failed")
    return str(detail)


class RunFailedError(RuntimeError):
    """A run ended ``failed``; ``run`` is its final state and ``error`` the reason the worker recorded."""

    def __init__(self, run: Mapping[str, Any]) -> None:
        self.run = dict(run)
        self.error = run.get("error") or "(no reason recorded)"
        super().__init__(f"run {run.get('id')} ({run.get('name')}) failed: {self.error}")


class JudgementFailedError(RuntimeError):
    """A judgement ended ``failed``; ``judgement`` is its final state and ``error`` the reason."""

    def __init__(self, judgement: Mapping[str, Any]) -> None:
        self.judgement = dict(judgement)
        self.error = judgement.get("error") or "(no reason recorded)"
        super().__init__(f"judgement {judgement.get('id')} failed: {self.error}")


class ExperimentFailedError(RuntimeError):
    """An experiment ended ``failed`` (a run or judgement failed or was cancelled); ``experiment`` is its
    final state and ``error`` what the server says failed."""

    def __init__(self, experiment: Mapping[str, Any]) -> None:
        self.experiment = dict(experiment)
        self.error = experiment.get("error") or "(no reason recorded)"
        super().__init__(f"experiment {experiment.get('id')} ({experiment.get('name')}) failed: {self.error}")


class WaitTimeout(TimeoutError):
    """A run, judgement or experiment was not finished in time; ``last`` is the last state seen (None: never read)."""

    def __init__(self, what: str, timeout: float, last: Mapping[str, Any] | None) -> None:
        self.last = dict(last) if last is not None else None
        status = f"; last status {last.get('status')!r}" if last else ""
        super().__init__(f"{what} did not finish within {timeout:g} s{status}")


def _error_of(response: httpx.Response, method: str, path: str) -> APIError:
    """The :class:`APIError` of an answer >= 400: its ``detail``, and its ``message`` but for a 422 (whose
    message is made from the field errors)."""
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:500] or response.reason_phrase}
    detail = body.get("detail") if isinstance(body, dict) else body
    message = body.get("message") if isinstance(body, dict) and response.status_code != 422 else None
    return APIError(response.status_code, detail, message=message, method=method, url=path)
