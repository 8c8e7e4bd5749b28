"""KLQ Lab's Python client of its REST API (``/api/v1``), for scripts, notebooks and the dashboard.

:class:`Client` is one HTTP layer (httpx, bearer token, timeouts; it imports nothing of the dashboard, the
server or the worker, so it works against a remote backend) with a method per endpoint, returning the JSON
the API sends (plain dicts and lists, cheap to cache and pickle) typed by :mod:`klq.api_types` (generated
from the API's schema), plus what a script wants on top of it: waiting for a run or a judgement, metrics
as a pandas DataFrame, every sample of a run, and run configs from YAML files::

    from klq.client import Client

    with Client() as klq:                                  # KLQ_API_URL / KLQ_API_TOKEN, or the local data dir
        run = klq.create_run("configs/builtin-klq.yaml", queue="cpu", tags=["sweep"])
        run = klq.wait_for_run(run["id"], timeout=3600)    # RunFailedError carries the run's error
        df = klq.metrics(run["id"], ["objective/scores", "objective/kl"], wide=True)
        samples = klq.samples(run["id"])                   # the latest eval step's samples
        verdict = klq.judge(run["id"], num_prompts=64)     # against the SFT policy; waits for the result
        print(verdict["result"]["win_rate"])
        exp = klq.create_experiment("configs/builtin-klq.yaml",   # KLQ vs PPO, 2 taus x 3 seeds
                                    {"kl_coefs": [0.02, 0.05], "seeds": [1, 2, 3]}, queue="cpu")
        exp = klq.wait_experiment(exp["id"], timeout=6 * 3600)  # runs, then the judgements it queues
        results = klq.experiment_results(exp["id"])            # mean +- 95% CI per tau, win-rates

The server: ``base_url``, else ``$KLQ_API_URL``, else ``http://127.0.0.1:8000``. The token: ``token``,
else ``$KLQ_API_TOKEN``, else the file ``<data_dir>/api_token`` that the API writes at its first start
(``data_dir``: the argument, else ``$KLQ_DATA_DIR``, else ``./.klq-data``).

Every failed request raises :class:`APIError` with the HTTP status and the backend's ``detail``; for a 422
``field_errors`` maps each bad field (dotted, e.g. ``config.train.batch_size``) to its messages. A server
that cannot be reached raises :class:`APIConnectionError` (an ``APIError`` with status 0).
"""

from __future__ import annotations

import io
import numbers
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

from klq.api_types import (
    Algorithm,
    Checkpoint,
    ExperimentCurves,
    ExperimentDetail,
    ExperimentPage,
    ExperimentPreview,
    ExperimentResults,
    Health,
    Judgement,
    JudgementPage,
    LogPage,
    MetricKey,
    RunDetail,
    RunPage,
    RunSummary,
    Sample,
    SampleComparison,
    SamplePage,
    SampleStep,
    SeriesResponse,
    TagCount,
    Token,
    Verdict,
    VerdictPage,
)
from klq.config import apply_overrides
from klq.paths import data_dir as default_data_dir

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_API_URL",
    "TERMINAL_STATUSES",
    "APIConnectionError",
    "APIError",
    "Client",
    "ExperimentFailedError",
    "JudgementFailedError",
    "RunFailedError",
    "WaitTimeout",
    "resolve_token",
]

DEFAULT_API_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


# --- errors ----------------------------------------------------------------------------------------------


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


# --- the client ------------------------------------------------------------------------------------------


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


class Client:
    """KLQ Lab's REST API, one method per endpoint, plus script helpers (waits, DataFrames, config files).

    ``base_url``: the server (``http://host:8000``; a trailing ``/api/v1`` is fine); None: ``$KLQ_API_URL``
    or ``http://127.0.0.1:8000``. ``token``: an API token (``klq_...``); None: :func:`resolve_token` looks
    in ``$KLQ_API_TOKEN`` and then ``<data_dir>/api_token``. ``data_dir``: where to look for that file;
    None: ``$KLQ_DATA_DIR``, else ``./.klq-data``. ``timeout``: seconds per request (downloads get
    ``download_timeout``). Thread-safe (one httpx connection pool); use as a context manager or call
    :meth:`close`.
    """

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

    def __enter__(self) -> Client:
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

    # runs

    def create_run(
        self,
        config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        notes: str = "",
        queue: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> RunDetail:
        """Queue a run. ``config``: a RunConfig as a dict, or the path of a YAML/JSON config file (as
        ``klq train`` reads); ``overrides``: dotted keys applied on top, e.g.
        ``{"kl_coef": 0.1, "train.total_episodes": 640}``. The server validates it (422 names the field)."""
        body: dict[str, Any] = {"config": _base_config(config, overrides), "tags": list(tags), "notes": notes}
        if name:
            body["name"] = name
        if queue:
            body["queue"] = queue
        return self._post("/runs", body)

    def list_runs(
        self,
        *,
        status: Iterable[str] | None = None,
        algorithm: Iterable[str] | None = None,
        tag: Iterable[str] | None = None,
        q: str | None = None,
        order: Literal["newest", "oldest", "name"] = "newest",
        latest: Iterable[str] | None = None,
        experiment_id: int | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> RunPage:
        """One page of runs (newest first by default); ``latest``: metric keys whose latest values to
        include (default: all); ``experiment_id``: only that experiment's runs."""
        return self._get(
            "/runs",
            status=_opt_list(status),
            algorithm=_opt_list(algorithm),
            tag=_opt_list(tag),
            q=q or None,
            order=order,
            latest=_opt_list(latest),
            experiment_id=experiment_id,
            limit=limit,
            offset=offset,
        )

    def iter_runs(self, *, page_size: int = 200, **filters: Any) -> Iterator[RunSummary]:
        """Every run matching the filters, fetched page by page."""
        offset = 0
        while True:
            page = self.list_runs(limit=page_size, offset=offset, **filters)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def get_run(self, run_id: int) -> RunDetail:
        return self._get(f"/runs/{int(run_id)}")

    def wait_for_run(
        self,
        run_id: int,
        *,
        timeout: float = 3600.0,
        poll_interval: float = 2.0,
        raise_on_failure: bool = True,
        on_update: Callable[[RunDetail], None] | None = None,
    ) -> RunDetail:
        """Poll a run until it is succeeded, failed or cancelled, and return its final state.

        Raises :class:`RunFailedError` (with the run's ``error``) if it failed and ``raise_on_failure``;
        a cancelled run is returned as it is. :class:`WaitTimeout` after ``timeout`` seconds (the run goes
        on). ``on_update`` is called with each state read (progress bars, logging). A server that cannot
        be reached for a moment (restarting) is polled again until the timeout."""
        run = self._wait(lambda: self.get_run(run_id), f"run {run_id}", timeout, poll_interval, on_update)
        if run["status"] == "failed" and raise_on_failure:
            raise RunFailedError(run)
        return run

    def wait_for_runs(
        self,
        run_ids: Iterable[int],
        *,
        timeout: float = 3600.0,
        poll_interval: float = 2.0,
        raise_on_failure: bool = True,
    ) -> list[RunDetail]:
        """:meth:`wait_for_run` for several runs under one overall ``timeout``; final states in order."""
        deadline = time.monotonic() + timeout
        return [
            self.wait_for_run(
                r,
                timeout=max(0.0, deadline - time.monotonic()),
                poll_interval=poll_interval,
                raise_on_failure=raise_on_failure,
            )
            for r in run_ids
        ]

    def update_run(
        self,
        run_id: int,
        *,
        name: str | None = None,
        tags: Sequence[str] | None = None,
        notes: str | None = None,
    ) -> RunDetail:
        body = {
            k: v
            for k, v in {"name": name, "tags": None if tags is None else list(tags), "notes": notes}.items()
            if v is not None
        }
        return self._request("PATCH", f"/runs/{int(run_id)}", json=body).json()

    def cancel_run(self, run_id: int) -> RunDetail:
        return self._post(f"/runs/{int(run_id)}/cancel")

    def clone_run(
        self,
        run_id: int,
        overrides: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        tags: Sequence[str] | None = None,
        notes: str | None = None,
        queue: str | None = None,
    ) -> RunDetail:
        """Queue a copy of a run's config with ``overrides`` (dotted keys or nested dicts)."""
        body: dict[str, Any] = {"overrides": dict(overrides or {})}
        for key, value in (
            ("name", name),
            ("tags", None if tags is None else list(tags)),
            ("notes", notes),
            ("queue", queue),
        ):
            if value is not None:
                body[key] = value
        return self._post(f"/runs/{int(run_id)}/clone", body)

    def delete_run(self, run_id: int, *, force: bool = False) -> None:
        self._request("DELETE", f"/runs/{int(run_id)}", params={"force": "true"} if force else None)

    def list_tags(self) -> list[TagCount]:
        return self._get("/tags")

    # metrics

    def metric_keys(self, run_id: int) -> list[MetricKey]:
        return self._get(f"/runs/{int(run_id)}/metrics/keys")

    def series(
        self,
        run_ids: Iterable[int],
        keys: Iterable[str] | None = None,
        *,
        max_points: int = 1000,
        since_step: int | None = None,
        until_step: int | None = None,
        include_wall_time: bool = False,
    ) -> SeriesResponse:
        """Series of several runs and keys, downsampled on the server to ``max_points`` each (MinMaxLTTB).
        ``since_step``: only points after it (a live tail). At most 20 runs per request."""
        return self._get(
            "/metrics/series",
            run_id=[int(r) for r in run_ids],
            key=_opt_list(keys),
            max_points=max_points,
            since_step=since_step,
            until_step=until_step,
            include_wall_time="true" if include_wall_time else None,
        )

    def export_metrics(
        self, run_id: int, *, format: Literal["csv", "json"] = "csv", keys: Iterable[str] | None = None
    ) -> bytes:
        return self._download(f"/runs/{int(run_id)}/metrics/export", format=format, key=_opt_list(keys))

    def metrics(
        self,
        run_ids: int | Iterable[int],
        keys: str | Iterable[str] | None = None,
        *,
        wide: bool = False,
        max_points: int | None = None,
        wall_time: bool = False,
    ) -> pd.DataFrame:
        """Metrics of one run or several as a pandas DataFrame.

        ``keys``: metric keys (``"objective/scores"``, ...); None: all of them. ``max_points``: None
        fetches every point (the run's export, streamed); a number fetches series downsampled on the
        server to about that many points each (fast for long runs; at most 20 runs per call).

        Long form (default): one row per point, columns ``step``, ``key``, ``value`` (+ ``wall_time``
        with ``wall_time=True``), preceded by ``run_id`` when several runs were asked for; sorted by
        run, key and step. ``wide=True``: one row per step (the index), one column per key (for several
        runs, columns ``(run_id, key)``); a step a key was not logged at is NaN.
        """
        import pandas as pd

        single = isinstance(run_ids, numbers.Integral)
        ids = [int(run_ids)] if single else [int(r) for r in run_ids]  # type: ignore[union-attr,arg-type]
        key_list = [keys] if isinstance(keys, str) else (list(keys) if keys is not None else None)
        columns = ["run_id", "step", "key", "value", "wall_time"]
        if max_points is None:
            frames = []
            for run_id in ids:
                raw = self.export_metrics(run_id, format="csv", keys=key_list)
                df = pd.read_csv(
                    io.BytesIO(raw),
                    dtype={"key": str},
                    keep_default_na=False,
                    na_values={"value": [""], "wall_time": [""]},
                )
                frames.append(df)
            df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        else:
            rows: dict[str, list[Any]] = {c: [] for c in columns}
            response = self.series(ids, key_list, max_points=max_points, include_wall_time=wall_time)
            for s in response["series"]:
                n = len(s["steps"])
                rows["run_id"] += [s["run_id"]] * n
                rows["key"] += [s["key"]] * n
                rows["step"] += s["steps"]
                rows["value"] += s["values"]
                rows["wall_time"] += s.get("wall_times") or [None] * n
            df = pd.DataFrame(rows)
        df = df.reindex(columns=columns)
        df["run_id"] = df["run_id"].astype("int64")
        df["step"] = df["step"].astype("int64")
        df["key"] = df["key"].astype(str)
        df["value"] = pd.to_numeric(df["value"], errors="coerce").astype("float64")
        df["wall_time"] = pd.to_numeric(df["wall_time"], errors="coerce").astype("float64")
        df = df.sort_values(["run_id", "key", "step"], kind="stable").reset_index(drop=True)
        if wide:
            if single:
                out = df.pivot_table(
                    index="step", columns="key", values="value", aggfunc="last", dropna=False
                )
            else:
                out = df.pivot_table(
                    index="step", columns=["run_id", "key"], values="value", aggfunc="last", dropna=False
                )
            out = out.sort_index()
            if key_list and single:
                out = out.reindex(columns=[k for k in key_list if k in out.columns])
            return out
        keep = ["step", "key", "value"] + (["wall_time"] if wall_time else [])
        if not single:
            keep.insert(0, "run_id")
        return df[keep]

    # samples

    def list_samples(
        self, run_id: int, *, step: int | None = None, limit: int = 50, offset: int = 0
    ) -> SamplePage:
        return self._get(f"/runs/{int(run_id)}/samples", step=step, limit=limit, offset=offset)

    def sample_steps(self, run_id: int) -> list[SampleStep]:
        return self._get(f"/runs/{int(run_id)}/samples/steps")

    def compare_samples(
        self,
        run_ids: Sequence[int],
        steps: Sequence[int] | int | None = None,
        *,
        mode: Literal["intersection", "union"] = "intersection",
        limit: int = 50,
        offset: int = 0,
    ) -> SampleComparison:
        """Samples of 2-10 runs aligned on prompt id; ``steps``: one for all runs, one per run, or None
        (each run's latest sample step)."""
        step = [steps] if isinstance(steps, int) else _opt_list(steps)
        return self._get(
            "/samples/compare",
            run_id=[int(r) for r in run_ids],
            step=step,
            mode=mode,
            limit=limit,
            offset=offset,
        )

    def export_samples(
        self, run_id: int, *, format: Literal["jsonl", "csv"] = "jsonl", step: int | None = None
    ) -> bytes:
        return self._download(f"/runs/{int(run_id)}/samples/export", format=format, step=step)

    def iter_samples(self, run_id: int, *, step: int | None = None, page_size: int = 500) -> Iterator[Sample]:
        """Every sample of a run (``step``: only that eval step), fetched page by page."""
        offset = 0
        while True:
            page = self.list_samples(run_id, step=step, limit=page_size, offset=offset)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def samples(
        self, run_id: int, step: int | Literal["latest", "all"] = "latest", *, as_frame: bool = False
    ) -> list[Sample] | pd.DataFrame:
        """A run's held-out samples (prompt, response, reward-model score, gold score, KL): those of
        ``step`` (an eval step), of the latest eval step (default; [] before the first), or ``"all"``.
        ``as_frame=True``: a DataFrame with one row per sample."""
        if step == "latest":
            steps = self.sample_steps(run_id)
            items: list[Sample] = (
                list(self.iter_samples(run_id, step=max(s["step"] for s in steps))) if steps else []
            )
        elif step == "all":
            items = list(self.iter_samples(run_id))
        else:
            items = list(self.iter_samples(run_id, step=int(step)))
        if not as_frame:
            return items
        import pandas as pd

        cols = [
            "id",
            "run_id",
            "step",
            "prompt_id",
            "prompt",
            "response",
            "score",
            "gold_score",
            "kl",
            "extra",
        ]
        return pd.DataFrame(items, columns=cols)

    # checkpoints

    def list_checkpoints(self, run_id: int) -> list[Checkpoint]:
        return self._get(f"/runs/{int(run_id)}/checkpoints")

    def download_checkpoint(self, run_id: int, checkpoint_id: int | Literal["final"] = "final") -> bytes:
        """The checkpoint's policy as a zip (Hugging Face layout, one top folder)."""
        part = "final" if checkpoint_id == "final" else str(int(checkpoint_id))
        return self._download(f"/runs/{int(run_id)}/checkpoints/{part}/download")

    def download_checkpoint_to(
        self, run_id: int, dest: str | os.PathLike, checkpoint_id: int | Literal["final"] = "final"
    ) -> Path:
        """Stream the checkpoint's zip into the file ``dest`` (for large policies)."""
        part = "final" if checkpoint_id == "final" else str(int(checkpoint_id))
        url = f"/runs/{int(run_id)}/checkpoints/{part}/download"
        path = Path(dest)
        try:
            with self._http.stream("GET", url, timeout=self.download_timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_of(response, "GET", url)
                with path.open("wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
        except httpx.HTTPError as err:
            raise APIConnectionError(
                0, None, message=f"download from {self.base_url} failed ({err})"
            ) from err
        return path

    # logs (the stdout/stderr of a run's training process or a judgement's judge process)

    def run_log(self, run_id: int, *, tail: int | None = None, offset: int | None = None) -> LogPage:
        """A page of the run's training log: its last ``tail`` lines (default 200, at most 5000), or with
        ``offset`` (a previous page's ``offset``) the lines written since, at most 1 MiB (``truncated``:
        more follows at once). Only whole lines: an unfinished last line comes once it is whole (or the run
        has ended). To follow a live run, ask with the last page's ``offset``. 404 (APIError) while the run
        has no log, saying why."""
        return self._get(f"/runs/{int(run_id)}/logs", tail=tail, offset=offset)

    def judgement_log(
        self, judgement_id: int, *, tail: int | None = None, offset: int | None = None
    ) -> LogPage:
        """A page of the judgement's log (see :meth:`run_log`)."""
        return self._get(f"/judgements/{int(judgement_id)}/logs", tail=tail, offset=offset)

    def download_run_log(self, run_id: int) -> bytes:
        """The run's whole training log (UTF-8 text; invalid bytes replaced)."""
        return self._download(f"/runs/{int(run_id)}/logs", format="text")

    def download_judgement_log(self, judgement_id: int) -> bytes:
        """The judgement's whole log (UTF-8 text; invalid bytes replaced)."""
        return self._download(f"/judgements/{int(judgement_id)}/logs", format="text")

    def _download(self, path: str, **params: Any) -> bytes:
        return self._request("GET", path, params=_params(**params), timeout=self.download_timeout).content

    # judgements

    def create_judgement(
        self,
        run_a: int,
        run_b: int | None = None,
        *,
        step_a: int | None = None,
        step_b: int | None = None,
        num_prompts: int = 64,
        judge: Mapping[str, Any] | None = None,
        seed: int = 0,
        queue: str | None = None,
    ) -> Judgement:
        """Queue a pairwise judgement of run A's policy against run B's (None: A's reference/SFT policy).
        ``judge``: e.g. ``{"backend": "gold"}`` or ``{"backend": "openai", "model": "gpt-4o-mini"}``."""
        body: dict[str, Any] = {
            "run_a": int(run_a),
            "num_prompts": int(num_prompts),
            "seed": int(seed),
            "judge": dict(judge or {"backend": "gold"}),
        }
        for key, value in (("run_b", run_b), ("step_a", step_a), ("step_b", step_b), ("queue", queue)):
            if value is not None:
                body[key] = value
        return self._post("/judgements", body)

    def list_judgements(
        self,
        *,
        run_id: int | None = None,
        status: Iterable[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> JudgementPage:
        return self._get("/judgements", run_id=run_id, status=_opt_list(status), limit=limit, offset=offset)

    def get_judgement(
        self, judgement_id: int, *, include_verdicts: bool = True, limit: int = 100, offset: int = 0
    ) -> Judgement:
        return self._get(
            f"/judgements/{int(judgement_id)}",
            include_verdicts="true" if include_verdicts else "false",
            limit=limit,
            offset=offset,
        )

    def wait_for_judgement(
        self,
        judgement_id: int,
        *,
        timeout: float = 3600.0,
        poll_interval: float = 2.0,
        raise_on_failure: bool = True,
        include_verdicts: bool = False,
    ) -> Judgement:
        """Poll a judgement until it is finished and return it (``result``: win-rate with its Wilson
        interval). :class:`JudgementFailedError` if it failed; :class:`WaitTimeout` after ``timeout``."""
        judgement = self._wait(
            lambda: self.get_judgement(judgement_id, include_verdicts=False),
            f"judgement {judgement_id}",
            timeout,
            poll_interval,
            None,
        )
        if judgement["status"] == "failed" and raise_on_failure:
            raise JudgementFailedError(judgement)
        if include_verdicts:
            judgement = self.get_judgement(judgement_id, include_verdicts=True, limit=1000)
        return judgement

    def judge(
        self,
        run_a: int,
        run_b: int | None = None,
        *,
        step_a: int | None = None,
        step_b: int | None = None,
        num_prompts: int = 64,
        judge: Mapping[str, Any] | None = None,
        seed: int = 0,
        queue: str | None = None,
        wait: bool = True,
        timeout: float = 3600.0,
        poll_interval: float = 2.0,
    ) -> Judgement:
        """Start a pairwise judgement of run A's policy against run B's (None: A's SFT/reference policy)
        and, with ``wait`` (default), wait for its result. ``judge``: the judge spec, default the task's
        gold reward ``{"backend": "gold"}``; e.g. ``{"backend": "openai", "model": "gpt-4o-mini"}``."""
        created = self.create_judgement(
            run_a,
            run_b,
            step_a=step_a,
            step_b=step_b,
            num_prompts=num_prompts,
            judge=judge,
            seed=seed,
            queue=queue,
        )
        if not wait:
            return created
        return self.wait_for_judgement(created["id"], timeout=timeout, poll_interval=poll_interval)

    def list_verdicts(self, judgement_id: int, *, limit: int = 100, offset: int = 0) -> VerdictPage:
        return self._get(f"/judgements/{int(judgement_id)}/verdicts", limit=limit, offset=offset)

    def iter_verdicts(self, judgement_id: int, *, page_size: int = 500) -> Iterator[Verdict]:
        offset = 0
        while True:
            page = self.list_verdicts(judgement_id, limit=page_size, offset=offset)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def cancel_judgement(self, judgement_id: int) -> Judgement:
        return self._post(f"/judgements/{int(judgement_id)}/cancel")

    def delete_judgement(self, judgement_id: int, *, force: bool = False) -> None:
        self._request(
            "DELETE", f"/judgements/{int(judgement_id)}", params={"force": "true"} if force else None
        )

    # experiments (docs/EXPERIMENTS.md)

    def create_experiment(
        self,
        base: Mapping[str, Any] | str | os.PathLike[str],
        grid: Mapping[str, Any],
        *,
        name: str | None = None,
        judge: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        notes: str = "",
        queue: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> ExperimentDetail:
        """Queue an experiment (docs/EXPERIMENTS.md): every run of ``grid`` (``{"algorithms": ["klq",
        "ppo"], "kl_coefs": [0.02, 0.05], "seeds": [1, 2]}``) on the run configuration ``base`` (its
        algorithm, kl_coef and seed are the grid's), as a dict or the path of a YAML/JSON config file;
        ``overrides``: dotted keys applied on top of it (as :meth:`create_run`); ``judge``: a judge spec
        plus ``num_prompts`` and ``enabled`` (default: the gold judge on 32 held-out prompts). The
        judgements are queued by the server once the runs finish."""
        body = _experiment_body(_base_config(base, overrides), grid, name, judge, tags, notes, queue)
        return self._post("/experiments", body)

    def preview_experiment(
        self,
        base: Mapping[str, Any] | str | os.PathLike[str],
        grid: Mapping[str, Any],
        *,
        name: str | None = None,
        judge: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        notes: str = "",
        queue: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> ExperimentPreview:
        """The runs :meth:`create_experiment` would queue with these arguments (names, grid values and
        resolved configs) and how many judgements would follow; nothing is created. A 422 names the bad
        field as :meth:`create_experiment` would."""
        body = _experiment_body(_base_config(base, overrides), grid, name, judge, tags, notes, queue)
        return self._post("/experiments/preview", body)

    def list_experiments(self, *, limit: int = 50, offset: int = 0) -> ExperimentPage:
        """One page of experiments, newest first."""
        return self._get("/experiments", limit=limit, offset=offset)

    def get_experiment(self, experiment_id: int) -> ExperimentDetail:
        """Status, grid, progress, compute, runs and judgements of an experiment."""
        return self._get(f"/experiments/{int(experiment_id)}")

    def wait_experiment(
        self,
        experiment_id: int,
        *,
        timeout: float = 24 * 3600.0,
        poll_interval: float = 10.0,
        raise_on_failure: bool = False,
        on_update: Callable[[ExperimentDetail], None] | None = None,
    ) -> ExperimentDetail:
        """Poll an experiment until it is succeeded, failed or cancelled (its runs and then the judgements
        it queues), and return its final state; :meth:`experiment_results` has its results then.

        ``raise_on_failure`` is off by default, unlike :meth:`wait_for_run`: a ``failed`` experiment (one
        seed out of many failed, say) still has results, every failed run listed with its error. With it,
        :class:`ExperimentFailedError`. :class:`WaitTimeout` after ``timeout`` seconds (the experiment goes
        on); ``on_update`` is called with each state read."""
        experiment = self._wait(
            lambda: self.get_experiment(experiment_id),
            f"experiment {experiment_id}",
            timeout,
            poll_interval,
            on_update,
        )
        if experiment["status"] == "failed" and raise_on_failure:
            raise ExperimentFailedError(experiment)
        return experiment

    def experiment_results(self, experiment_id: int) -> ExperimentResults:
        """Results per (tau, algorithm) with 95% CIs over seeds, pooled win-rates, every run's reward-vs-KL
        point and the Pareto frontier per algorithm, and compute (computed from the stored runs now)."""
        return self._get(f"/experiments/{int(experiment_id)}/results")

    def experiment_curves(
        self, experiment_id: int, key: str = "objective/scores", *, max_points: int = 500
    ) -> ExperimentCurves:
        """Per (algorithm, tau): the mean of ``key`` over seeds at each step with its min-max band,
        downsampled on the server to about ``max_points``."""
        return self._get(f"/experiments/{int(experiment_id)}/curves", key=key, max_points=max_points)

    def experiment_results_csv(self, experiment_id: int) -> bytes:
        """The results as CSV, one line per (tau, algorithm)."""
        return self._download(f"/experiments/{int(experiment_id)}/results.csv")

    def cancel_experiment(self, experiment_id: int) -> ExperimentDetail:
        """Cancel the experiment's unfinished runs and judgements; no judging starts afterwards."""
        return self._post(f"/experiments/{int(experiment_id)}/cancel")

    def delete_experiment(self, experiment_id: int, *, force: bool = False) -> None:
        """Delete an experiment with its runs and judgements (409 while it is active, unless ``force``)."""
        self._request(
            "DELETE", f"/experiments/{int(experiment_id)}", params={"force": "true"} if force else None
        )

    # internals

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


def _opt_list(values: Iterable[Any] | None) -> list[Any] | None:
    if values is None or isinstance(values, (str, bytes)):
        return [values] if isinstance(values, str) and values else None
    out = list(values)
    return out or None


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


def _experiment_body(
    base: Mapping[str, Any],
    grid: Mapping[str, Any],
    name: str | None,
    judge: Mapping[str, Any] | None,
    tags: Sequence[str],
    notes: str,
    queue: str | None,
) -> dict[str, Any]:
    """The body of POST /experiments (and its preview); unset optional fields are left to the server."""
    body: dict[str, Any] = {"base": dict(base), "grid": dict(grid), "tags": list(tags), "notes": notes}
    for key, value in (("name", name), ("judge", None if judge is None else dict(judge)), ("queue", queue)):
        if value:
            body[key] = value
    return body


def _load_config_file(path: Path) -> dict[str, Any]:
    import json

    import yaml

    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a run config must be a mapping, got {type(data).__name__}")
    return data


def _base_config(
    config: Mapping[str, Any] | str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A run configuration from a dict or a YAML/JSON file, with dotted ``overrides`` applied."""
    if isinstance(config, (str, os.PathLike)):
        config = _load_config_file(Path(config))
    return apply_overrides(config or {}, overrides)
