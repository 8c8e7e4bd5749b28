"""Runs: queue (a config dict or a YAML/JSON file, with dotted overrides), list, wait for, edit, clone,
cancel and delete them; their tags."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from klq.api_types import RunDetail, RunPage, RunSummary, TagCount
from klq.client.base import ClientBase, _opt_list
from klq.client.errors import RunFailedError
from klq.config import apply_overrides


class RunsAPI(ClientBase):
    """The runs' endpoints of `klq.client.Client`."""

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
