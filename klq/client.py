"""KLQ Lab's Python client for scripts and notebooks.

:class:`Client` is the dashboard's REST client (:mod:`frontend.client`: one HTTP layer, typed responses,
:class:`APIError` with the backend's ``detail``) plus what a script wants on top of it: waiting for a run
or a judgement, metrics as a pandas DataFrame, every sample of a run, and run configs from YAML files::

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

from frontend.client import (
    DEFAULT_API_URL,
    TERMINAL_STATUSES,
    APIConnectionError,
    APIError,
    ExperimentDetail,
    ExperimentPreview,
    Judgement,
    RunDetail,
    Sample,
    resolve_token,
)
from frontend.client import Client as _RestClient

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
]


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


class Client(_RestClient):
    """The REST API of KLQ Lab (every method of :class:`frontend.client.Client`) plus script helpers.

    ``base_url``: the server (``http://host:8000``); None: ``$KLQ_API_URL`` or ``http://127.0.0.1:8000``.
    ``token``: an API token; None: ``$KLQ_API_TOKEN``, else ``<data_dir>/api_token``.
    ``data_dir``: where to look for that file; None: ``$KLQ_DATA_DIR``, else ``./.klq-data``.
    ``timeout``: seconds per request. Use as a context manager, or call :meth:`close`.
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
        from klq.paths import data_dir as default_data_dir

        resolved = resolve_token(token, Path(data_dir) if data_dir is not None else default_data_dir())
        super().__init__(base_url, resolved, timeout=timeout, download_timeout=download_timeout,
                         transport=transport)
        if resolved is None and self.token is not None:
            # frontend.client.Client resolves a missing token again from ITS default data dir
            # ($KLQ_DATA_DIR), not from ``data_dir``: no token was found where this client looked.
            self.token = None
            self._http.headers.pop("Authorization", None)

    # ------------------------------------------------------------------------------------------- runs

    def create_run(  # type: ignore[override]  # also accepts a YAML/JSON file
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
        return super().create_run(_base_config(config, overrides), name=name, tags=tags, notes=notes, queue=queue)

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

    def wait_for_runs(self, run_ids: Iterable[int], *, timeout: float = 3600.0, poll_interval: float = 2.0,
                      raise_on_failure: bool = True) -> list[RunDetail]:
        """:meth:`wait_for_run` for several runs under one overall ``timeout``; final states in order."""
        deadline = time.monotonic() + timeout
        return [self.wait_for_run(r, timeout=max(0.0, deadline - time.monotonic()), poll_interval=poll_interval,
                                  raise_on_failure=raise_on_failure) for r in run_ids]

    # ---------------------------------------------------------------------------------------- metrics

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
                df = pd.read_csv(io.BytesIO(raw), dtype={"key": str}, keep_default_na=False,
                                 na_values={"value": [""], "wall_time": [""]})
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
                out = df.pivot_table(index="step", columns="key", values="value", aggfunc="last", dropna=False)
            else:
                out = df.pivot_table(index="step", columns=["run_id", "key"], values="value", aggfunc="last",
                                     dropna=False)
            out = out.sort_index()
            if key_list and single:
                out = out.reindex(columns=[k for k in key_list if k in out.columns])
            return out
        keep = ["step", "key", "value"] + (["wall_time"] if wall_time else [])
        if not single:
            keep.insert(0, "run_id")
        return df[keep]

    # ---------------------------------------------------------------------------------------- samples

    def iter_samples(self, run_id: int, *, step: int | None = None, page_size: int = 500) -> Iterator[Sample]:
        """Every sample of a run (``step``: only that eval step), fetched page by page."""
        offset = 0
        while True:
            page = self.list_samples(run_id, step=step, limit=page_size, offset=offset)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def samples(self, run_id: int, step: int | Literal["latest", "all"] = "latest", *,
                as_frame: bool = False) -> list[Sample] | pd.DataFrame:
        """A run's held-out samples (prompt, response, reward-model score, gold score, KL): those of
        ``step`` (an eval step), of the latest eval step (default; [] before the first), or ``"all"``.
        ``as_frame=True``: a DataFrame with one row per sample."""
        if step == "latest":
            steps = self.sample_steps(run_id)
            items: list[Sample] = (list(self.iter_samples(run_id, step=max(s["step"] for s in steps)))
                                   if steps else [])
        elif step == "all":
            items = list(self.iter_samples(run_id))
        else:
            items = list(self.iter_samples(run_id, step=int(step)))
        if not as_frame:
            return items
        import pandas as pd

        cols = ["id", "run_id", "step", "prompt_id", "prompt", "response", "score", "gold_score", "kl", "extra"]
        return pd.DataFrame(items, columns=cols)

    # ------------------------------------------------------------------------------------- judgements

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
        judgement = self._wait(lambda: self.get_judgement(judgement_id, include_verdicts=False),
                               f"judgement {judgement_id}", timeout, poll_interval, None)
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
        created = self.create_judgement(run_a, run_b, step_a=step_a, step_b=step_b, num_prompts=num_prompts,
                                        judge=judge, seed=seed, queue=queue)
        if not wait:
            return created
        return self.wait_for_judgement(created["id"], timeout=timeout, poll_interval=poll_interval)

    # ------------------------------------------------------------------------------------ experiments

    def create_experiment(  # type: ignore[override]  # also accepts a YAML/JSON file as the base
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
        """Queue an experiment (docs/EXPERIMENTS.md). ``base``: the run configuration every run shares,
        as a dict or the path of a YAML/JSON config file; ``overrides``: dotted keys applied on top (as
        :meth:`create_run`); ``grid``: ``{"algorithms": [...], "kl_coefs": [...], "seeds": [...]}``."""
        return super().create_experiment(_base_config(base, overrides), grid, name=name, judge=judge,
                                         tags=tags, notes=notes, queue=queue)

    def preview_experiment(  # type: ignore[override]  # also accepts a YAML/JSON file as the base
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
        """The runs :meth:`create_experiment` would queue with these arguments; nothing is created."""
        return super().preview_experiment(_base_config(base, overrides), grid, name=name, judge=judge,
                                          tags=tags, notes=notes, queue=queue)

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
        experiment = self._wait(lambda: self.get_experiment(experiment_id), f"experiment {experiment_id}",
                                timeout, poll_interval, on_update)
        if experiment["status"] == "failed" and raise_on_failure:
            raise ExperimentFailedError(experiment)
        return experiment

    # -------------------------------------------------------------------------------------- internals

    def _wait(self, read: Callable[[], Any], what: str, timeout: float, poll_interval: float,
              on_update: Callable[[Any], None] | None) -> Any:
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
    return _apply_overrides(dict(config or {}), overrides or {})


def _apply_overrides(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``train.batch_size``) in a nested config dict (copied where it is changed)."""
    for dotted, value in overrides.items():
        *parents, leaf = str(dotted).split(".")
        node = config
        for part in parents:
            child = node.get(part)
            child = dict(child) if isinstance(child, Mapping) else {}
            node[part] = child
            node = child
        node[leaf] = value
    return config
