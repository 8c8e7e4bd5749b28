"""`klq up`: KLQ Lab on one machine with the embedded defaults (SQLite + filesystem broker under the
data directory): the API, one worker and the UI as child processes, stopped together on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from backend import store
from backend.db import Database
from backend.migrate import upgrade
from backend.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = ("builtin-klq.yaml", "builtin-ppo.yaml")


def _wait_healthy(url: str, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a KLQ Lab process exited during start-up; see its output above")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the API at {url} did not become healthy within {timeout:.0f} s")


def _token(settings) -> str | None:
    db = Database.from_settings(settings)
    try:
        with db.write_session() as session:
            created = store.ensure_initial_token(session, settings.resolved_token_file)
    finally:
        db.dispose()
    if created:
        return created
    path = settings.resolved_token_file
    return path.read_text().strip() if path.exists() else None


def queue_demo(api: str, token: str, log=print) -> list[int]:
    """Queue a KLQ and a PPO run on the built-in task; once both succeed, judge KLQ against PPO."""
    import yaml

    headers = {"Authorization": f"Bearer {token}"}
    run_ids = []
    for name in DEMO_CONFIGS:
        config = yaml.safe_load((ROOT / "configs" / name).read_text())
        response = httpx.post(f"{api}/api/v1/runs", json={"config": config, "queue": "cpu", "tags": ["demo"]},
                              headers=headers, timeout=30)
        response.raise_for_status()
        run_ids.append(response.json()["id"])
    log(f"demo: queued runs {run_ids[0]} (KLQ) and {run_ids[1]} (PPO); a judgement follows when both finish")

    def judge_when_done() -> None:
        while True:
            statuses = [httpx.get(f"{api}/api/v1/runs/{i}", headers=headers, timeout=30).json()["status"]
                        for i in run_ids]
            if all(s == "succeeded" for s in statuses):
                break
            if any(s in ("failed", "cancelled") for s in statuses):
                log(f"demo: a run ended {statuses}; no judgement")
                return
            time.sleep(2)
        body = {"run_a": run_ids[0], "run_b": run_ids[1], "num_prompts": 32, "queue": "cpu",
                "judge": {"backend": "gold"}}
        response = httpx.post(f"{api}/api/v1/judgements", json=body, headers=headers, timeout=30)
        response.raise_for_status()
        log(f"demo: judgement {response.json()['id']} queued (gold judge, KLQ vs PPO, 32 prompts)")

    threading.Thread(target=judge_when_done, daemon=True, name="demo-judge").start()
    return run_ids


def up(host: str = "127.0.0.1", api_port: int = 8000, ui_port: int = 8501, demo: bool = False) -> int:
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"KLQ Lab data directory: {settings.data_dir}", flush=True)
    from klq.tasks.builtin import ensure_assets

    print("built-in task assets (built on first start, about a minute on CPU) ...", flush=True)
    print(f"  {ensure_assets()}", flush=True)
    upgrade(settings.resolved_database_url)
    token = _token(settings)
    api = f"http://{host}:{api_port}"
    env = dict(os.environ, KLQ_DATA_DIR=str(settings.data_dir), KLQ_PRINT_INITIAL_TOKEN="false")
    commands = {
        "api": [sys.executable, "-m", "klq.cli", "api", "--host", host, "--port", str(api_port),
                "--log-level", "warning"],
        "worker": [sys.executable, "-m", "klq.cli", "worker", "--queues", "gpu,cpu", "--loglevel", "WARNING"],
    }
    if (ROOT / "frontend" / "app.py").exists():
        commands["ui"] = [sys.executable, "-m", "klq.cli", "ui", "--host", host, "--port", str(ui_port),
                          "--api-url", api]
    procs = {name: subprocess.Popen(cmd, env=env, start_new_session=True) for name, cmd in commands.items()}
    stopping = threading.Event()

    def stop(*_args) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        _wait_healthy(api, list(procs.values()))
        lines = [f"  API        {api}/api/v1   (docs: {api}/api/v1/docs)"]
        if "ui" in procs:
            lines.insert(0, f"  Dashboard  http://{host}:{ui_port}")
        lines.append(f"  API token  {token or '(not available: see ' + str(settings.resolved_token_file) + ')'}")
        print("\nKLQ Lab is up:\n" + "\n".join(lines) + "\n\nCtrl-C stops everything.\n", flush=True)
        if demo and token:
            queue_demo(api, token)
        while not stopping.wait(1):
            exited = [name for name, p in procs.items() if p.poll() is not None]
            if exited:
                print(f"KLQ Lab: {', '.join(exited)} exited; stopping the rest", file=sys.stderr)
                return 1
        return 0
    finally:
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        print("KLQ Lab stopped.", flush=True)
