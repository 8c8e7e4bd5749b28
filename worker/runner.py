"""The child process that does a job's work: `python -m worker.runner train RUN_ID --owner OWNER` (or under
`accelerate launch` for several GPUs), `python -m worker.runner judge JUDGEMENT_ID --owner OWNER`.

The Celery task that starts it holds the lease and sends heartbeats; this process trains (or judges) and
writes the outcome. A training failure ends the run failed with a reason a user can act on.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from pathlib import Path

from backend import store
from backend.db import Database, DatabaseUnavailable, retry_while_unavailable
from backend.settings import get_settings
from klq.config import RunConfig
from klq.tasks import ensure_builtin_assets_if_used, run_model_names

log = logging.getLogger("klq.worker.runner")

EXIT_OK, EXIT_FAILED, EXIT_LEASE_LOST = 0, 1, 3
EXIT_PREEMPTED = 4  # stopped at an iteration boundary because its worker is shutting down: to be resumed


def run_dir(run_id: int) -> Path:
    return get_settings().data_dir / "runs" / str(run_id)


def explain_failure(err: BaseException) -> str:
    """One paragraph a user understands, for the run's `error` field."""
    import torch

    from klq.models import ModelLoadError
    from klq.trainer import TrainingError

    if isinstance(err, torch.OutOfMemoryError):
        return (
            "out of GPU memory: " + str(err).splitlines()[0] + ". Lower train.micro_batch_size, enable "
            "model.gradient_checkpointing, shorten rollout.response_length, or use a larger GPU."
        )
    if isinstance(err, MemoryError):
        return "out of host memory while training; lower train.batch_size or train.micro_batch_size."
    if isinstance(err, (TrainingError, ModelLoadError, DatabaseUnavailable)):
        return str(err)
    if isinstance(err, FileNotFoundError):
        return f"file not found: {err}"
    return f"{type(err).__name__}: {err}"


def _record_checkpoints(db: Database, run_id: int, out_dir: Path, num_iterations: int, owner: str) -> bool:
    """Record complete checkpoints on disk that the database lacks (a worker that died between writing
    a checkpoint and recording it). Returns whether the run has its final checkpoint."""
    from klq.trainer import CHECKPOINTS, STATE_FILE

    on_disk = {}
    for path in (out_dir / CHECKPOINTS).glob("step-*"):
        match = re.fullmatch(r"step-(\d+)", path.name)  # not step-N.tmp-PID, a checkpoint being written
        if match and (path / STATE_FILE).exists():
            on_disk[int(match.group(1))] = path
    with db.write_session() as session:
        known = {c.step for c in store.list_checkpoints(session, run_id)}
        for step in sorted(set(on_disk) - known):
            store.add_checkpoint(
                session,
                run_id,
                step,
                on_disk[step],
                is_final=step == num_iterations,
                owner=owner,
                commit=False,
            )
        session.commit()
    return num_iterations in on_disk


def _finish_run(db: Database, run_id: int, outcome: str, owner: str, error: str | None = None) -> bool:
    """Record the run's outcome (fenced by ``owner``), retried while the database is unreachable, as the
    sink's writes are (KLQ_DB_RETRY_TIMEOUT). Returns whether this worker still held the lease."""

    def write() -> bool:
        with db.write_session() as session:
            return store.finish_run(session, run_id, outcome, error=error, owner=owner)

    timeout = get_settings().db_retry_timeout
    return retry_while_unavailable(write, timeout=timeout, what="recording the run's outcome", log=log)


def train_main(run_id: int, owner: str) -> int:
    from accelerate import PartialState

    from klq.trainer import latest_checkpoint, train
    from worker.sink import DatabaseSink, LeaseLost, RetryingSink

    db = Database.from_settings()
    state = PartialState()
    with db.session() as session:
        run = store.require_run(session, run_id)
        cfg = RunConfig.model_validate(run.config)
    out_dir = run_dir(run_id)
    resume = latest_checkpoint(out_dir) is not None
    if (
        resume
        and state.is_main_process
        and _record_checkpoints(db, run_id, out_dir, cfg.train.num_iterations, owner)
    ):
        # The previous worker died after the final checkpoint, before it could mark the run finished.
        with db.write_session() as session:
            if not store.finish_run(session, run_id, "succeeded", owner=owner):
                return _lease_lost("run", run_id)
        log.info("run %s had already finished training (final checkpoint found): succeeded", run_id)
        return EXIT_OK
    sink = (
        RetryingSink(
            DatabaseSink(db, run_id, owner, store.TrainRetention(cfg.capture.keep_train_last, cfg.capture.keep_train_every)),
            get_settings().db_retry_timeout,
        )
        if state.is_main_process
        else None
    )
    try:
        if state.is_main_process:
            ensure_builtin_assets_if_used(cfg.task.name, run_model_names(cfg), log=log.info)
        state.wait_for_everyone()
        if state.is_main_process:
            with db.write_session() as session:
                store.set_progress(session, run_id, total_iterations=cfg.train.num_iterations, owner=owner)
        log.info("run %s: %s training in %s (resume=%s)", run_id, cfg.algorithm, out_dir, resume)
        result = train(cfg, out_dir, sink=sink, resume=resume, judge_settings=get_settings())
    except LeaseLost as err:
        log.warning("run %s: %s; leaving it to its new worker", run_id, err)
        return EXIT_LEASE_LOST
    except Exception as err:  # every failure becomes the run's reason, never a silent exit
        log.error("run %s failed:\n%s", run_id, traceback.format_exc())
        if state.is_main_process and not _finish_run(db, run_id, "failed", owner, error=explain_failure(err)):
            return _lease_lost("run", run_id)
        return EXIT_FAILED
    if result.stopped and sink is not None and sink.preempted:
        # Not a cancel: the supervising worker re-queues the run, and the next worker resumes it from the
        # checkpoint the trainer has just written at this iteration boundary.
        log.info(
            "run %s: stopped at iteration %s because its worker is shutting down (checkpoint %s kept); "
            "to be resumed by another worker",
            run_id,
            result.iterations_done,
            result.final_checkpoint.name if result.final_checkpoint else "none",
        )
        return EXIT_PREEMPTED
    outcome = "cancelled" if result.stopped else "succeeded"
    if state.is_main_process and not _finish_run(db, run_id, outcome, owner):
        return _lease_lost("run", run_id)
    log.info(
        "run %s %s after %s iterations",
        run_id,
        "cancelled" if result.stopped else "succeeded",
        result.iterations_done,
    )
    return EXIT_OK


def _policy_of(session, run_id: int, step: int | None) -> tuple[str, str]:
    """(model dir, description) of a run's policy at `step` (None: its final or latest checkpoint)."""
    checkpoints = store.list_checkpoints(session, run_id)
    if step is not None:
        checkpoints = [c for c in checkpoints if c.step == step]
        if not checkpoints:
            raise FileNotFoundError(f"run {run_id} has no checkpoint at step {step}")
    elif not checkpoints:
        raise FileNotFoundError(f"run {run_id} has no checkpoint yet")
    chosen = next((c for c in checkpoints if c.is_final), checkpoints[-1])
    return str(Path(chosen.path) / "policy"), f"run {run_id} step {chosen.step}"


def judge_main(judgement_id: int, owner: str) -> int:
    from klq.judge.backends import make_judge
    from klq.judge.core import JudgementRecord
    from klq.judge.pipeline import judge_two_policies
    from klq.judge.templates import resolve_template, template_for_task
    from klq.tasks import load_task

    db = Database.from_settings()
    settings = get_settings()
    try:
        with db.session() as session:
            j = store.get_judgement(session, judgement_id)
            if j is None:
                raise FileNotFoundError(f"judgement {judgement_id} was deleted")
            run_a = store.require_run(session, j.run_a_id)
            cfg = RunConfig.model_validate(run_a.config)
            policy_a, _ = _policy_of(session, j.run_a_id, j.step_a)
            if j.run_b_id is not None:
                policy_b, _ = _policy_of(session, j.run_b_id, j.step_b)
            else:
                policy_b = cfg.model.reference or cfg.model.policy
            spec, seed, num_prompts = dict(j.judge), j.seed, j.num_prompts
            done, _ = store.list_verdicts(session, judgement_id, limit=2 * num_prompts)
        ensure_builtin_assets_if_used(cfg.task.name, run_model_names(cfg), log=log.info)
        task = load_task(cfg.task)
        prompts = task.prompts("eval")[:num_prompts]
        decoding = spec.pop("decoding", "greedy")
        template_text = spec.pop("template", None)
        judge = make_judge(spec, settings, task=task)
        template = None
        if spec["backend"] in ("openai", "local_hf"):
            template = resolve_template(template_text) if template_text else template_for_task(cfg.task.name)
        orders_done: dict[str, set[str]] = {}
        for v in done:
            orders_done.setdefault(v.prompt_id, set()).add(v.order)
        done_ids = {pid for pid, orders in orders_done.items() if len(orders) == 2}

        def save(done_count: int, total: int, records: list[JudgementRecord]) -> None:
            rows = [
                {
                    "prompt_id": r.prompt_id,
                    "order": part.order.lower(),
                    "verdict": part.verdict,
                    "prompt": r.prompt,
                    "response_a": r.response_1,
                    "response_b": r.response_2,
                    "raw_output": part.raw,
                }
                for r in records
                for part in (r.first, r.second)
            ]
            with db.write_session() as session:
                store.record_verdicts(session, judgement_id, rows, owner=owner)

        judge_two_policies(
            prompts, (policy_a, cfg.model.policy), (policy_b, cfg.model.policy), judge, template,
            response_length=cfg.rollout.response_length, greedy=decoding == "greedy",
            temperature=cfg.rollout.temperature, seed=seed, stop_sequences=cfg.rollout.stop_sequences,
            done_ids=done_ids, on_progress=save,
        )
    except store.LeaseLost:
        return _lease_lost("judgement", judgement_id)
    except Exception as err:
        log.error("judgement %s failed:\n%s", judgement_id, traceback.format_exc())
        with db.write_session() as session:
            failed = explain_failure(err)
            if not store.set_judgement_status(session, judgement_id, "failed", error=failed, owner=owner):
                return _lease_lost("judgement", judgement_id)
        return EXIT_FAILED
    with db.write_session() as session:
        if not store.set_judgement_status(session, judgement_id, "succeeded", owner=owner):
            return _lease_lost("judgement", judgement_id)
    return EXIT_OK


def _lease_lost(what: str, object_id: int) -> int:
    """This process's writes are refused (fencing, backend.store.LeaseLost): another worker took the job
    over while this one was presumed dead (stopped, cut off). Exit without touching the outcome."""
    log.warning("%s %s: this worker no longer holds its lease; leaving it to its new worker", what, object_id)
    return EXIT_LEASE_LOST


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.runner")
    parser.add_argument("job", choices=["train", "judge"])
    parser.add_argument("object_id", type=int)
    parser.add_argument("--owner", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return (train_main if args.job == "train" else judge_main)(args.object_id, args.owner)
    except store.LeaseLost:  # a refused write outside the jobs' own handlers (e.g. recording checkpoints)
        return _lease_lost("run" if args.job == "train" else "judgement", args.object_id)


if __name__ == "__main__":
    sys.exit(main())
