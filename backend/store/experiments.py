"""Experiments: a grid of runs queued together, the judgements queued once they have all ended, the status
derived from both, and their results (the logic without the database is backend.experiments)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from klq.config import RunConfig

from .. import experiments as ex
from ..models import TERMINAL_STATUSES, Experiment, Judgement, Metric, MetricLatest, Run, utcnow
from ..schemas import ExperimentGrid, ExperimentResults
from ._common import Conflict, NotFound
from .judgements import create_judgement, request_judgement_cancel, verdict_rows
from .runs import clean_tags, create_run, delete_run, request_cancel

# Judgements of an experiment are judged with the judge config minus the experiment's own keys.
_EXPERIMENT_JUDGE_KEYS = ("enabled", "num_prompts")


def create_experiment(
    session: Session,
    *,
    name: str,
    base: RunConfig,
    grid: ExperimentGrid,
    judge: Mapping[str, Any],
    tags: Iterable[str] = (),
    notes: str = "",
    queue: str = "gpu",
    commit: bool = True,
) -> tuple[Experiment, list[Run]]:
    """Insert an experiment and its queued runs (the grid expanded by experiments.plan_runs) in one
    transaction. The caller sends the runs to the broker after the commit."""
    now = utcnow()
    tags = clean_tags(tags)
    exp = Experiment(
        name=name,
        base=base.model_dump(mode="json"),
        grid=grid.model_dump(mode="json"),
        judge=dict(judge),
        tags=tags,
        notes=notes or "",
        queue=queue,
        created_at=now,
        updated_at=now,
    )
    session.add(exp)
    session.flush()
    runs = [
        create_run(
            session,
            p.config,
            name=p.name,
            tags=tags,
            notes=notes,
            queue=queue,
            experiment_id=exp.id,
            commit=False,
        )
        for p in ex.plan_runs(name, base, grid)
    ]
    if commit:
        session.commit()
    return exp, runs


def get_experiment(session: Session, experiment_id: int) -> Experiment | None:
    return session.get(Experiment, experiment_id)


def require_experiment(session: Session, experiment_id: int) -> Experiment:
    exp = session.get(Experiment, experiment_id)
    if exp is None:
        raise NotFound(f"experiment {experiment_id} not found")
    return exp


def set_experiment_error(session: Session, experiment_id: int, error: str, *, commit: bool = True) -> None:
    """Record a failure of the experiment itself (its runs could not all be queued); shown in its error."""
    exp = require_experiment(session, experiment_id)
    exp.error, exp.updated_at = error, utcnow()
    session.flush()
    if commit:
        session.commit()


def _rows_by_experiment(
    session: Session, model: Any, columns: Sequence[Any], row_type: Any, experiment_ids: Sequence[int]
) -> dict[int, list[Any]]:
    """``row_type(*columns)`` of the rows of ``model`` in several experiments, in one query, by id."""
    out: dict[int, list[Any]] = {eid: [] for eid in experiment_ids}
    if not experiment_ids:
        return out
    rows = session.execute(
        select(model.experiment_id, *columns)
        .where(model.experiment_id.in_(list(experiment_ids)))
        .order_by(model.id)
    )
    for eid, *fields in rows:
        out[eid].append(row_type(*fields))
    return out


def experiment_runs(session: Session, experiment_ids: Sequence[int]) -> dict[int, list[ex.RunRow]]:
    """The runs of several experiments in one query, as RunRows (kl_coef and seed read from the config
    in SQL, so the config itself is not loaded), by id."""
    columns = (
        Run.id,
        Run.name,
        Run.algorithm,
        Run.config["kl_coef"].as_float(),
        Run.config["seed"].as_integer(),
        Run.status,
        Run.error,
        Run.started_at,
        Run.finished_at,
        Run.worker_gpu,
        Run.iteration,
        Run.total_iterations,
    )
    return _rows_by_experiment(session, Run, columns, ex.RunRow, experiment_ids)


def experiment_judgements(
    session: Session, experiment_ids: Sequence[int]
) -> dict[int, list[ex.JudgementRow]]:
    """The judgements of several experiments in one query, by id."""
    columns = (
        Judgement.id,
        Judgement.kind,
        Judgement.run_a_id,
        Judgement.run_b_id,
        Judgement.status,
        Judgement.completed,
        Judgement.total,
        Judgement.error,
    )
    return _rows_by_experiment(session, Judgement, columns, ex.JudgementRow, experiment_ids)


@dataclass
class ExperimentView:
    """An experiment with its runs and judgements and the status derived from them."""

    experiment: Experiment
    runs: list[ex.RunRow]
    judgements: list[ex.JudgementRow]
    state: ex.ExperimentState
    status: str
    error: str | None


def _state(exp: Experiment) -> ex.ExperimentState:
    return ex.ExperimentState(
        judge_enabled=bool(exp.judge.get("enabled", True)),
        judging_started_at=exp.judging_started_at,
        cancel_requested=exp.cancel_requested,
        error=exp.error,
    )


def _views(session: Session, exps: Sequence[Experiment]) -> list[ExperimentView]:
    ids = [e.id for e in exps]
    runs, judgements = experiment_runs(session, ids), experiment_judgements(session, ids)
    views = []
    for e in exps:
        state = _state(e)
        status, error = ex.derive_status(state, runs[e.id], judgements[e.id])
        views.append(ExperimentView(e, runs[e.id], judgements[e.id], state, status, error))
    return views


def experiment_view(session: Session, experiment_id: int) -> ExperimentView:
    """One experiment with its derived status: three queries."""
    return _views(session, [require_experiment(session, experiment_id)])[0]


def list_experiments(
    session: Session, *, limit: int = 50, offset: int = 0
) -> tuple[list[ExperimentView], int]:
    """A page of experiments, newest first, with their derived statuses: three queries (and a count)."""
    exps = list(
        session.scalars(
            select(Experiment)
            .order_by(Experiment.created_at.desc(), Experiment.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )
    total = session.scalar(select(func.count(Experiment.id))) or 0
    return _views(session, exps), total


def experiment_results(session: Session, experiment_id: int) -> ExperimentResults:
    """The results of docs/EXPERIMENTS.md (schemas.ExperimentResults), in six queries whatever the size:
    the experiment, its runs, its judgements, the final values of the result keys (metric_latest), the
    mean iteration time per run (one aggregate), and the verdicts of its judgements."""
    view = experiment_view(session, experiment_id)
    in_experiment = select(Run.id).where(Run.experiment_id == experiment_id).scalar_subquery()
    final: dict[int, dict[str, float | None]] = {}
    for run_id, key, value in session.execute(
        select(MetricLatest.run_id, MetricLatest.key, MetricLatest.value).where(
            MetricLatest.run_id.in_(in_experiment), MetricLatest.key.in_(ex.FINAL_KEYS)
        )
    ):
        final.setdefault(run_id, {})[key] = value
    iteration_s = dict(
        session.execute(
            select(Metric.run_id, func.avg(Metric.value))
            .where(Metric.run_id.in_(in_experiment), Metric.key == ex.ITERATION_S)
            .group_by(Metric.run_id)
        ).all()
    )
    verdicts = verdict_rows(session, Judgement.experiment_id == experiment_id)
    return ex.results(
        experiment_id,
        view.status,
        ExperimentGrid.model_validate(view.experiment.grid),
        view.state,
        view.runs,
        view.judgements,
        final,
        iteration_s,
        verdicts,
        utcnow(),
        convention=(view.experiment.base or {}).get("convention", "klq-lab"),
    )


def experiment_metric_points(
    session: Session, experiment_id: int, key: str
) -> list[tuple[int, int, float | None]]:
    """(run_id, step, value) of one metric key over all the runs of an experiment: one query."""
    return [
        tuple(r)  # type: ignore[misc]
        for r in session.execute(
            select(Metric.run_id, Metric.step, Metric.value)
            .where(
                Metric.run_id.in_(select(Run.id).where(Run.experiment_id == experiment_id).scalar_subquery()),
                Metric.key == key,
            )
            .order_by(Metric.run_id, Metric.step)
        )
    ]


def experiment_of_run(session: Session, run_id: int) -> int | None:
    return session.scalar(select(Run.experiment_id).where(Run.id == run_id))


def claim_judging(session: Session, experiment_id: int, *, commit: bool = True) -> list[Judgement]:
    """Start an experiment's judging step, exactly once: a conditional UPDATE sets judging_started_at if it
    is unset, the experiment is not cancelled and every run is terminal; only the caller whose UPDATE
    changed the row (rowcount 1) creates the judgements (experiments.plan_judgements), in the same
    transaction, so a claim is never left without its judgements. Returns them (empty for every other
    caller, and when judging is disabled); the caller sends them to the broker after the commit."""
    now = utcnow()
    unfinished = (
        select(Run.id)
        .where(Run.experiment_id == experiment_id, Run.status.not_in(TERMINAL_STATUSES))
        .exists()
    )
    won = session.execute(
        update(Experiment)
        .where(
            Experiment.id == experiment_id,
            Experiment.judging_started_at.is_(None),
            Experiment.cancel_requested.is_(False),
            ~unfinished,
        )
        .values(judging_started_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if won != 1:
        session.rollback()
        return []
    exp = session.get(Experiment, experiment_id, populate_existing=True)
    created = []
    if exp.judge.get("enabled", True):
        judge = {k: v for k, v in exp.judge.items() if k not in _EXPERIMENT_JUDGE_KEYS}
        planned, _skipped = ex.plan_judgements(experiment_runs(session, [experiment_id])[experiment_id])
        created = [
            create_judgement(
                session,
                run_a_id=p.run_a,
                run_b_id=p.run_b,
                num_prompts=int(exp.judge.get("num_prompts", 32)),
                judge=judge,
                seed=0,  # every judgement of an experiment decodes the same way, like POST /judgements' default
                queue=exp.queue,
                experiment_id=experiment_id,
                kind=p.kind,
                commit=False,
            )
            for p in planned
        ]
    if commit:
        session.commit()
    return created


def experiments_awaiting_judging(session: Session) -> list[int]:
    """Experiments whose runs are all terminal but whose judging never started (and not cancelled): what
    the worker's reaper claims, in case the worker that ended the last run died before it could."""
    unfinished = (
        select(Run.id)
        .where(Run.experiment_id == Experiment.id, Run.status.not_in(TERMINAL_STATUSES))
        .exists()
    )
    return list(
        session.scalars(
            select(Experiment.id)
            .where(
                Experiment.judging_started_at.is_(None), Experiment.cancel_requested.is_(False), ~unfinished
            )
            .order_by(Experiment.id)
        )
    )


def cancel_experiment(session: Session, experiment_id: int, *, commit: bool = True) -> None:
    """Cancel an experiment: no judging starts, and its unfinished runs and judgements are cancelled (the
    run and judgement cancels of this module: queued ones at once, running ones by their workers).
    Cancelling a cancelled experiment is a no-op; a finished one is a Conflict."""
    view = experiment_view(session, experiment_id)
    if view.status in ("succeeded", "failed"):
        raise Conflict(f"experiment {experiment_id} has already {view.status}")
    view.experiment.cancel_requested = True
    view.experiment.updated_at = utcnow()
    session.flush()
    for r in view.runs:
        if r.status not in TERMINAL_STATUSES:
            request_cancel(session, r.id, commit=False)
    for j in view.judgements:
        if j.status not in TERMINAL_STATUSES:
            request_judgement_cancel(session, j.id, commit=False)
    if commit:
        session.commit()


def delete_experiment(
    session: Session, experiment_id: int, *, force: bool = False, commit: bool = True
) -> None:
    """Delete an experiment with its runs (delete_run: their metrics, samples, checkpoint rows) and
    judgements. While it is active (queued, running, judging, or a run or judgement still running after a
    cancel) it is a Conflict unless ``force``: its workers would keep writing."""
    view = experiment_view(session, experiment_id)
    running = any(r.status == "running" for r in view.runs) or any(
        j.status == "running" for j in view.judgements
    )
    if (view.status in ("queued", "running", "judging") or running) and not force:
        raise Conflict(
            f"experiment {experiment_id} is {'still running' if running else view.status}: "
            "cancel it first (or delete with force=true)"
        )
    for r in view.runs:
        delete_run(session, r.id, force=True, commit=False)
    exp = view.experiment
    session.expunge(exp)
    session.execute(delete(Experiment).where(Experiment.id == experiment_id))
    if commit:
        session.commit()

