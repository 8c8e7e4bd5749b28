"""A small typed client of KLQ Lab's REST API (``/api/v1``), used by every page of the dashboard.

It talks HTTP only (httpx, bearer token, timeouts), so the dashboard works against a remote backend, and
it imports nothing from Streamlit, so that scripts can use it too (``klq.client`` re-exports it)::

    from frontend.client import Client, APIError

    with Client("http://127.0.0.1:8000", token="klq_...") as api:
        run = api.create_run({"algorithm": "klq", "kl_coef": 0.05}, queue="cpu")
        page = api.list_runs(status=["running"], limit=20)
        series = api.series([run["id"]], keys=["objective/scores"], max_points=500)

Every failed request raises :class:`APIError` with the HTTP status and the backend's ``detail``; for a 422
``field_errors`` maps each bad field (dotted, e.g. ``config.train.batch_size``) to its messages. A server
that cannot be reached raises :class:`APIConnectionError` (an ``APIError`` with status 0).

Responses are returned as the JSON the API sends (plain dicts and lists, cheap to cache and pickle); the
``TypedDict`` classes below describe their shapes for type checkers and readers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import httpx

__all__ = [
    "DEFAULT_API_URL",
    "APIConnectionError",
    "APIError",
    "Client",
    "resolve_token",
]

DEFAULT_API_URL = "http://127.0.0.1:8000"
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


# --- response shapes (see the OpenAPI document at /api/v1/openapi.json) ----------------------------------


class LatestValue(TypedDict):
    step: int
    value: float | None


class RunSummary(TypedDict):
    id: int
    name: str
    algorithm: str
    status: RunStatus
    queue: str
    tags: list[str]
    notes: str
    error: str | None
    parent_id: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    iteration: int
    total_iterations: int | None
    episodes: int
    progress: float | None
    heartbeat_at: str | None
    worker_host: str | None
    worker_gpu: str | None
    cancel_requested: bool
    experiment_id: int | None
    latest: dict[str, LatestValue]


class RunDetail(RunSummary):
    config: dict[str, Any]
    attempts: int
    updated_at: str


class RunPage(TypedDict):
    items: list[RunSummary]
    total: int
    limit: int
    offset: int


class TagCount(TypedDict):
    tag: str
    runs: int


class MetricKey(TypedDict):
    key: str
    last_step: int
    last_value: float | None
    wall_time: float | None


class Series(TypedDict):
    run_id: int
    key: str
    steps: list[int]
    values: list[float | None]
    wall_times: list[float | None] | None
    total_points: int
    downsampled: bool
    last_step: int | None


class SeriesResponse(TypedDict):
    max_points: int
    series: list[Series]


class Sample(TypedDict):
    id: int
    run_id: int
    step: int
    prompt_id: str
    prompt: str
    response: str
    score: float | None
    gold_score: float | None
    kl: float | None
    extra: dict[str, Any] | None


class SamplePage(TypedDict):
    items: list[Sample]
    total: int
    limit: int
    offset: int


class SampleStep(TypedDict):
    step: int
    count: int


class ComparedRun(TypedDict):
    run_id: int
    step: int | None


class ComparedPrompt(TypedDict):
    prompt_id: str
    prompt: str
    samples: list[Sample | None]


class SampleComparison(TypedDict):
    runs: list[ComparedRun]
    items: list[ComparedPrompt]
    total: int
    limit: int
    offset: int


class Checkpoint(TypedDict):
    id: int
    run_id: int
    step: int
    path: str
    is_final: bool
    created_at: str


class LogPage(TypedDict):
    lines: list[str]
    start: int
    offset: int
    size: int
    truncated: bool


class WinRate(TypedDict):
    wins_a: int
    wins_b: int
    ties: int
    invalid: int
    win_rate: float | None
    ci_low: float | None
    ci_high: float | None
    position_consistency: float | None


class Verdict(TypedDict):
    id: int
    prompt_id: str
    prompt: str
    response_a: str
    response_b: str
    order: Literal["ab", "ba"]
    verdict: Literal["A", "B", "tie", "invalid"]
    raw_output: str | None


class Judgement(TypedDict, total=False):
    id: int
    status: RunStatus
    queue: str
    run_a: int
    step_a: int | None
    run_b: int | None
    step_b: int | None
    num_prompts: int
    seed: int
    judge: dict[str, Any]
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    cancel_requested: bool
    completed: int
    total: int
    result: WinRate
    verdicts: list[Verdict] | None
    verdicts_total: int | None


class JudgementPage(TypedDict):
    items: list[Judgement]
    total: int
    limit: int
    offset: int


class VerdictPage(TypedDict):
    items: list[Verdict]
    total: int
    limit: int
    offset: int


# experiments (docs/EXPERIMENTS.md)

ExperimentStatus = Literal["queued", "running", "judging", "succeeded", "failed", "cancelled"]
# "vs_sft", or "klq_vs_<algorithm>" (klq_vs_ppo, ...): KLQ's run against that algorithm's; ``vs`` names it
JudgementKind = str


class Algorithm(TypedDict):
    name: str
    label: str
    description: str
    params: dict[str, Any] | None  # JSON schema of its config section ``<name>:``; None: it has none


class ExperimentGrid(TypedDict):
    algorithms: list[str]
    kl_coefs: list[float]
    seeds: list[int]


class PlannedRun(TypedDict):
    name: str
    algorithm: str
    kl_coef: float
    seed: int
    config: dict[str, Any]


class ExperimentPreview(TypedDict):
    runs: list[PlannedRun]
    judgements: int


class ExperimentRun(TypedDict):
    run_id: int
    name: str
    algorithm: str
    kl_coef: float
    seed: int
    status: RunStatus
    iteration: int
    total_iterations: int | None
    error: str | None
    started_at: str | None
    finished_at: str | None


class ExperimentJudgement(TypedDict):
    judgement_id: int
    kind: JudgementKind
    kl_coef: float
    seed: int
    algorithm: str | None
    vs: str | None
    run_a: int
    run_b: int | None
    status: RunStatus
    completed: int
    total: int
    error: str | None


class ExperimentProgress(TypedDict):
    runs_total: int
    runs_finished: int
    runs_failed: int
    judgements_total: int
    judgements_finished: int
    judgements_failed: int


class ExperimentCompute(TypedDict):
    run_hours: float
    gpu_hours: float
    wall_clock_s: float | None


class ExperimentSummary(TypedDict):
    id: int
    name: str
    status: ExperimentStatus
    error: str | None
    grid: ExperimentGrid
    tags: list[str]
    notes: str
    queue: str
    created_at: str
    judging_started_at: str | None
    cancel_requested: bool
    progress: ExperimentProgress
    compute: ExperimentCompute


class ExperimentDetail(ExperimentSummary):
    base: dict[str, Any]
    judge: dict[str, Any]
    runs: list[ExperimentRun]
    judgements: list[ExperimentJudgement]


class ExperimentPage(TypedDict):
    items: list[ExperimentSummary]
    total: int
    limit: int
    offset: int


class Interval(TypedDict):
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    values: list[float | None]


class FailedRun(TypedDict):
    run_id: int
    seed: int
    status: RunStatus
    error: str | None


class ResultRow(TypedDict):
    kl_coef: float
    algorithm: str
    runs: int
    succeeded: int
    failed: list[FailedRun]
    pending: int
    reward: Interval
    kl: Interval
    rlhf_reward: Interval
    gold: Interval | None
    wall_clock_s: Interval
    iteration_s: Interval


class PooledWinRate(TypedDict):
    kind: JudgementKind
    kl_coef: float
    algorithm: str | None
    vs: str | None
    judgements: list[int]
    pending: int
    prompts: int
    wins: int
    losses: int
    ties: int
    invalid: int
    win_rate: float | None
    ci_low: float | None
    ci_high: float | None


class NotJudged(TypedDict):
    kind: JudgementKind
    kl_coef: float
    seed: int
    algorithm: str | None
    vs: str | None
    reason: str


class RunPoint(TypedDict):
    run_id: int
    algorithm: str
    kl_coef: float
    seed: int
    status: RunStatus
    kl: float | None
    reward: float | None
    rlhf_reward: float | None


class ExperimentResults(TypedDict):
    experiment_id: int
    status: ExperimentStatus
    rows: list[ResultRow]
    win_rates: list[PooledWinRate]
    not_judged: list[NotJudged]
    points: list[RunPoint]
    frontier: dict[str, list[int]]
    compute: ExperimentCompute


class CurveBand(TypedDict):
    algorithm: str
    kl_coef: float
    runs: list[int]
    steps: list[int]
    mean: list[float | None]
    low: list[float | None]
    high: list[float | None]
    seeds_at_step: list[int]


class ExperimentCurves(TypedDict):
    key: str
    max_points: int
    curves: list[CurveBand]


class Health(TypedDict):
    status: str
    database: str
    revision: str | None
    version: str


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


# --- the client ------------------------------------------------------------------------------------------


def resolve_token(token: str | None = None, data_dir: str | os.PathLike | None = None) -> str | None:
    """The API token to use: ``token`` if given, else env ``KLQ_API_TOKEN``, else the file
    ``<KLQ_DATA_DIR>/api_token`` that the API writes at its first start (None if there is none)."""
    if token:
        return token.strip()
    env = os.environ.get("KLQ_API_TOKEN", "").strip()
    if env:
        return env
    folder = Path(data_dir or os.environ.get("KLQ_DATA_DIR") or ".klq-data")
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
    """KLQ Lab's REST API. ``base_url``: the server (``http://host:8000``; a trailing ``/api/v1`` is fine).

    ``token``: an API token (``klq_...``); None: :func:`resolve_token` looks in the environment and the
    data directory. ``timeout``: seconds per request (downloads get ``download_timeout``).
    Thread-safe (one httpx connection pool); use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        download_timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base = (base_url or os.environ.get("KLQ_API_URL") or DEFAULT_API_URL).strip().rstrip("/")
        if base.endswith("/api/v1"):
            base = base[: -len("/api/v1")]
        self.base_url = base
        self.token = resolve_token(token)
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
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text[:500] or response.reason_phrase}
            detail = body.get("detail") if isinstance(body, dict) else body
            message = body.get("message") if isinstance(body, dict) and response.status_code != 422 else None
            raise APIError(response.status_code, detail, message=message, method=method, url=path)
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

    def me(self) -> dict[str, Any]:
        """The token in use: name, scopes."""
        return self._get("/tokens/me")

    # runs

    def create_run(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        notes: str = "",
        queue: str | None = None,
    ) -> RunDetail:
        body: dict[str, Any] = {"config": dict(config or {}), "tags": list(tags), "notes": notes}
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
        path = Path(dest)
        try:
            with self._http.stream(
                "GET", f"/runs/{int(run_id)}/checkpoints/{part}/download", timeout=self.download_timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_of(response)
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
        base: Mapping[str, Any],
        grid: Mapping[str, Any],
        *,
        name: str | None = None,
        judge: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        notes: str = "",
        queue: str | None = None,
    ) -> ExperimentDetail:
        """Queue an experiment: every run of ``grid`` (``{"algorithms": ["klq", "ppo"], "kl_coefs":
        [0.02, 0.05], "seeds": [1, 2]}``) on the run configuration ``base`` (its algorithm, kl_coef and seed
        are the grid's); ``judge``: a judge spec plus ``num_prompts`` and ``enabled`` (default: the gold
        judge on 32 held-out prompts). The judgements are queued by the server once the runs finish."""
        return self._post("/experiments", _experiment_body(base, grid, name, judge, tags, notes, queue))

    def preview_experiment(
        self,
        base: Mapping[str, Any],
        grid: Mapping[str, Any],
        *,
        name: str | None = None,
        judge: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        notes: str = "",
        queue: str | None = None,
    ) -> ExperimentPreview:
        """The runs :meth:`create_experiment` would queue with these arguments (names, grid values and
        resolved configs) and how many judgements would follow; nothing is created. A 422 names the bad
        field as :meth:`create_experiment` would."""
        return self._post(
            "/experiments/preview", _experiment_body(base, grid, name, judge, tags, notes, queue)
        )

    def list_experiments(self, *, limit: int = 50, offset: int = 0) -> ExperimentPage:
        """One page of experiments, newest first."""
        return self._get("/experiments", limit=limit, offset=offset)

    def get_experiment(self, experiment_id: int) -> ExperimentDetail:
        """Status, grid, progress, compute, runs and judgements of an experiment."""
        return self._get(f"/experiments/{int(experiment_id)}")

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


def _opt_list(values: Iterable[Any] | None) -> list[Any] | None:
    if values is None or isinstance(values, (str, bytes)):
        return [values] if isinstance(values, str) and values else None
    out = list(values)
    return out or None


def _error_of(response: httpx.Response) -> APIError:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:500]}
    detail = body.get("detail") if isinstance(body, dict) else body
    return APIError(
        response.status_code, detail, method=response.request.method, url=str(response.request.url)
    )


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
