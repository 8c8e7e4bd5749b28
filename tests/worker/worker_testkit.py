"""Helpers of the worker tests: a real API server (uvicorn) and real Celery worker processes (`klq worker`)
on one database and one broker, with short lease timings so that faults show within seconds.

A *stack* is a migrated database (SQLite file or a fresh PostgreSQL database), a data directory holding
the built-in task's assets, a broker (kombu's filesystem transport under the data directory, or Redis with
a private key prefix), and an API server configured with a few test-private queue names. Workers are
started per test on one of those queues (`klq worker --queues Q --concurrency 1`), each in its own session
(process group) so that a test can SIGKILL a worker together with everything in its group.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from backend_testkit import (  # noqa: E402
    REDIS_URL,
    REPO,
    Server,
    free_port,
    fresh_database,
    private_postgres,
    start_server,
    stop_server,
)

from backend import migrate  # noqa: E402

__all__ = [
    "REDIS_URL",
    "Server",
    "Stack",
    "Worker",
    "free_port",
    "fresh_database",
    "private_postgres",
]

# Short lease timings (the defaults are 5 s / 60 s / 30 s / 30 s): a dead worker's run is re-queued within
# about ten seconds. Valid because KLQ_LEASE_TIMEOUT > KLQ_HEARTBEAT_INTERVAL (backend.settings). The lease
# outlives 20 missed beats: with 4 s, a CI run on a loaded 2-core machine once counted one attempt more than
# the graceful-stop test expects, the mark of a live worker's lease lapsing (its SQLite heartbeat waiting on
# the write lock while a new worker imports torch beside it) and the run being reaped and resumed again.
TIMINGS = {
    "KLQ_HEARTBEAT_INTERVAL": "0.5",
    "KLQ_LEASE_TIMEOUT": "10",
    "KLQ_REAP_INTERVAL": "1",
    "KLQ_CANCEL_GRACE": "5",
    # a queued job whose broker message is lost is sent again after 3 s (default 300 s)
    "KLQ_REQUEUE_QUEUED_AFTER": "3",
}
QUEUE_ROLES = ("main", "kill", "dup", "idle", "fence", "lost", "stall", "term", "loop", "handback")


def tiny_config(
    iterations: int = 12, *, checkpoint_interval: int = 3, eval_interval: int = 2, **extra
) -> dict:
    """A run on the built-in task that takes well under a second per iteration on one CPU core."""
    batch = 16
    cfg: dict[str, Any] = {
        "algorithm": "klq",
        "task": {"name": "builtin", "num_eval_prompts": 8},
        "model": {"policy": "builtin:sft", "reward": "builtin:reward"},
        "rollout": {"response_length": 12},
        "train": {
            "total_episodes": iterations * batch,
            "batch_size": batch,
            "minibatch_size": 16,
            "micro_batch_size": 16,
            "num_epochs": 1,
            "learning_rate": 3.0e-4,
        },
        "eval_interval": eval_interval,
        "checkpoint_interval": checkpoint_interval,
    }
    for key, value in extra.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until `predicate()` is truthy and return its value; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------- workers


@dataclass
class Worker:
    name: str
    queue: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self, since: int = 0) -> str:
        """Its log (from character `since`: pass an earlier `len(worker.log())` to see only what is new)."""
        return self.log_path.read_text(errors="replace")[since:] if self.log_path.exists() else ""

    def idle(self) -> bool:
        """Every task it received has ended (Celery logs each task's end: succeeded in ... / raised ...)."""
        log = self.log()
        received = len(re.findall(r"Task klq\.\w+\[[0-9a-f-]+\] received", log))
        return received == len(re.findall(r"Task klq\.\w+\[[0-9a-f-]+\] (?:succeeded in|raised)", log))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def train_processes(self) -> list[Any]:
        """The `python -m worker.runner` processes this worker started (psutil.Process objects)."""
        import psutil

        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                if "worker.runner" in child.cmdline():
                    out.append(child)
        return out

    def kill_group(self) -> None:
        """SIGKILL the worker's whole process group (the worker and anything left in its group; its
        training child has a group of its own and must die through PR_SET_PDEATHSIG)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(10)


def process_gone(proc: Any) -> bool:
    """True once a psutil.Process has exited (a zombie waiting for a reaper counts as gone)."""
    import psutil

    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------------------------------------ stacks


@dataclass
class Stack:
    """An API server plus the environment workers need to join it (same database, broker, data dir)."""

    name: str
    server: Server
    env: dict[str, str]
    queues: dict[str, str]  # role -> unique queue name
    redis_prefix: str | None = None
    workers: list[Worker] = field(default_factory=list)
    succeeded: list[int] = field(default_factory=list)  # runs that tests saw succeed (judgement material)

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def db(self):
        return self.server.db

    def client(self, **kwargs) -> httpx.Client:
        return self.server.client(**kwargs)

    # --- workers

    def start_worker(
        self, role: str = "main", *, wait: bool = True, timeout: float = 60, env: dict[str, str] | None = None
    ) -> Worker:
        """A worker on the queue of `role`; `env` adds to (or overrides) the stack's environment."""
        queue = self.queues[role]
        name = f"{role}-{len(self.workers) + 1}"
        log_path = self.data_dir / "logs" / f"worker-{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "klqlab.cli",
                    "worker",
                    "--queues",
                    queue,
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "INFO",
                ],
                cwd=REPO,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill_group() reaches all of it
            )
        worker = Worker(name, queue, proc, log_path)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker, timeout)
        return worker

    @staticmethod
    def wait_ready(worker: Worker, timeout: float = 60) -> None:
        def ready() -> bool:
            if not worker.alive():
                raise AssertionError(
                    f"worker {worker.name} exited with {worker.proc.returncode}:\n{worker.log()}"
                )
            return " ready." in worker.log()

        wait_for(ready, timeout, f"worker {worker.name} to be ready", interval=0.1)

    def stop_workers(self, workers: list[Worker] | None = None) -> None:
        """Stop these workers (default: all of this stack's). SIGKILL: the tests are over, and Celery's
        warm shutdown takes seconds per worker on the filesystem transport (it notices the signal only
        between polls)."""
        workers = list(self.workers if workers is None else workers)
        for worker in workers:
            if worker.alive():
                worker.kill_group()
            if worker in self.workers:
                self.workers.remove(worker)

    # --- runs

    def create_run(self, client: httpx.Client, role: str = "main", **cfg: Any) -> dict:
        body = {"config": tiny_config(**cfg), "queue": self.queues[role], "name": f"{self.name}-{role}"}
        r = client.post("/runs", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def run_dir(self, run_id: int) -> Path:
        return self.data_dir / "runs" / str(run_id)

    def train_log(self, run_id: int) -> str:
        path = self.run_dir(run_id) / "train.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_status(
        self, client: httpx.Client, run_id: int, statuses: tuple[str, ...], timeout: float
    ) -> dict:
        run: dict = {}

        def done() -> bool:
            nonlocal run
            run = client.get(f"/runs/{run_id}").json()
            return run["status"] in statuses

        try:
            wait_for(done, timeout, f"run {run_id} to be {'/'.join(statuses)}")
        except AssertionError as err:
            raise AssertionError(f"{err}; last state {run}\n{self.diagnostics(run_id)}") from None
        return run

    def diagnostics(self, run_id: int | None = None) -> str:
        parts = []
        if run_id is not None:
            parts.append(f"--- train.log of run {run_id}:\n{self.train_log(run_id)[-4000:]}")
        for worker in self.workers:
            parts.append(f"--- worker {worker.name} ({worker.queue}):\n{worker.log()[-4000:]}")
        parts.append(f"--- server log:\n{self.server.log()[-2000:]}")
        return "\n".join(parts)

    def send_task(self, task: str, object_id: int, role: str, times: int = 1) -> None:
        """Send a task by name with Celery's send_task, from a separate process on the stack's settings
        (importing worker.celery_app here would configure a broker from this process's environment)."""
        code = (
            "import sys\nfrom worker.celery_app import app\n"
            f"for _ in range({times}):\n"
            f"    app.send_task({task!r}, args=[{object_id}], queue={self.queues[role]!r})\n"
        )
        subprocess.run([sys.executable, "-c", code], cwd=REPO, env=self.env, check=True, timeout=60)


def metric_steps(stack: Stack, run_id: int) -> dict[str, list[int]]:
    """Every stored (key, step) of a run, straight from the metrics table."""
    with stack.db.session() as session:
        rows = session.execute(
            text("SELECT key, step FROM metrics WHERE run_id = :r ORDER BY key, step"), {"r": run_id}
        ).all()
    out: dict[str, list[int]] = defaultdict(list)
    for key, step in rows:
        out[key].append(step)
    return dict(out)


def make_stack(
    name: str,
    kind: str,
    tmp: Path,
    assets: Path,
    *,
    broker_url: str | None = None,
    redis_prefix: str | None = None,
    database_url: str | None = None,
) -> Iterator[Stack]:
    """Generator for a fixture: a stack on a fresh database of `kind` (or on the empty database at
    `database_url`, e.g. a private PostgreSQL server's), torn down (workers first) after."""
    tag = secrets.token_hex(3)
    queues = {role: f"t{tag}-{role}" for role in QUEUE_ROLES}
    env = dict(TIMINGS)
    env.update(
        KLQ_QUEUES=",".join(queues.values()),
        KLQ_DEFAULT_QUEUE=queues["main"],
        KLQ_PRINT_INITIAL_TOKEN="false",
        # One training at a time per worker; one torch thread each keeps two concurrent jobs (two workers,
        # or a run beside a judgement) from fighting over a 2-core CI machine.
        OMP_NUM_THREADS="1",
        KLQ_WORKER_GPUS=os.environ.get("KLQ_TEST_WORKER_GPUS", ""),
    )
    if broker_url:
        env["KLQ_BROKER_URL"] = broker_url
        env["KLQ_BROKER_TRANSPORT_OPTIONS"] = json.dumps({"global_keyprefix": redis_prefix or ""})
    data_dir = tmp / "data"
    target = data_dir / "assets" / "builtin"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(assets, target)
    with contextlib.nullcontext(database_url) if database_url else fresh_database(kind, tmp) as url:
        migrate.upgrade(url)
        server = start_server(kind, url, data_dir, **env)
        stack = Stack(name, server, dict(server.env), queues, redis_prefix)
        try:
            yield stack
        finally:
            stack.stop_workers()
            stop_server(server)
