"""Runs: their statuses and headline metric keys, the runs table and ETA, the Run page's metric panels
(with interval bands), live-tail merging and EMA smoothing, and reward-vs-KL points with their Pareto
frontier."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from frontend.logic.format import format_duration, parse_time
from frontend.logic.labels import algorithm_label

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE = frozenset({"queued", "running"})

REWARD_KEY = "objective/scores"
GOLD_KEY = "objective/gold_scores"
KL_KEY = "objective/kl"
RLHF_KEY = "objective/rlhf_reward"
WIN_RATE_KEY = "eval/win_rate_vs_ref"  # the trainer's eval judge (klq.judge.in_training), with its interval:
# metric key -> the keys of its interval's bounds, drawn as a band around the key's line
INTERVAL_KEYS = {WIN_RATE_KEY: (f"{WIN_RATE_KEY}_ci_low", f"{WIN_RATE_KEY}_ci_high")}

# --- runs table ------------------------------------------------------------------------------------------


def eta_seconds(run: Mapping[str, Any], now: datetime | None = None) -> float | None:
    """Seconds until a running run finishes: the latest ``timing/iteration_s`` times the remaining
    iterations if the run logs it, else the mean time per iteration so far. None if unknown."""
    if run.get("status") != "running":
        return None
    total, done = run.get("total_iterations"), run.get("iteration") or 0
    if not total:
        return None
    remaining = max(0, total - done)
    if remaining == 0:
        return 0.0
    latest = run.get("latest") or {}
    per_iter = (latest.get("timing/iteration_s") or {}).get("value")
    if per_iter is not None and math.isfinite(per_iter) and per_iter > 0:
        return per_iter * remaining
    started = parse_time(run.get("started_at"))
    if started is None or done <= 0:
        return None
    now = now or datetime.now(timezone.utc)
    elapsed = (now - started).total_seconds()
    if elapsed <= 0:
        return None
    return elapsed / done * remaining


def latest_value(run: Mapping[str, Any], key: str) -> float | None:
    entry = (run.get("latest") or {}).get(key)
    return None if entry is None else entry.get("value")


def runs_frame(
    runs: Sequence[Mapping[str, Any]],
    configs: Mapping[int, Mapping[str, Any]] | None = None,
    now: datetime | None = None,
    labels: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The runs table: one row per run (task and tau come from the run's config when known; the algorithm
    as ``labels`` names it, see algorithm_label)."""
    configs = configs or {}
    rows = []
    for r in runs:
        cfg = configs.get(r["id"]) or {}
        progress = r.get("progress")
        rows.append(
            {
                "id": r["id"],
                "name": r["name"],
                "status": r["status"]
                + (" (cancelling)" if r.get("cancel_requested") and r["status"] in ACTIVE else ""),
                "algorithm": algorithm_label(r["algorithm"], labels),
                "task": (cfg.get("task") or {}).get("name"),
                "tau": cfg.get("kl_coef"),
                "reward": latest_value(r, REWARD_KEY),
                "gold": latest_value(r, GOLD_KEY),
                "KL": latest_value(r, KL_KEY),
                "progress": None if progress is None else float(progress),
                "iteration": f"{r.get('iteration') or 0}/{r.get('total_iterations') or '?'}",
                "ETA": format_duration(eta_seconds(r, now)),
                "tags": ", ".join(r.get("tags") or []),
                "queue": r.get("queue"),
                "created": parse_time(r.get("created_at")),
            }
        )
    columns = [
        "id",
        "name",
        "status",
        "algorithm",
        "task",
        "tau",
        "reward",
        "gold",
        "KL",
        "progress",
        "ETA",
        "iteration",
        "tags",
        "queue",
        "created",
    ]
    return pd.DataFrame(rows, columns=columns)


# --- metric series ---------------------------------------------------------------------------------------

PANELS: list[tuple[str, Any]] = [
    ("Reward (RM score, gold)", re.compile(r"^(objective|eval)/(scores|gold_scores|raw_scores)$")),
    ("Win-rate vs reference (judge)", re.compile(r"^eval/win_rate_vs_ref(_ci_low|_ci_high)?$")),
    ("KL", re.compile(r"^(objective|eval)/kl$")),
    ("RLHF reward", re.compile(r"^objective/(rlhf_reward|non_score_reward)$")),
    ("Losses", re.compile(r"^loss/")),
    ("Entropy", re.compile(r"^(objective/entropy|policy/entropy.*)$")),
    ("Q values (KLQ)", re.compile(r"^q/")),
    ("Policy", re.compile(r"^(policy|val)/")),
    ("Timing", re.compile(r"^timing/")),
    ("Throughput", re.compile(r"^perf/.*per_s$")),
    ("System", re.compile(r"^system/")),
]
DEFAULT_PANELS = (
    "Reward (RM score, gold)",
    "Win-rate vs reference (judge)",  # beside the reward, in runs with an eval judge
    "KL",
    "RLHF reward",
    "Losses",
    "Entropy",
    "Q values (KLQ)",
    "Timing",
)
HIDDEN_KEYS = frozenset({"iteration", "episode"})


def group_keys(keys: Iterable[str]) -> dict[str, list[str]]:
    """Metric keys grouped into the Run page's panels (in PANELS order, then 'Other')."""
    groups: dict[str, list[str]] = {name: [] for name, _ in PANELS}
    other: list[str] = []
    for key in sorted(set(keys)):
        if key in HIDDEN_KEYS:
            continue
        for name, pattern in PANELS:
            if pattern.search(key):
                groups[name].append(key)
                break
        else:
            other.append(key)
    if other:
        groups["Other"] = other
    return {name: ks for name, ks in groups.items() if ks}


@dataclass
class SeriesData:
    """The points of one (run, key) series held by the page, extended by live tails."""

    steps: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    wall_times: list[float | None] = field(default_factory=list)
    total_points: int = 0
    downsampled: bool = False

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    def __len__(self) -> int:
        return len(self.steps)


def merge_series(held: SeriesData | None, new: Mapping[str, Any], since_step: int | None) -> SeriesData:
    """Held points plus a response series fetched with ``since_step``: points after ``since_step`` are
    replaced by the response's (a step re-sent is not duplicated; a late write for it wins)."""
    steps = list(new.get("steps") or [])
    values = list(new.get("values") or [])
    walls = list(new.get("wall_times") or [None] * len(steps))
    if held is None or since_step is None:
        return SeriesData(
            steps, values, walls, int(new.get("total_points") or len(steps)), bool(new.get("downsampled"))
        )
    keep = len(held.steps)
    while keep and held.steps[keep - 1] > since_step:
        keep -= 1
    dropped = len(held.steps) - keep
    merged = SeriesData(
        held.steps[:keep] + steps,
        held.values[:keep] + values,
        held.wall_times[:keep] + walls,
        held.total_points - dropped + int(new.get("total_points") or len(steps)),
        held.downsampled or bool(new.get("downsampled")),
    )
    return merged


def tail_since(held: Mapping[str, SeriesData]) -> int | None:
    """The ``since_step`` of the next live request: one before the newest step held, so that a late
    write at the newest step (e.g. a worker heartbeat's system metrics) is picked up again."""
    lasts = [s.last_step for s in held.values() if s.last_step is not None]
    return max(lasts) - 1 if lasts else None


def ema(values: Sequence[float | None], weight: float) -> list[float | None]:
    """TensorBoard's smoothing: a debiased exponential moving average (weight 0: none, 0.99: heavy).
    Missing values stay missing and do not reset the average."""
    if weight <= 0:
        return list(values)
    weight = min(weight, 0.999)
    out: list[float | None] = []
    last = 0.0
    n = 0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
            continue
        last = last * weight + (1 - weight) * v
        n += 1
        out.append(last / (1 - weight**n))
    return out


def series_frame(
    items: Iterable[tuple[str, str, SeriesData]], *, x: str = "step", smoothing: float = 0.0
) -> pd.DataFrame:
    """Long-format points for charts: columns run, key, x, value, smoothed.

    ``items``: (run label, key, data). ``x``: "step", "relative" (minutes since the series' first point,
    from wall times) or "time" (wall-clock datetime)."""
    frames = []
    for run, key, data in items:
        if not data.steps:
            continue
        if x == "step":
            xs: list[Any] = list(data.steps)
        else:
            walls = data.wall_times
            if not walls or all(w is None for w in walls):
                continue
            if x == "relative":
                first = next(w for w in walls if w is not None)
                xs = [None if w is None else (w - first) / 60.0 for w in walls]
            else:
                xs = [None if w is None else datetime.fromtimestamp(w, timezone.utc) for w in walls]
        frames.append(
            pd.DataFrame(
                {
                    "run": run,
                    "key": key,
                    "x": xs,
                    "step": data.steps,
                    "value": pd.array(data.values, dtype="Float64"),
                    "smoothed": pd.array(ema(data.values, smoothing), dtype="Float64"),
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=["run", "key", "x", "step", "value", "smoothed"])
    df = pd.concat(frames, ignore_index=True)
    df = df[df["x"].notna()]
    df["value"] = df["value"].astype("float64")
    df["smoothed"] = df["smoothed"].astype("float64")
    return df


def interval_bands(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(lines, bands) of a `series_frame`: each key of INTERVAL_KEYS whose two bounds are in ``df`` keeps
    its line, and its bounds become one band (columns run, key, x, step, low, high: the key's colour);
    everything else stays a line."""
    columns = ["run", "key", "x", "step", "low", "high"]
    bands, bounds = [], []
    present = set(df["key"]) if not df.empty else set()
    for key, (low_key, high_key) in INTERVAL_KEYS.items():
        if not {key, low_key, high_key} <= present:
            continue
        low = df[df["key"] == low_key][["run", "x", "step", "value"]].rename(columns={"value": "low"})
        high = df[df["key"] == high_key][["run", "x", "step", "value"]].rename(columns={"value": "high"})
        bands.append(low.merge(high, on=["run", "x", "step"]).assign(key=key)[columns])
        bounds += [low_key, high_key]
    lines = df[~df["key"].isin(bounds)] if bounds else df
    return lines, pd.concat(bands, ignore_index=True) if bands else pd.DataFrame(columns=columns)


# --- reward vs KL ----------------------------------------------------------------------------------------


def tail_mean(values: Sequence[float | None], n: int) -> float | None:
    """Mean of the last ``n`` finite values (n <= 1: the last one)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    tail = finite[-max(1, n) :]
    return sum(tail) / len(tail)


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points on the reward-vs-KL Pareto frontier (lower KL and higher reward are better),
    sorted by KL. ``points``: (kl, reward). A point is on it if no other point has KL <= and reward >=
    with one of them strictly better; exact duplicates are all kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    frontier: list[int] = []
    best = -math.inf
    best_kl = None
    for i in order:
        kl, reward = points[i]
        if not (math.isfinite(kl) and math.isfinite(reward)):
            continue
        if reward > best:
            frontier.append(i)
            best, best_kl = reward, kl
        elif reward == best and kl == best_kl:
            frontier.append(i)
    return frontier


def tradeoff_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Reward-vs-KL points, one per run: rows with run_id, run, algorithm, tau, kl, reward; adds
    ``on_frontier``; rows missing kl or reward are kept with on_frontier False."""
    df = pd.DataFrame(list(rows), columns=["run_id", "run", "algorithm", "tau", "status", "kl", "reward"])
    df["on_frontier"] = False
    ok = df[df["kl"].notna() & df["reward"].notna()]
    idx = pareto_frontier(list(zip(ok["kl"].astype(float), ok["reward"].astype(float))))
    df.loc[ok.index[idx], "on_frontier"] = True
    return df


def provenance_rows(provenance: Mapping[str, Any] | None) -> dict[str, str]:
    """A run's provenance (RunDetail.provenance) as label -> text for the run page: the git commit (with
    "(uncommitted changes)" when dirty; "not a git checkout" when unknown), every package version, Python,
    device, GPU and host ("–" for what is unknown). Empty when the run has not started."""
    if not provenance:
        return {}
    commit = provenance.get("git_commit")
    if commit is None:
        code = "not a git checkout"
    else:
        code = commit + (" (uncommitted changes)" if provenance.get("git_dirty") else "")
    rows = {"git commit": code}
    for name, version in (provenance.get("packages") or {}).items():
        rows[name] = version or "not installed"
    for label, key in (("python", "python"), ("device", "device"), ("GPU", "gpu"), ("host", "host")):
        rows[label] = provenance.get(key) or "–"
    return rows
