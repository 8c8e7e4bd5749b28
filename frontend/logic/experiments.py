"""Experiments (docs/EXPERIMENTS.md): the New experiment form's parsers, and the tables and chart data
of the experiments list, a preview, the results (per tau, win-rates, points, frontier lines, curve
bands) and an experiment's runs."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from frontend.logic.format import format_ci, format_duration, parse_time, percent_range
from frontend.logic.judgements import format_lc_win_rate, format_mean_lengths
from frontend.logic.labels import algorithm_label, comparison_label, series_label

# --- experiments (docs/EXPERIMENTS.md) -------------------------------------------------------------------

EXPERIMENT_ACTIVE = frozenset({"queued", "running", "judging"})
# the results' per-(tau, algorithm) intervals, in table order: (field, column label)
RESULT_METRICS = (
    ("reward", "reward"),
    ("kl", "KL"),
    ("rlhf_reward", "rlhf_reward"),
    ("gold", "gold"),
    ("wall_clock_s", "wall-clock (s)"),
    ("iteration_s", "s/iteration"),
)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_RANGE = re.compile(r"^(\d+)-(\d+)$")
MAX_SEED_RANGE = 1000  # a typo such as 1-1000000 is refused here rather than expanded


def parse_kl_coefs(text: str) -> tuple[list[float], list[str]]:
    """Tau values typed as '0.02, 0.05 0.1' (commas and/or spaces): the values in order and the
    problems of what is not a positive number (the server checks the rest: distinct, at most 8)."""
    values: list[float] = []
    problems: list[str] = []
    for part in re.split(r"[,\s]+", text or ""):
        if not part:
            continue
        value = float(part) if _NUMBER.match(part) else None
        if value is None or not math.isfinite(value) or value <= 0:
            problems.append(f"{part!r} is not a positive number")
        else:
            values.append(value)
    return values, problems


def parse_seeds(text: str) -> tuple[list[int], list[str]]:
    """Seeds typed as '1, 2, 5' or ranges '1-4, 7' (inclusive): the values in order and the problems."""
    values: list[int] = []
    problems: list[str] = []
    for part in re.split(r"[,\s]+", re.sub(r"\s*-\s*", "-", text or "")):
        if not part:
            continue
        if part.isdigit():
            values.append(int(part))
        elif m := _RANGE.match(part):
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo or hi - lo >= MAX_SEED_RANGE:
                problems.append(f"{part!r}: a range is low-high with at most {MAX_SEED_RANGE} seeds")
            else:
                values.extend(range(lo, hi + 1))
        else:
            problems.append(f"{part!r} is not a non-negative integer or a range such as 1-4")
    return values, problems


def parse_config_yaml(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """A run configuration typed as YAML (or JSON): (the mapping, None) or (None, the problem). Only
    the syntax is checked here; the server validates the configuration itself."""
    import yaml

    try:
        data = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as err:
        return None, f"not valid YAML: {err}"
    if not isinstance(data, dict):
        return None, f"a run configuration is a mapping of fields, not a {type(data).__name__}"
    return data, None


def experiment_progress(progress: Mapping[str, Any]) -> float:
    """The share of an experiment's work finished: its runs and judgements counted alike (judgements
    are only known once judging has started, so this can step back then)."""
    total = (progress.get("runs_total") or 0) + (progress.get("judgements_total") or 0)
    done = (progress.get("runs_finished") or 0) + (progress.get("judgements_finished") or 0)
    return max(0.0, min(1.0, done / total)) if total else 0.0


def experiments_frame(
    items: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The experiments table: one row per experiment with its grid, progress and compute."""
    rows = []
    for e in items:
        p, grid, compute = e["progress"], e["grid"], e["compute"]
        runs = f"{p['runs_finished']}/{p['runs_total']}" + (
            f" ({p['runs_failed']} failed)" if p.get("runs_failed") else ""
        )
        judged = f"{p['judgements_finished']}/{p['judgements_total']}" + (
            f" ({p['judgements_failed']} failed)" if p.get("judgements_failed") else ""
        )
        rows.append(
            {
                "id": e["id"],
                "name": e["name"],
                "status": e["status"]
                + (" (cancelling)" if e.get("cancel_requested") and e["status"] in EXPERIMENT_ACTIVE else ""),
                "progress": experiment_progress(p),
                "runs": runs,
                "judgements": judged,
                "algorithms": ", ".join(algorithm_label(a, labels) for a in grid["algorithms"]),
                "tau": ", ".join(f"{t:g}" for t in grid["kl_coefs"]),
                "seeds": len(grid["seeds"]),
                "run-hours": compute.get("run_hours"),
                "wall-clock": format_duration(compute.get("wall_clock_s")),
                "tags": ", ".join(e.get("tags") or []),
                "created": parse_time(e.get("created_at")),
            }
        )
    columns = ["id", "name", "status", "progress", "runs", "judgements", "algorithms", "tau", "seeds",
               "run-hours", "wall-clock", "tags", "created"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def preview_frame(preview: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The runs an experiment would queue (POST /experiments/preview): name, grid values, and the
    size of each run (identical for all, which is the point; group-baseline algorithms spread the same
    responses over fewer prompts: responses/prompt)."""
    rows = []
    for r in preview.get("runs") or []:
        cfg = r.get("config") or {}
        train = cfg.get("train") or {}
        episodes, batch = train.get("total_episodes"), train.get("batch_size")
        rows.append(
            {
                "name": r["name"],
                "algorithm": algorithm_label(r["algorithm"], labels),
                "tau": r["kl_coef"],
                "seed": r["seed"],
                "task": (cfg.get("task") or {}).get("name"),
                "episodes": episodes,
                "iterations": episodes // batch if episodes and batch else None,
                "responses/prompt": (cfg.get("rollout") or {}).get("num_generations"),
                "learning_rate": train.get("learning_rate"),
            }
        )
    columns = [
        "name", "algorithm", "tau", "seed", "task", "episodes", "iterations", "responses/prompt", "learning_rate"
    ]
    return pd.DataFrame(rows, columns=columns)


def _first_line(text: str | None, limit: int = 200) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "(no reason recorded)"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failed_text(failed: Sequence[Mapping[str, Any]]) -> str:
    """The failed or cancelled runs of a results row: '#12 seed 2 failed: RuntimeError: ...; ...'."""
    return "; ".join(
        f"#{f['run_id']} seed {f['seed']} {f['status']}: {_first_line(f.get('error'))}" for f in failed
    )


def results_frame(results: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The results table: one row per (tau, algorithm) with the run counts, each metric's mean over the
    succeeded seeds and its 95% CI (text), and the failed runs with their reasons (never dropped)."""
    rows = []
    for r in results.get("rows") or []:
        row: dict[str, Any] = {
            "tau": r["kl_coef"],
            "algorithm": algorithm_label(r["algorithm"], labels),
            "seeds": f"{r['succeeded']}/{r['runs']} succeeded"
            + (f", {r['pending']} pending" if r.get("pending") else ""),
        }
        for name, label in RESULT_METRICS:
            interval = r.get(name)
            row[label] = interval.get("mean") if interval else None
            row[f"{label} 95% CI"] = format_ci(interval)
        row["failed"] = failed_text(r.get("failed") or [])
        rows.append(row)
    columns = ["tau", "algorithm", "seeds"]
    for _, label in RESULT_METRICS:
        columns += [label, f"{label} 95% CI"]
    return pd.DataFrame(rows, columns=[*columns, "failed"])


def win_rates_frame(results: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Pooled win-rates: per tau, KLQ against each other algorithm and each algorithm against its SFT policy, with the
    95% Wilson interval and the counts, then the length-controlled win-rate with its interval and the mean
    response lengths in words; a comparison with nothing judged (a failed run) is listed by
    ``not_judged_frame``."""
    rows = []
    for w in results.get("win_rates") or []:
        comparison = comparison_label(w, labels)
        rows.append(
            {
                "tau": w["kl_coef"],
                "comparison": comparison,
                "win rate": w.get("win_rate"),
                "ci_low": w.get("ci_low"),
                "ci_high": w.get("ci_high"),
                "95% CI": percent_range(w["ci_low"], w["ci_high"])
                if w.get("ci_low") is not None and w.get("ci_high") is not None
                else "–",
                "wins": w["wins"],
                "losses": w["losses"],
                "ties": w["ties"],
                "invalid": w["invalid"],
                "prompts": w["prompts"],
                "judgements": len(w.get("judgements") or []),
                "pending": w.get("pending", 0),
                "length-controlled": format_lc_win_rate(w.get("length")),
                "words A / B": format_mean_lengths(w.get("length")),
            }
        )
    columns = ["tau", "comparison", "win rate", "ci_low", "ci_high", "95% CI", "wins", "losses", "ties",
               "invalid", "prompts", "judgements", "pending", "length-controlled", "words A / B"]  # fmt: skip
    df = pd.DataFrame(rows, columns=columns)
    return df.sort_values(["tau", "comparison"], kind="stable").reset_index(drop=True)


def not_judged_frame(results: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The pairs that were not judged (a failed or cancelled run) with the reason."""
    rows = [
        {
            "tau": n["kl_coef"],
            "comparison": comparison_label(n, labels),
            "seed": n["seed"],
            "reason": n["reason"],
        }
        for n in results.get("not_judged") or []
    ]
    return pd.DataFrame(rows, columns=["tau", "comparison", "seed", "reason"])


def experiment_points_frame(
    results: Mapping[str, Any], labels: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Every run of an experiment as a reward-vs-KL point (tradeoff_frame's columns plus seed and
    rlhf_reward); ``on_frontier``: on its algorithm's Pareto frontier as the server computed it."""
    on_frontier = {rid for ids in (results.get("frontier") or {}).values() for rid in ids}
    rows = [
        {
            "run_id": p["run_id"],
            "run": f"#{p['run_id']} s{p['seed']}"
            + ("" if p["status"] == "succeeded" else f" ({p['status']})"),
            "algorithm": algorithm_label(p["algorithm"], labels),
            "tau": p["kl_coef"],
            "seed": p["seed"],
            "status": p["status"],
            "kl": p.get("kl"),
            "reward": p.get("reward"),
            "rlhf_reward": p.get("rlhf_reward"),
            "on_frontier": p["run_id"] in on_frontier,
        }
        for p in results.get("points") or []
    ]
    columns = ["run_id", "run", "algorithm", "tau", "seed", "status", "kl", "reward", "rlhf_reward",
               "on_frontier"]  # fmt: skip
    df = pd.DataFrame(rows, columns=columns)
    for col in ("kl", "reward", "rlhf_reward"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def frontier_lines(results: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The Pareto frontier of each algorithm as a line: its runs' (kl, reward) in the server's order
    (by KL); columns algorithm, order, run_id, kl, reward. Runs without both values are skipped."""
    points = {p["run_id"]: p for p in results.get("points") or []}
    rows = []
    for algorithm, ids in (results.get("frontier") or {}).items():
        order = 0
        for rid in ids:
            p = points.get(rid)
            if p is None or p.get("kl") is None or p.get("reward") is None:
                continue
            rows.append(
                {
                    "algorithm": algorithm_label(algorithm, labels),
                    "order": order,
                    "run_id": rid,
                    "kl": float(p["kl"]),
                    "reward": float(p["reward"]),
                }
            )
            order += 1
    return pd.DataFrame(rows, columns=["algorithm", "order", "run_id", "kl", "reward"])


def curves_frame(curves: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Seed-averaged curves (GET /experiments/{id}/curves) in long form: one row per (series, step)
    with the mean, the min-max band over seeds and how many seeds reached the step."""
    frames = []
    for c in curves.get("curves") or []:
        n = len(c["steps"])
        if not n:
            continue
        frames.append(
            pd.DataFrame(
                {
                    "series": series_label(c["algorithm"], c["kl_coef"], labels),
                    "algorithm": algorithm_label(c["algorithm"], labels),
                    "tau": c["kl_coef"],
                    "step": c["steps"],
                    "mean": pd.array(c["mean"], dtype="Float64"),
                    "low": pd.array(c["low"], dtype="Float64"),
                    "high": pd.array(c["high"], dtype="Float64"),
                    "seeds": c.get("seeds_at_step") or [None] * n,
                }
            )
        )
    columns = ["series", "algorithm", "tau", "step", "mean", "low", "high", "seeds"]
    if not frames:
        return pd.DataFrame(columns=columns)
    df = pd.concat(frames, ignore_index=True)
    for col in ("mean", "low", "high"):
        df[col] = df[col].astype("float64")
    return df[columns]


def experiment_runs_frame(detail: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """An experiment's runs: grid cell, status, progress and, for a failed run, its reason."""
    rows = []
    for r in detail.get("runs") or []:
        started, finished = parse_time(r.get("started_at")), parse_time(r.get("finished_at"))
        rows.append(
            {
                "id": r["run_id"],
                "name": r["name"],
                "algorithm": algorithm_label(r["algorithm"], labels),
                "tau": r["kl_coef"],
                "seed": r["seed"],
                "status": r["status"],
                "iteration": f"{r.get('iteration') or 0}/{r.get('total_iterations') or '?'}",
                "duration": format_duration((finished - started).total_seconds())
                if started and finished
                else "",
                "error": _first_line(r["error"]) if r.get("error") else "",
            }
        )
    columns = ["id", "name", "algorithm", "tau", "seed", "status", "iteration", "duration", "error"]
    return pd.DataFrame(rows, columns=columns)
