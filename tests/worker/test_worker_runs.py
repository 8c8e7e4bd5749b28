"""Runs and judgements through the API, trained by a real `klq worker` process, on both stacks:
live metrics and samples, success, a run whose worker died after its final checkpoint, cancel, a failing
run's reason, a gold-judge judgement, and a judgement whose worker was SIGKILLed."""

from __future__ import annotations

import io
import re
import zipfile
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text, update
from worker_testkit import Stack, metric_steps, process_gone, wait_for

from backend import logfiles
from backend.models import Run
from klq.provenance import collect as collect_provenance

pytestmark = pytest.mark.slow

LONG = 100_000  # iterations of a run that only a cancel ends: it is still going whatever the machine's speed


class LiveView:
    """What a client polling the public API sees of a run while it is running: the metric steps (checked
    gap-free at every look) and the sample steps."""

    def __init__(self, client, run_id: int) -> None:
        self.client, self.run_id = client, run_id
        self.steps: list[int] = []  # the last metric step at each look while running
        self.sample_steps: set[int] = set()

    def look(self) -> dict:
        client, run_id = self.client, self.run_id
        keys = client.get(f"/runs/{run_id}/metrics/keys").json()
        series = client.get(
            "/metrics/series", params={"run_id": run_id, "key": "objective/scores", "max_points": 1000}
        ).json()
        samples = client.get(f"/runs/{run_id}/samples/steps").json()
        run = client.get(f"/runs/{run_id}").json()
        if run["status"] == "running":  # read after the data: the run was still running when it was taken
            got = [step for s in series["series"] for step in s["steps"]]
            last = max((k["last_step"] for k in keys if k["key"] == "objective/scores"), default=0)
            assert last <= max(got, default=0)  # keys were read first; the series can only be newer
            if got:
                assert got == list(range(1, len(got) + 1))  # no gaps while it runs either
                self.steps.append(got[-1])
            self.sample_steps.update(s["step"] for s in samples)
        return run


def test_run_trains_live_and_succeeds(stack: Stack, client, main_worker) -> None:
    n = 12
    worker, mark = main_worker, len(main_worker.log())
    created = stack.create_run(client, iterations=n, checkpoint_interval=3, eval_interval=2)
    run_id = created["id"]
    assert created["status"] == "queued" and created["queue"] == stack.queues["main"]

    # While it runs, whatever is seen is consistent (how much is seen of a 12-iteration run depends on the
    # machine's speed: the growth itself is checked on a run that only a cancel ends: test_cancel_mid_run_...).
    view = LiveView(client, run_id)
    wait_for(lambda: view.look()["status"] not in ("queued", "running"), 300, f"run {run_id} to end", 0.15)
    assert view.steps == sorted(view.steps)

    run = stack.wait_status(client, run_id, ("succeeded", "failed", "cancelled"), 120)
    assert run["status"] == "succeeded", (run["error"], stack.diagnostics(run_id))
    assert run["error"] is None and run["attempts"] == 1
    assert run["iteration"] == n and run["total_iterations"] == n and run["progress"] == pytest.approx(1.0)
    assert run["episodes"] == n * 16
    assert run["worker_host"] and run["worker_gpu"] == "cpu"
    # what trained it, recorded by the training process through the worker's sink (same checkout, same host)
    assert run["provenance"] == {**collect_provenance(), "device": "cpu"}
    assert run["started_at"] and run["finished_at"] and run["finished_at"] >= run["started_at"]
    assert not run["cancel_requested"]

    keys = {k["key"]: k for k in client.get(f"/runs/{run_id}/metrics/keys").json()}
    assert keys["objective/scores"]["last_step"] == n and keys["objective/gold_scores"]["last_step"] == n
    system = [k for k in keys if k.startswith("system/")]
    assert {"system/cpu_percent", "system/rss_gb"} <= set(system), sorted(keys)
    assert keys["system/rss_gb"]["last_value"] > 0.05  # a training process holds at least 50 MB

    steps = client.get(f"/runs/{run_id}/samples/steps").json()
    assert [s["step"] for s in steps] == list(range(2, n + 1, 2)) and all(s["count"] == 8 for s in steps)
    page = client.get(f"/runs/{run_id}/samples", params={"step": n}).json()
    assert page["total"] == 8 and all(s["response"] is not None and s["prompt"] for s in page["items"])

    checkpoints = client.get(f"/runs/{run_id}/checkpoints").json()
    assert [c["step"] for c in checkpoints] == [3, 6, 9, 12]
    assert [c["is_final"] for c in checkpoints] == [False, False, False, True]
    r = client.get(f"/runs/{run_id}/checkpoints/final/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert any(name.endswith("/config.json") for name in names), names
    assert any(name.endswith(".safetensors") for name in names), names
    assert any(name.endswith("tokenizer.json") or name.endswith("tokenizer_config.json") for name in names)

    log = stack.train_log(run_id)
    assert "resume=False" in log and f"succeeded after {n} iterations" in log
    # The task ends once the training process has exited, reporting the run's outcome (not a lost lease).
    done = re.compile(r"Task klq.train_run\[[0-9a-f-]+\] succeeded in [0-9.]+s: '(\w+)'")
    outcome = wait_for(lambda: done.findall(worker.log(mark)), 30, "the task to end")
    assert outcome == ["succeeded"] and "lease lost" not in worker.log(mark)
    # The API serves the log that the (now ended) training process wrote: it shares the data directory.
    raw = (stack.run_dir(run_id) / "train.log").read_bytes()
    page = client.get(f"/runs/{run_id}/logs", params={"tail": 5000}).json()
    assert page["lines"] == logfiles.decode_lines(raw) and page["offset"] == page["size"] == len(raw)
    assert any(f"succeeded after {n} iterations" in line for line in page["lines"][-5:]), page["lines"][-5:]
    text = client.get(f"/runs/{run_id}/logs", params={"format": "text"})
    assert text.status_code == 200 and text.content == raw.decode("utf-8", errors="replace").encode()
    stack.succeeded.append(run_id)


def test_run_with_an_eval_judge_writes_its_win_rate_to_the_database(stack: Stack, client, main_worker) -> None:
    """eval_judge gold: the worker's run writes the win-rate against the reference, its interval and the
    counts with the other eval metrics (what the dashboard's win-rate panel reads), and keeps the
    reference's responses in the run directory."""
    n = 4
    run_id = stack.create_run(client, iterations=n, checkpoint_interval=n, eval_interval=2,
                              eval_judge={"backend": "gold"})["id"]
    run = stack.wait_status(client, run_id, ("succeeded", "failed", "cancelled"), 300)
    assert run["status"] == "succeeded", (run["error"], stack.diagnostics(run_id))
    keys = {k["key"]: k for k in client.get(f"/runs/{run_id}/metrics/keys").json()}
    rate, low, high = (f"eval/win_rate_vs_ref{suffix}" for suffix in ("", "_ci_low", "_ci_high"))
    for key in (rate, low, high, "eval/judge_wins", "eval/judge_losses", "eval/judge_ties", "eval/judge_invalid"):
        assert keys[key]["last_step"] == n, sorted(keys)
    assert keys[low]["last_value"] <= keys[rate]["last_value"] <= keys[high]["last_value"]
    series = client.get("/metrics/series", params={"run_id": run_id, "key": rate}).json()["series"]
    assert [s["steps"] for s in series] == [[2, 4]]
    assert (stack.run_dir(run_id) / "eval_reference.json").is_file()


def test_run_whose_worker_died_after_its_final_checkpoint_succeeds(stack: Stack, client, main_worker) -> None:
    """The window between the final checkpoint and marking the run succeeded: the run's files say it is
    done, the database says running with a dead lease. The reaper re-queues it, and the next attempt
    marks it succeeded instead of trying to resume a finished run (which would fail it)."""
    on_main = [r for r in stack.succeeded if client.get(f"/runs/{r}").json()["queue"] == stack.queues["main"]]
    if on_main:  # a run of an earlier test, on the queue of the worker that stays up
        run_id = on_main[-1]
    else:
        run_id = stack.create_run(client, iterations=2, checkpoint_interval=2)["id"]
        assert stack.wait_status(client, run_id, ("succeeded", "failed"), 90)["status"] == "succeeded"
    before = client.get(f"/runs/{run_id}").json()
    # its task must have ended: a supervisor still watching the run would see the fake lease as a takeover
    wait_for(main_worker.idle, 30, "the worker to finish its task")
    with stack.db.write_session() as session:
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(
                status="running",
                finished_at=None,
                lease_owner="dead-worker",
                heartbeat_at=datetime.now(timezone.utc) - timedelta(hours=1),
            )
        )
        session.commit()
    run = stack.wait_status(client, run_id, ("succeeded", "failed", "cancelled"), 60)
    assert run["status"] == "succeeded", (run, stack.diagnostics(run_id))
    assert run["attempts"] == before["attempts"] + 1 and run["error"] is None
    assert "had already finished training" in stack.train_log(run_id)
    assert metric_steps(stack, run_id)["objective/scores"] == list(range(1, before["iteration"] + 1))


def test_cancel_mid_run_keeps_metrics_and_checkpoints(stack: Stack, client, main_worker) -> None:
    """A run that only a cancel ends: seen growing live through the API, then cancelled."""
    run_id = stack.create_run(client, iterations=LONG, checkpoint_interval=2, eval_interval=2)["id"]
    worker = main_worker
    view = LiveView(client, run_id)

    def progressed() -> bool:
        run = view.look()
        assert run["status"] in ("queued", "running"), (run, stack.diagnostics(run_id))
        # seen growing and with samples while running, past iteration 3 with a checkpoint
        return (
            len(set(view.steps)) >= 2
            and bool(view.sample_steps)
            and run["iteration"] >= 3
            and bool(client.get(f"/runs/{run_id}/checkpoints").json())
        )

    wait_for(progressed, 300, f"run {run_id} to be seen growing past iteration 3 with a checkpoint", 0.15)
    assert view.steps == sorted(view.steps), view.steps
    children = worker.train_processes()
    assert len(children) == 1

    r = client.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    at_cancel = r.json()["iteration"]
    run = stack.wait_status(client, run_id, ("cancelled", "succeeded", "failed"), 300)
    assert run["status"] == "cancelled", (run, stack.diagnostics(run_id))
    assert run["finished_at"] and run["error"] is None
    wait_for(lambda: process_gone(children[0]), 60, "the training process to exit")

    stopped_at = run["iteration"]
    # Prompt, counted in iterations rather than seconds (those depend on the machine): the training
    # process checks the flag at every iteration boundary, so at most the iteration in flight when the
    # cancel was stored ends, plus one whose progress was written just after the API read it.
    assert 3 <= stopped_at <= at_cancel + 2, (at_cancel, stopped_at)
    keys = {k["key"]: k["last_step"] for k in client.get(f"/runs/{run_id}/metrics/keys").json()}
    assert keys["objective/scores"] == stopped_at
    series = client.get(
        "/metrics/series", params={"run_id": run_id, "key": "objective/scores", "max_points": 5000}
    ).json()["series"][0]
    assert series["steps"] == list(range(1, stopped_at + 1))
    checkpoints = client.get(f"/runs/{run_id}/checkpoints").json()
    # every second iteration, plus the one written when it stopped; none is final
    assert [c["step"] for c in checkpoints][-1] == stopped_at
    assert all(not c["is_final"] for c in checkpoints)
    assert "cancelled after" in stack.train_log(run_id)
    # the worker is free again: the cancel did not take it down
    assert worker.alive()


def test_failing_run_explains_itself(stack: Stack, client, main_worker) -> None:
    missing = stack.data_dir / "models" / "no-such-model"
    run_id = stack.create_run(client, iterations=4, model={"policy": str(missing)})["id"]
    run = stack.wait_status(client, run_id, ("failed", "succeeded", "cancelled"), 90)
    assert run["status"] == "failed", run
    error = run["error"]
    assert "model.policy" in error and str(missing) in error and "no such directory" in error, error
    assert "Traceback" not in error and len(error) < 500
    assert run["finished_at"] and run["attempts"] == 1
    assert "Traceback" in stack.train_log(run_id)  # the details are in the run's log, not its error
    assert main_worker.alive()


def two_finished_runs(stack: Stack, client) -> tuple[int, int]:
    """Two succeeded runs of this stack: those of earlier tests, else new short ones."""
    runs = stack.succeeded
    pending = [
        stack.create_run(client, iterations=4, checkpoint_interval=4)["id"] for _ in range(2 - len(runs))
    ]
    for run_id in pending:
        run = stack.wait_status(client, run_id, ("succeeded", "failed", "cancelled"), 120)
        assert run["status"] == "succeeded", run
        runs.append(run_id)
    return runs[0], runs[1]


def create_judgement(stack: Stack, client, run_a: int, run_b: int, role: str = "main") -> int:
    r = client.post(
        "/judgements",
        json={
            "run_a": run_a,
            "run_b": run_b,
            "num_prompts": 8,
            "judge": {"backend": "gold"},
            "queue": stack.queues[role],
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait_judgement(stack: Stack, client, jid: int, timeout: float = 120) -> dict:
    judgement: dict = {}

    def finished() -> bool:
        nonlocal judgement
        judgement = client.get(f"/judgements/{jid}").json()
        return judgement["status"] in ("succeeded", "failed", "cancelled")

    wait_for(finished, timeout, f"judgement {jid} to finish")
    log = stack.data_dir / "judgements" / str(jid) / "judge.log"
    assert judgement["status"] == "succeeded", (
        judgement["error"],
        log.read_text() if log.exists() else "",
        stack.diagnostics(),
    )
    return judgement


def judgement_heartbeat(stack: Stack, jid: int):
    with stack.db.session() as session:
        return session.execute(
            text("SELECT heartbeat_at FROM judgements WHERE id = :j"), {"j": jid}
        ).scalar_one()


def test_judgement_between_two_finished_runs(stack: Stack, client) -> None:
    run_a, run_b = two_finished_runs(stack, client)
    jid = create_judgement(stack, client, run_a, run_b)
    beats = set()

    def finished() -> bool:
        status = client.get(f"/judgements/{jid}", params={"include_verdicts": False}).json()["status"]
        if status == "running":
            beats.add(judgement_heartbeat(stack, jid))
        return status in ("succeeded", "failed", "cancelled")

    wait_for(finished, 120, f"judgement {jid} to finish", interval=0.1)
    judgement = wait_judgement(stack, client, jid)
    assert len(beats) >= 2, beats  # the worker renews a judgement's lease while it runs
    assert judgement["completed"] == judgement["total"] == 16  # 8 prompts, both presentation orders
    result = judgement["result"]
    assert result["wins_a"] + result["wins_b"] + result["ties"] + result["invalid"] == 8
    assert result["win_rate"] is not None and 0 <= result["win_rate"] <= 1
    assert result["ci_low"] <= result["win_rate"] <= result["ci_high"]
    verdicts = judgement["verdicts"]
    assert judgement["verdicts_total"] == 16 and len(verdicts) == 16
    assert {v["order"] for v in verdicts} == {"ab", "ba"}
    assert all(v["verdict"] in ("A", "B", "tie", "invalid") for v in verdicts)
    assert all(v["prompt"] and v["response_a"] is not None for v in verdicts)


def test_judgement_of_a_killed_worker_is_requeued_and_completed(stack: Stack, client, extra_workers) -> None:
    run_a, run_b = two_finished_runs(stack, client)
    victim = stack.start_worker("kill")
    extra_workers.append(victim)
    jid = create_judgement(stack, client, run_a, run_b, role="kill")
    judges = wait_for(victim.train_processes, 60, f"judgement {jid}'s process to start", interval=0.05)
    victim.kill_group()
    wait_for(lambda: process_gone(judges[0]), 10, "the killed worker's judge process to exit", 0.05)
    assert client.get(f"/judgements/{jid}").json()["status"] == "running"

    rescuer = stack.start_worker("kill")
    extra_workers.append(rescuer)
    judgement = wait_judgement(stack, client, jid)
    assert judgement["completed"] == 16 and judgement["result"]["win_rate"] is not None
    assert any(f"judgement {jid}: its worker stopped sending heartbeats" in w.log() for w in stack.workers)
    assert judgement["verdicts_total"] == 16
