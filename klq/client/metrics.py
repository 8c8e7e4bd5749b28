"""Metrics of runs: their keys, downsampled series, exports, and pandas DataFrames."""

from __future__ import annotations

import io
import numbers
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from klq.api_types import MetricKey, SeriesResponse
from klq.client.base import ClientBase, _opt_list

if TYPE_CHECKING:
    import pandas as pd


class MetricsAPI(ClientBase):
    """The metrics' endpoints of `klq.client.Client`."""

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
