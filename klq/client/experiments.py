"""Experiments (docs/EXPERIMENTS.md): queue or preview a grid of runs, list, read, wait for, results,
curves, cancel and delete."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from klq.api_types import (
    ExperimentCurves,
    ExperimentDetail,
    ExperimentPage,
    ExperimentPreview,
    ExperimentResults,
)
from klq.client.base import ClientBase
from klq.client.errors import ExperimentFailedError
from klq.client.runs import _base_config


class ExperimentsAPI(ClientBase):
    """The experiments' endpoints of `klq.client.Client`."""

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
