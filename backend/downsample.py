"""Server-side downsampling of metric series that keeps spikes.

MinMaxLTTB (tsdownsample): a min/max preselection per bucket followed by Largest-Triangle-Three-Buckets;
an isolated spike is a bucket extreme and forms a large triangle, so it survives. Used for series built in
memory (an experiment's mean curves); a run's stored metric series are reduced in the store instead
(store.plot_points: per-bucket minima and maxima from write-time roll-ups). Points that are not finite
(NaN stored as NULL, +-inf) are left out of the shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tsdownsample import LTTBDownsampler, MinMaxLTTBDownsampler

MIN_POINTS = 10  # tsdownsample needs a few buckets; smaller requests are refused by the API

_downsampler = MinMaxLTTBDownsampler()
_lttb = LTTBDownsampler()


def downsample(
    points: Sequence[tuple[int, float | None, float | None]], max_points: int, *, preselected: bool = False
) -> tuple[list[int], list[float], list[float | None], bool]:
    """(steps, values, wall_times, downsampled) of at most ``max_points`` finite points, in step order.

    ``preselected``: the points are already per-bucket extremes (store.plot_points did the MinMax part
    in SQL), so only the LTTB part remains."""
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points must be at least {MIN_POINTS}")
    if not points:
        return [], [], [], False
    steps = np.fromiter((p[0] for p in points), dtype=np.int64, count=len(points))
    values = np.fromiter(
        (np.nan if p[1] is None else p[1] for p in points), dtype=np.float64, count=len(points)
    )
    keep = np.isfinite(values)
    if not keep.all():
        idx_all = np.flatnonzero(keep)
        steps, values = steps[keep], values[keep]
    else:
        idx_all = None
    if len(steps) <= max_points:
        idx = np.arange(len(steps))
        downsampled = preselected
    else:
        algo = _lttb if preselected else _downsampler
        idx = np.asarray(algo.downsample(steps, values, n_out=max_points), dtype=np.int64)
        downsampled = True
    source = idx if idx_all is None else idx_all[idx]
    walls = [points[i][2] for i in source.tolist()]
    return steps[idx].tolist(), values[idx].tolist(), walls, downsampled
