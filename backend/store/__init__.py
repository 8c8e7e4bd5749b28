"""The data-access layer: every read and write of KLQ Lab's tables goes through here.

The API routers and the Celery workers share it, so it imports nothing from FastAPI. Functions take a
SQLAlchemy ``Session`` first; functions that write commit by default (``commit=False`` lets a caller
group several writes into one transaction). Use ``Database.write_session()`` (backend.db) for writes:
on SQLite its transactions take the write lock up front, so a worker and the API never deadlock.

Worker-facing summary::

    db = Database.from_settings()
    with db.write_session() as s:
        if not store.acquire_lease(s, run_id, owner, worker_host=host, worker_gpu=gpu):
            return                                   # someone else trains it, or it was cancelled
        store.write_metrics(s, run_id, [("loss", 1, 0.7, time.time()), ...], owner=owner)
        store.write_samples(s, run_id, [{"step": 10, "prompt_id": "p1", "prompt": ..., "response": ...}],
                            owner=owner)
        store.add_checkpoint(s, run_id, step=50, path="/data/runs/7/ckpt-50", owner=owner)
        hb = store.heartbeat(s, run_id, owner, iteration=12, episodes=768)
        if not hb.ok or hb.cancel_requested: ...
        store.finish_run(s, run_id, "succeeded", owner=owner)

Fencing: every write a worker makes passes its ``owner`` and is refused once that worker no longer holds
the lease (a worker presumed dead, whose run another worker took over, comes back): data writes (metrics,
samples, checkpoints, verdicts, progress) raise ``LeaseLost`` and write nothing; status changes
(``set_status``, ``finish_run``, ``set_judgement_status``) return False. The lease check is part of the
write's own transaction (``leases.require_lease``, ``leases.leased_by``). Without ``owner`` (the API's own
writes: cancel, delete, a failed dispatch) writes are unconditional.

The package has one module per resource: ``runs``, ``metrics``, ``samples``, ``checkpoints``,
``judgements``, ``votes`` (human judgements: voting sessions, votes, agreement inputs), ``experiments``, ``tokens``; ``leases`` is the lease and life of a leased job (claim,
heartbeat, fenced status changes, reaping, re-queue, attempts), once for runs and judgements; ``_common``
the exceptions and SQL helpers. Every public name is importable from ``backend.store`` itself.
"""

from __future__ import annotations

from ..models import TERMINAL_STATUSES, Judgement, Run  # the worker reads these through store
from ._common import (
    MAX_ROWS_PER_STATEMENT,
    Conflict,
    LeaseLost,
    NotFound,
    rows_per_statement,
)
from .checkpoints import (
    add_checkpoint,
    final_checkpoint,
    get_checkpoint,
    list_checkpoints,
)
from .experiments import (
    ExperimentView,
    cancel_experiment,
    claim_judging,
    create_experiment,
    delete_experiment,
    experiment_judgements,
    experiment_metric_points,
    experiment_of_run,
    experiment_results,
    experiment_runs,
    experiment_view,
    experiments_awaiting_judging,
    get_experiment,
    list_experiments,
    require_experiment,
    set_experiment_error,
)
from .judgements import (
    acquire_judgement,
    create_judgement,
    delete_judgement,
    get_judgement,
    heartbeat_judgement,
    is_human,
    judgement_lengths,
    leaderboard_rows,
    list_judgements,
    list_verdicts,
    record_verdicts,
    refresh_judgement_summary,
    request_judgement_cancel,
    requeue_stale_judgements,
    set_judgement_status,
)
from .leases import (
    HeartbeatResult,
    Leased,
    WaitingJobs,
    mark_redispatched,
    requeue_preempted,
    retry_or_fail,
    unqueue_unsent,
    waiting_jobs,
)
from .metrics import (
    PG_METRIC_ROWS_PER_STATEMENT,
    ROLLUP_LEVELS,
    MetricRow,
    PlotPoints,
    iter_metrics,
    latest_metrics,
    max_metric_step,
    metric_keys,
    metric_points,
    metrics_after,
    plot_points,
    rollup_aggregates,
    write_metrics,
)
from .runs import (
    acquire_lease,
    create_run,
    delete_run,
    finish_run,
    get_run,
    heartbeat,
    list_runs,
    release_lease,
    request_cancel,
    request_preempt,
    requeue_stale_runs,
    require_run,
    set_progress,
    set_provenance,
    set_status,
    tag_counts,
    update_run_meta,
)
from .samples import FILTERS as SAMPLE_FILTERS
from .samples import SORT_KEYS as SAMPLE_SORT_KEYS
from .samples import (
    AlignedSamples,
    TrainRetention,
    compare_samples,
    iter_samples,
    latest_sample_steps,
    list_samples,
    prompt_samples,
    prune_train_samples,
    sample_steps,
    sample_tokens,
    write_samples,
)
from .tokens import (
    INITIAL_TOKEN_NAME,
    TOKEN_PREFIX,
    authenticate,
    create_token,
    ensure_initial_token,
    hash_token,
    list_tokens,
    normalize_scopes,
    revoke_token,
    touch_token,
    write_token_file,
)
from .votes import (
    AgreementInputs,
    NotOnBallot,
    Pair,
    agreement_inputs,
    ballot_order,
    close_human_judgement,
    create_human_judgement,
    draw_pairs,
    judgement_pairs,
    next_ballot,
    policy_verdict,
    record_vote,
    sample_pairs,
)

__all__ = [
    "AgreementInputs",
    "NotOnBallot",
    "Pair",
    "agreement_inputs",
    "ballot_order",
    "close_human_judgement",
    "create_human_judgement",
    "draw_pairs",
    "is_human",
    "judgement_pairs",
    "next_ballot",
    "policy_verdict",
    "record_vote",
    "sample_pairs",
    "AlignedSamples",
    "SAMPLE_FILTERS",
    "SAMPLE_SORT_KEYS",
    "TrainRetention",
    "Conflict",
    "ExperimentView",
    "HeartbeatResult",
    "INITIAL_TOKEN_NAME",
    "Judgement",
    "LeaseLost",
    "Leased",
    "MAX_ROWS_PER_STATEMENT",
    "MetricRow",
    "NotFound",
    "PG_METRIC_ROWS_PER_STATEMENT",
    "ROLLUP_LEVELS",
    "PlotPoints",
    "Run",
    "TERMINAL_STATUSES",
    "TOKEN_PREFIX",
    "WaitingJobs",
    "acquire_judgement",
    "acquire_lease",
    "add_checkpoint",
    "authenticate",
    "cancel_experiment",
    "claim_judging",
    "compare_samples",
    "create_experiment",
    "create_judgement",
    "create_run",
    "create_token",
    "delete_experiment",
    "delete_judgement",
    "delete_run",
    "ensure_initial_token",
    "experiment_judgements",
    "experiment_metric_points",
    "experiment_of_run",
    "experiment_results",
    "experiment_runs",
    "experiment_view",
    "experiments_awaiting_judging",
    "final_checkpoint",
    "finish_run",
    "get_checkpoint",
    "get_experiment",
    "get_judgement",
    "get_run",
    "hash_token",
    "heartbeat",
    "heartbeat_judgement",
    "iter_metrics",
    "iter_samples",
    "judgement_lengths",
    "latest_metrics",
    "latest_sample_steps",
    "leaderboard_rows",
    "list_checkpoints",
    "list_experiments",
    "list_judgements",
    "list_runs",
    "list_samples",
    "prompt_samples",
    "prune_train_samples",
    "list_tokens",
    "list_verdicts",
    "mark_redispatched",
    "max_metric_step",
    "metric_keys",
    "metric_points",
    "metrics_after",
    "normalize_scopes",
    "plot_points",
    "record_verdicts",
    "refresh_judgement_summary",
    "release_lease",
    "request_cancel",
    "request_judgement_cancel",
    "request_preempt",
    "requeue_preempted",
    "requeue_stale_judgements",
    "requeue_stale_runs",
    "require_experiment",
    "require_run",
    "retry_or_fail",
    "revoke_token",
    "rollup_aggregates",
    "rows_per_statement",
    "sample_steps",
    "sample_tokens",
    "set_experiment_error",
    "set_judgement_status",
    "set_progress",
    "set_provenance",
    "set_status",
    "tag_counts",
    "touch_token",
    "unqueue_unsent",
    "update_run_meta",
    "waiting_jobs",
    "write_metrics",
    "write_samples",
    "write_token_file",
]
