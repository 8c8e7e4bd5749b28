"""Experiments (docs/EXPERIMENTS.md) as pure functions over rows: the grid's expansion into runs, which
judgements to queue, the derived status, and the results (intervals over seeds, pooled win-rates, the
reward-vs-KL frontier, compute, curves, CSV).

Nothing here touches the database: backend.store fetches the rows (a constant number of queries per
experiment) and hands them over as ``RunRow`` / ``JudgementRow``, so tests can check every number against
rows they made themselves.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from klq import algorithms
from klq.config import RunConfig, algorithm_names
from klq.judge.stats import student_t_interval

from .downsample import downsample
from .models import TERMINAL_STATUSES
from .schemas import (
    DEFAULT_GROUP_SIZE,
    CurveBand,
    ExperimentCompute,
    ExperimentGrid,
    ExperimentJudgementOut,
    ExperimentProgress,
    ExperimentResults,
    ExperimentRunOut,
    FailedRun,
    Interval,
    NotJudged,
    PlannedRun,
    PooledWinRate,
    ResultRow,
    RunPoint,
)
from .winrate import length_diagnostics, summarize_rows

# metric keys of the results (docs/EXPERIMENTS.md "Results")
REWARD, KL, RLHF_REWARD, GOLD = (
    "objective/scores",
    "objective/kl",
    "objective/rlhf_reward",
    "objective/gold_scores",
)
FINAL_KEYS = (REWARD, KL, RLHF_REWARD, GOLD)
ITERATION_S = "timing/iteration_s"
# judgement kinds: KLQ's run against each other algorithm's run of the same (tau, seed), "klq_vs_<other>"
# (klq_vs_ppo, ...), and every run against its SFT policy
ANCHOR = "klq"
PAIR_PREFIX = f"{ANCHOR}_vs_"
VS_SFT = "vs_sft"
MAX_ERROR_CHARS = 300  # of each run's or judgement's error quoted in the experiment's error
MAX_PROBLEMS = 5  # failed runs and judgements named in the experiment's error


@dataclass(frozen=True)
class RunRow:
    """The columns of a run that experiments need (kl_coef and seed come from its config)."""

    id: int
    name: str
    algorithm: str
    kl_coef: float
    seed: int
    status: str
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_gpu: str | None = None
    iteration: int = 0
    total_iterations: int | None = None


@dataclass(frozen=True)
class JudgementRow:
    id: int
    kind: str
    run_a: int
    run_b: int | None
    status: str
    completed: int = 0
    total: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ExperimentState:
    """What the status derivation reads of the experiment row itself."""

    judge_enabled: bool
    judging_started_at: datetime | None
    cancel_requested: bool
    error: str | None = None


@dataclass(frozen=True)
class PlannedJudgement:
    kind: str
    run_a: int
    run_b: int | None  # None: run A's reference (SFT) policy


def pair_kind(vs: str) -> str:
    """The kind of KLQ's judgement against algorithm ``vs``: 'klq_vs_ppo'."""
    return PAIR_PREFIX + vs


def vs_of(kind: str) -> str | None:
    """The algorithm a pairing kind judges KLQ against ('klq_vs_ppo' -> 'ppo'); None for vs_sft."""
    return kind[len(PAIR_PREFIX) :] if kind.startswith(PAIR_PREFIX) else None


def opponents(algorithms: Iterable[str]) -> list[str]:
    """The algorithms among ``algorithms`` that KLQ is judged against: every one but KLQ, in the registry's
    order (then any no longer registered, by name)."""
    present = set(algorithms) - {ANCHOR}
    known = [a for a in algorithm_names() if a in present]
    return known + sorted(present - set(known))


# --- expansion -------------------------------------------------------------------------------------------


def run_name(experiment: str, algorithm: str, kl_coef: float, seed: int) -> str:
    """``<experiment>/<algorithm>-tau<kl_coef>-s<seed>``; the experiment part is shortened to fit 200
    characters. repr() gives the shortest exact form of the float, so distinct taus get distinct names."""
    suffix = f"/{algorithm}-tau{float(kl_coef)!r}-s{seed}"
    return experiment[: 200 - len(suffix)] + suffix


def group_size(base: RunConfig, grid: ExperimentGrid, algorithm: str) -> int:
    """rollout.num_generations of the grid's runs of ``algorithm``: the base's, except for an algorithm whose
    baseline needs a group (min_generations >= 2: RLOO, GRPO), which takes grid.num_generations, or the base's
    if that is enough, or DEFAULT_GROUP_SIZE. batch_size counts responses, so each algorithm of the grid
    trains on as many responses per iteration; only how they are spread over prompts differs."""
    need = algorithms.ALGORITHMS[algorithm].min_generations
    own = base.rollout.num_generations
    if need < 2:
        return own
    if grid.num_generations is not None:
        return grid.num_generations
    return own if own >= need else max(need, DEFAULT_GROUP_SIZE)


def run_config(base: RunConfig, grid: ExperimentGrid, algorithm: str, kl_coef: float, seed: int) -> RunConfig:
    """The base with the grid's algorithm, kl_coef, seed and group size (raises pydantic's ValidationError,
    e.g. a batch_size the group size does not divide; `config_problems` turns that into field errors)."""
    return base.with_overrides(
        {
            "algorithm": algorithm,
            "kl_coef": kl_coef,
            "seed": seed,
            "rollout.num_generations": group_size(base, grid, algorithm),
        }
    )


def grid_problems(base: RunConfig, grid: ExperimentGrid) -> list[tuple[tuple[str, ...], str]]:
    """Why some run of the grid would not be a valid configuration, as (loc relative to the body, message):
    checked once per algorithm (kl_coef and seed are valid whatever the base, by the grid's own schema)."""
    problems = []
    for algorithm in grid.algorithms:
        try:
            run_config(base, grid, algorithm, grid.kl_coefs[0], grid.seeds[0])
        except ValidationError as err:
            # a group size the grid chose is the grid's num_generations' fault; otherwise the algorithm's
            regrouped = group_size(base, grid, algorithm) != base.rollout.num_generations
            field = "num_generations" if regrouped else "algorithms"
            for e in err.errors():
                where = ".".join(str(x) for x in e["loc"]) or "config"
                problems.append((("grid", field), f"the {algorithm} runs: {where}: {e['msg']}"))
    return problems


def plan_runs(name: str, base: RunConfig, grid: ExperimentGrid) -> list[PlannedRun]:
    """The runs of a grid, seed-major (every cell's first seed is queued before any cell's second, so a
    partly done experiment already covers the whole grid), each the base with algorithm, kl_coef and seed
    replaced."""
    planned = []
    for seed in grid.seeds:
        for kl_coef in grid.kl_coefs:
            for algorithm in grid.algorithms:
                cfg = run_config(base, grid, algorithm, kl_coef, seed)
                planned.append(
                    PlannedRun(
                        name=run_name(name, algorithm, kl_coef, seed),
                        algorithm=algorithm,
                        kl_coef=kl_coef,
                        seed=seed,
                        config=cfg.model_dump(mode="json"),
                    )
                )
    return planned


def judgements_if_all_succeed(grid: ExperimentGrid) -> int:
    """Judgements queued when every run succeeds: one vs_sft per run, and if KLQ is in the grid one
    klq_vs_<other> per (tau, seed) and other algorithm of the grid."""
    others = len(opponents(grid.algorithms)) if ANCHOR in grid.algorithms else 0
    return grid.size + len(grid.kl_coefs) * len(grid.seeds) * others


def _why(run: RunRow) -> str:
    return f"{run.algorithm} run {run.id} {run.status}"


def plan_judgements(runs: Sequence[RunRow]) -> tuple[list[PlannedJudgement], list[NotJudged]]:
    """The judgements of finished runs (docs/EXPERIMENTS.md "Judgements queued") and the pairs left out
    because a run failed or was cancelled. Runs still queued or running are neither."""
    planned: list[PlannedJudgement] = []
    skipped: list[NotJudged] = []
    cells: dict[tuple[float, int], dict[str, RunRow]] = defaultdict(dict)
    for run in sorted(runs, key=lambda r: (r.kl_coef, r.seed, r.algorithm)):
        cells[(run.kl_coef, run.seed)][run.algorithm] = run
    for (kl_coef, seed), by_alg in cells.items():
        klq = by_alg.get(ANCHOR)
        for vs in opponents(by_alg) if klq is not None else ():
            other = by_alg[vs]
            if klq.status == other.status == "succeeded":
                planned.append(PlannedJudgement(pair_kind(vs), klq.id, other.id))
            else:
                bad = [_why(r) for r in (klq, other) if r.status in ("failed", "cancelled")]
                if bad:
                    skipped.append(
                        NotJudged(
                            kind=pair_kind(vs),
                            kl_coef=kl_coef,
                            seed=seed,
                            algorithm=None,
                            vs=vs,
                            reason=" and ".join(bad),
                        )
                    )
        for run in by_alg.values():
            if run.status == "succeeded":
                planned.append(PlannedJudgement(VS_SFT, run.id, None))
            elif run.status in ("failed", "cancelled"):
                skipped.append(
                    NotJudged(
                        kind=VS_SFT, kl_coef=kl_coef, seed=seed, algorithm=run.algorithm, reason=_why(run)
                    )
                )
    return planned, skipped


# --- status, progress, compute ---------------------------------------------------------------------------


def _first_line(text: str | None) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def derive_status(
    state: ExperimentState, runs: Sequence[RunRow], judgements: Sequence[JudgementRow]
) -> tuple[str, str | None]:
    """(status, error) from the rows, as the lifecycle table of docs/EXPERIMENTS.md defines them."""
    if state.cancel_requested:
        return "cancelled", state.error
    if any(r.status not in TERMINAL_STATUSES for r in runs):
        return ("queued" if all(r.status == "queued" for r in runs) else "running"), None
    if state.judge_enabled:
        if any(j.status not in TERMINAL_STATUSES for j in judgements):
            return "judging", None
        if state.judging_started_at is None and plan_judgements(runs)[0]:
            return "judging", None  # every run is terminal: the worker (or its reaper) queues them now
    problems = [
        f"run {r.id} ({r.name}) {r.status}" + (f": {_first_line(r.error)}" if r.error else "")
        for r in runs
        if r.status in ("failed", "cancelled")
    ]
    problems += [
        f"judgement {j.id} ({j.kind}) {j.status}" + (f": {_first_line(j.error)}" if j.error else "")
        for j in judgements
        if j.status in ("failed", "cancelled")
    ]
    if state.error:
        problems.insert(0, state.error)
    if len(problems) > MAX_PROBLEMS:  # the results list every failed run; the error stays readable
        problems = [*problems[:MAX_PROBLEMS], f"and {len(problems) - MAX_PROBLEMS} more"]
    return ("failed", "; ".join(problems)) if problems else ("succeeded", None)


def progress(runs: Sequence[RunRow], judgements: Sequence[JudgementRow]) -> ExperimentProgress:
    return ExperimentProgress(
        runs_total=len(runs),
        runs_finished=sum(r.status in TERMINAL_STATUSES for r in runs),
        runs_failed=sum(r.status in ("failed", "cancelled") for r in runs),
        judgements_total=len(judgements),
        judgements_finished=sum(j.status in TERMINAL_STATUSES for j in judgements),
        judgements_failed=sum(j.status in ("failed", "cancelled") for j in judgements),
    )


def gpu_count(worker_gpu: str | None) -> int:
    """GPUs a run ran on, from its worker_gpu ("0,1"; "cpu" or unset: none)."""
    if not worker_gpu or worker_gpu == "cpu":
        return 0
    return len([g for g in worker_gpu.split(",") if g.strip()])


def compute(runs: Sequence[RunRow], now: datetime) -> ExperimentCompute:
    """Run-hours and GPU-hours (a running run counts up to ``now``) and the experiment's wall-clock."""
    run_s = gpu_s = 0.0
    for r in runs:
        if r.started_at is None:
            continue
        seconds = max(0.0, ((r.finished_at or now) - r.started_at).total_seconds())
        run_s += seconds
        gpu_s += seconds * gpu_count(r.worker_gpu)
    starts = [r.started_at for r in runs if r.started_at is not None]
    wall = None
    if starts:
        active = any(r.status not in TERMINAL_STATUSES for r in runs)
        ends = [r.finished_at for r in runs if r.finished_at is not None]
        end = now if active or not ends else max(ends)
        wall = max(0.0, (end - min(starts)).total_seconds())
    return ExperimentCompute(run_hours=run_s / 3600, gpu_hours=gpu_s / 3600, wall_clock_s=wall)


def run_out(r: RunRow) -> ExperimentRunOut:
    return ExperimentRunOut(
        run_id=r.id, name=r.name, algorithm=r.algorithm, kl_coef=r.kl_coef, seed=r.seed, status=r.status,
        iteration=r.iteration, total_iterations=r.total_iterations, error=r.error,
        started_at=r.started_at, finished_at=r.finished_at,
    )  # fmt: skip


def judgement_out(j: JudgementRow, runs_by_id: Mapping[int, RunRow]) -> ExperimentJudgementOut | None:
    """None if its run A is gone (a run deleted by hand takes its judgements with it, so only in a race)."""
    a = runs_by_id.get(j.run_a)
    if a is None:
        return None
    return ExperimentJudgementOut(
        judgement_id=j.id, kind=j.kind, kl_coef=a.kl_coef, seed=a.seed,
        algorithm=a.algorithm if j.kind == VS_SFT else None, vs=vs_of(j.kind), run_a=j.run_a, run_b=j.run_b,
        status=j.status, completed=j.completed, total=j.total, error=j.error,
    )  # fmt: skip


# --- results ---------------------------------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def interval(values: Sequence[float | None]) -> Interval:
    """Mean and Student-t 95% interval of the finite values (None with fewer than two); ``values`` kept
    as given (per succeeded seed, None where the run logged nothing)."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    mean = math.fsum(xs) / len(xs) if xs else None
    low = high = None
    if len(xs) >= 2:
        low, high = student_t_interval(xs)
    return Interval(mean=mean, ci_low=low, ci_high=high, n=len(xs), values=[_finite(v) for v in values])


def frontier(points: Iterable[RunPoint]) -> list[int]:
    """Run ids on the reward-vs-KL Pareto frontier of these points (succeeded, with both values): no other
    point has KL <= and reward >= with one of them strictly. Ordered by KL (then reward, descending)."""
    pts = [p for p in points if p.status == "succeeded" and p.kl is not None and p.reward is not None]

    def dominated(p: RunPoint) -> bool:
        return any(
            q.kl <= p.kl and q.reward >= p.reward and (q.kl < p.kl or q.reward > p.reward) for q in pts
        )

    keep = [p for p in pts if not dominated(p)]
    return [p.run_id for p in sorted(keep, key=lambda p: (p.kl, -p.reward, p.run_id))]


def _pooled(
    kind: str,
    kl_coef: float,
    algorithm: str | None,
    group: Sequence[JudgementRow],
    verdicts: Mapping[int, list[tuple[str, str, str, str, str]]],
) -> PooledWinRate:
    """One win-rate (and its length diagnostics) over several judgements' verdicts; prompts are keyed by
    (judgement, prompt) so the same prompt judged for two seeds counts twice, as two comparisons."""
    rows = [((j.id, row[0]), *row[1:]) for j in group for row in verdicts.get(j.id, ())]
    s = summarize_rows(rows)
    return PooledWinRate(
        kind=kind, kl_coef=kl_coef, algorithm=algorithm, vs=vs_of(kind), judgements=sorted(j.id for j in group),
        pending=sum(j.status not in TERMINAL_STATUSES for j in group), prompts=s.n, wins=s.wins_a,
        losses=s.wins_b, ties=s.ties, invalid=s.invalid, win_rate=s.win_rate, ci_low=s.ci_low,
        ci_high=s.ci_high, length=length_diagnostics(rows),
    )  # fmt: skip


def win_rates(
    runs_by_id: Mapping[int, RunRow],
    judgements: Sequence[JudgementRow],
    verdicts: Mapping[int, list[tuple[str, str, str, str, str]]],
) -> list[PooledWinRate]:
    """Each klq_vs_<other> pooled over seeds per tau (the others in the registry's order), then vs_sft per
    (tau, algorithm); groups with no judgement are left out. ``verdicts``: judgement id -> [(prompt_id,
    order, verdict, response_a, response_b)]."""
    groups: dict[tuple[str, float, str | None], list[JudgementRow]] = defaultdict(list)
    for j in judgements:
        a = runs_by_id.get(j.run_a)
        if a is not None and j.kind is not None and (j.kind == VS_SFT or vs_of(j.kind)):
            groups[(j.kind, a.kl_coef, a.algorithm if j.kind == VS_SFT else None)].append(j)
    kinds = [pair_kind(vs) for vs in opponents(vs_of(k) for k, _, _ in groups if k != VS_SFT)] + [VS_SFT]
    order = sorted(groups, key=lambda k: (kinds.index(k[0]), k[1], k[2] or ""))
    return [_pooled(kind, tau, alg, groups[(kind, tau, alg)], verdicts) for kind, tau, alg in order]


def _row(
    kl_coef: float,
    algorithm: str,
    runs: Sequence[RunRow],
    final: Mapping[int, Mapping[str, float | None]],
    iteration_s: Mapping[int, float | None],
) -> ResultRow:
    runs = sorted(runs, key=lambda r: (r.seed, r.id))
    ok = [r for r in runs if r.status == "succeeded"]

    def of(key: str) -> list[float | None]:
        return [final.get(r.id, {}).get(key) for r in ok]

    gold = of(GOLD)
    return ResultRow(
        kl_coef=kl_coef,
        algorithm=algorithm,
        runs=len(runs),
        succeeded=len(ok),
        failed=[
            FailedRun(run_id=r.id, seed=r.seed, status=r.status, error=r.error)
            for r in runs
            if r.status in ("failed", "cancelled")
        ],
        pending=sum(r.status not in TERMINAL_STATUSES for r in runs),
        reward=interval(of(REWARD)),
        kl=interval(of(KL)),
        rlhf_reward=interval(of(RLHF_REWARD)),
        gold=interval(gold) if any(v is not None for v in gold) else None,
        wall_clock_s=interval(
            [
                (r.finished_at - r.started_at).total_seconds() if r.started_at and r.finished_at else None
                for r in ok
            ]
        ),
        iteration_s=interval([iteration_s.get(r.id) for r in ok]),
    )


def results(
    experiment_id: int,
    status: str,
    grid: ExperimentGrid,
    state: ExperimentState,
    runs: Sequence[RunRow],
    judgements: Sequence[JudgementRow],
    final: Mapping[int, Mapping[str, float | None]],
    iteration_s: Mapping[int, float | None],
    verdicts: Mapping[int, list[tuple[str, str, str, str, str]]],
    now: datetime,
    convention: str = "klq-lab",
) -> ExperimentResults:
    """The results of docs/EXPERIMENTS.md from rows: ``final`` is run id -> {metric key: value at the run's
    last logged step}, ``iteration_s`` run id -> mean timing/iteration_s, ``verdicts`` judgement id ->
    [(prompt_id, order, verdict, response_a, response_b)]."""
    by_cell: dict[tuple[float, str], list[RunRow]] = defaultdict(list)
    for r in runs:
        by_cell[(r.kl_coef, r.algorithm)].append(r)
    cells = sorted({(k, a) for k in grid.kl_coefs for a in grid.algorithms} | set(by_cell))
    rows = [_row(k, a, by_cell.get((k, a), []), final, iteration_s) for k, a in cells]

    points = [
        RunPoint(
            run_id=r.id,
            algorithm=r.algorithm,
            kl_coef=r.kl_coef,
            seed=r.seed,
            status=r.status,
            kl=_finite(final.get(r.id, {}).get(KL)),
            reward=_finite(final.get(r.id, {}).get(REWARD)),
            rlhf_reward=_finite(final.get(r.id, {}).get(RLHF_REWARD)),
        )  # fmt: skip
        for r in sorted(runs, key=lambda r: (r.kl_coef, r.algorithm, r.seed, r.id))
    ]
    algorithms = sorted(set(grid.algorithms) | {r.algorithm for r in runs})
    fronts = {a: frontier(p for p in points if p.algorithm == a) for a in algorithms}

    runs_by_id = {r.id: r for r in runs}
    planned, not_judged = plan_judgements(runs)
    if not state.judge_enabled:
        not_judged = []  # nothing is judged, by choice: not a list of every pair
    elif state.cancel_requested and state.judging_started_at is None:
        not_judged += [_cancelled(p, runs_by_id[p.run_a]) for p in planned]
    return ExperimentResults(
        experiment_id=experiment_id,
        status=status,
        rows=rows,
        win_rates=win_rates(runs_by_id, judgements, verdicts),
        not_judged=not_judged,
        points=points,
        frontier=fronts,
        compute=compute(runs, now),
        convention=convention,
    )


def _cancelled(p: PlannedJudgement, a: RunRow) -> NotJudged:
    return NotJudged(
        kind=p.kind,
        kl_coef=a.kl_coef,
        seed=a.seed,
        algorithm=a.algorithm if p.kind == VS_SFT else None,
        vs=vs_of(p.kind),
        reason="the experiment was cancelled before judging",
    )


# --- curves ----------------------------------------------------------------------------------------------


def curves(
    runs: Sequence[RunRow], points: Iterable[tuple[int, int, float | None]], max_points: int
) -> list[CurveBand]:
    """Per (algorithm, tau): the mean over seeds at each step with the min-max band, from (run_id, step,
    value) rows of one metric key; steps where no seed has a finite value are left out. Downsampled to at
    most ``max_points`` steps, chosen on the mean (MinMaxLTTB keeps its spikes) and kept for the band."""
    by_id = {r.id: r for r in runs}
    steps: dict[tuple[str, float], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    members: dict[tuple[str, float], set[int]] = defaultdict(set)
    for run_id, step, value in points:
        r = by_id.get(run_id)
        if r is None or value is None or not math.isfinite(value):
            continue
        steps[(r.algorithm, r.kl_coef)][step].append(value)
        members[(r.algorithm, r.kl_coef)].add(run_id)
    bands = []
    for algorithm, kl_coef in sorted(steps, key=lambda c: (c[1], c[0])):
        per_step = steps[(algorithm, kl_coef)]
        ordered = sorted(per_step)
        means = [(s, math.fsum(per_step[s]) / len(per_step[s]), None) for s in ordered]
        kept, _values, _walls, _down = downsample(means, max_points)
        bands.append(
            CurveBand(
                algorithm=algorithm,
                kl_coef=kl_coef,
                runs=sorted(members[(algorithm, kl_coef)]),
                steps=kept,
                mean=[math.fsum(per_step[s]) / len(per_step[s]) for s in kept],
                low=[min(per_step[s]) for s in kept],
                high=[max(per_step[s]) for s in kept],
                seeds_at_step=[len(per_step[s]) for s in kept],
            )
        )
    return bands


# --- export ----------------------------------------------------------------------------------------------

CSV_METRICS = ("reward", "kl", "rlhf_reward", "gold", "wall_clock_s", "iteration_s")
# of each pooled win-rate's length diagnostics (LengthDiagnosticsOut), after all the win-rate columns
CSV_LENGTH = ("lc_win_rate", "lc_ci_low", "lc_ci_high", "mean_length_a", "mean_length_b")


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def results_csv(res: ExperimentResults) -> str:
    """One line per (tau, algorithm) row: counts, each metric's mean/CI/n, and the row's pooled win-rates
    (vs_sft of its algorithm; each klq_vs_<other> of its tau, from KLQ's side, on every line of that tau),
    then the same pooled win-rates' length diagnostics (length-controlled win-rate and its interval, mean
    response lengths in words; empty while fewer than two prompts have a valid verdict). The pairing
    columns are those of every registered algorithm but KLQ (and of any other in the rows), so the columns
    do not depend on the grid."""
    header = ["kl_coef", "algorithm", "runs", "succeeded", "failed", "pending"]
    for m in CSV_METRICS:
        header += [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high", f"{m}_n"]
    pairs = [pair_kind(vs) for vs in opponents([*algorithm_names(), *(row.algorithm for row in res.rows)])]
    for kind in (VS_SFT, *pairs):
        header += [f"{kind}_win_rate", f"{kind}_ci_low", f"{kind}_ci_high", f"{kind}_prompts"]
    for kind in (VS_SFT, *pairs):
        header += [f"{kind}_{column}" for column in CSV_LENGTH]
    rates: dict[tuple[str, float, str | None], PooledWinRate] = {
        (w.kind, w.kl_coef, w.algorithm): w for w in res.win_rates
    }
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in res.rows:
        line: list[Any] = [
            repr(row.kl_coef),
            row.algorithm,
            row.runs,
            row.succeeded,
            len(row.failed),
            row.pending,
        ]
        for m in CSV_METRICS:
            iv: Interval | None = getattr(row, m)
            line += (
                ["", "", "", 0] if iv is None else [_num(iv.mean), _num(iv.ci_low), _num(iv.ci_high), iv.n]
            )
        keys = [(VS_SFT, row.kl_coef, row.algorithm), *((kind, row.kl_coef, None) for kind in pairs)]
        for key in keys:
            w = rates.get(key)
            line += (
                ["", "", "", ""]
                if w is None
                else [_num(w.win_rate), _num(w.ci_low), _num(w.ci_high), w.prompts]
            )
        for key in keys:
            length = rates[key].length if key in rates else None
            line += (
                [""] * len(CSV_LENGTH) if length is None else [_num(getattr(length, c)) for c in CSV_LENGTH]
            )
        writer.writerow(line)
    return out.getvalue()
