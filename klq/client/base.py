"""The HTTP layer that every resource of `klq.client.Client` shares: the server and token, requests
(errors raised as `APIError`), downloads and polling, and the server's own endpoints (health, schema,
algorithms, the token in use)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from klq.api_types import Algorithm, Health, Token
from klq.client.errors import APIConnectionError, WaitTimeout, _error_of
from klq.paths import data_dir as default_data_dir

DEFAULT_API_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def resolve_token(token: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The API token to use: ``token`` if given, else env ``KLQ_API_TOKEN``, else the file
    ``<data_dir>/api_token`` that the API writes at its first start (``data_dir`` None: ``$KLQ_DATA_DIR``,
    else ``./.klq-data``); None if there is none."""
    if token:
        return token.strip()
    env = os.environ.get("KLQ_API_TOKEN", "").strip()
    if env:
        return env
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    try:
        text = (folder / "api_token").read_text().strip()
    except OSError:
        return None
    return text or None


def _params(**kwargs: Any) -> dict[str, Any]:
    """Query parameters without the unset ones (httpx repeats list values: ``run_id=1&run_id=2``)."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            value = list(value)
            if not value:
                continue
        out[key] = value
    return out


def _opt_list(values: Iterable[Any] | None) -> list[Any] | None:
    if values is None or isinstance(values, (str, bytes)):
        return [values] if isinstance(values, str) and values else None
    out = list(values)
    return out or None


_Self = TypeVar("_Self", bound="ClientBase")


class ClientBase:
    """The connection: `klq.client.Client`'s constructor, requests, downloads and waits; the resources'
    methods are in the mixins that make up `Client`."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        download_timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base = (base_url or os.environ.get("KLQ_API_URL") or DEFAULT_API_URL).strip().rstrip("/")
        if base.endswith("/api/v1"):
            base = base[: -len("/api/v1")]
        self.base_url = base
        self.token = resolve_token(token, data_dir)
        self.timeout = timeout
        self.download_timeout = download_timeout
        headers = {"Accept": "application/json", "User-Agent": "klq-lab-client"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(
            base_url=self.base_url + "/api/v1",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    # housekeeping

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r}, token={'set' if self.token else 'none'})"

    @property
    def identity(self) -> tuple[str, str]:
        """What distinguishes this client's view of the data (server and token): a cache key."""
        return (self.base_url, self.token or "")

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(
                method, path, params=params, json=json, timeout=timeout or httpx.USE_CLIENT_DEFAULT
            )
        except httpx.TimeoutException as err:
            raise APIConnectionError(
                0,
                None,
                message=f"the API at {self.base_url} did not answer in time ({type(err).__name__})",
                method=method,
                url=path,
            ) from err
        except httpx.HTTPError as err:
            raise APIConnectionError(
                0, None, message=f"cannot reach the API at {self.base_url} ({err})", method=method, url=path
            ) from err
        if response.status_code >= 400:
            raise _error_of(response, method, path)
        return response

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=_params(**params)).json()

    def _post(self, path: str, body: Any = None) -> Any:
        return self._request("POST", path, json=body if body is not None else {}).json()

    # health and schema

    def health(self) -> Health:
        return self._get("/health")

    def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document (its RunConfig schema drives the launch form)."""
        return self._get("/openapi.json")

    def algorithms(self) -> list[Algorithm]:
        """The server's registered algorithms (plugins included): name, label, parameter-group schema."""
        return self._get("/algorithms")

    def me(self) -> Token:
        """The token in use: name, scopes."""
        return self._get("/tokens/me")

    # internals

    def _download(self, path: str, **params: Any) -> bytes:
        return self._request("GET", path, params=_params(**params), timeout=self.download_timeout).content

    def _wait(
        self,
        read: Callable[[], Any],
        what: str,
        timeout: float,
        poll_interval: float,
        on_update: Callable[[Any], None] | None,
    ) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = read()
            except APIConnectionError:
                if time.monotonic() >= deadline:
                    raise
            else:
                if on_update is not None:
                    on_update(last)
                if last["status"] in TERMINAL_STATUSES:
                    return last
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(what, timeout, last)
            time.sleep(min(poll_interval, remaining))
