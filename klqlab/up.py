"""`klq up` (klqlab/cli.py): KLQ Lab on one machine with the embedded defaults (SQLite + filesystem broker
under the data directory): the API, one worker and the UI as child processes, stopped together on Ctrl-C,
SIGTERM or SIGHUP (a closed terminal), leaving no process behind."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from backend import store
from backend.db import Database
from backend.migrate import upgrade
from backend.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = ("builtin-klq.yaml", "builtin-ppo.yaml")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36

try:  # resolved here: between fork and exec the child must not dlopen
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux/glibc: no parent-death signal, no subreaper
    _prctl = None


def _say(*parts: object, file=None) -> None:
    """print(), flushed, that never raises: after Ctrl-C on `klq up | tee up.log` stdout is a closed pipe
    (EPIPE), after the terminal closed it is a hung-up tty (EIO), and neither may cut the clean-up short."""
    stream = file or sys.stdout
    try:
        print(*parts, file=stream, flush=True)
    except (OSError, ValueError):  # ValueError: the stream is closed
        # Gone for good: point it at /dev/null, so that what is left in its buffer does not fail again at
        # exit (Python would report that and exit with status 120).
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


def busy_port_message(host: str, ports: dict[str, int]) -> str | None:
    """Why `klq up` cannot serve on these ports ({"api": 8000, "ui": 8501}), or None. Checked before anything
    starts: a second `klq up`, or another server, on a port would otherwise show up only as a child's error
    after the start-up."""
    if len(set(ports.values())) < len(ports):
        return f"the ports are not distinct: {', '.join(f'--{name}-port {port}' for name, port in ports.items())}"
    for name, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # as uvicorn and Streamlit bind: connections of a stopped server left in TIME_WAIT do not count
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    return (f"port {port} on {host} (--{name}-port) is already in use: is another `klq up` "
                            f"running? Stop it, or choose another port with --{name}-port")
                return f"cannot listen on port {port} on {host} (--{name}-port): {err.strerror}"
    return None


def _die_with_parent(parent: int) -> None:  # runs in the child between fork and exec, after setsid
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # even if `klq up` is SIGKILLed (fires when its main thread ends)
        if os.getppid() != parent:  # `klq up` died before the signal was armed
            os._exit(1)


def _start_child(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Its own session: a terminal's Ctrl-C or hangup reaches `klq up` only, which stops the children in
    # order, and one killpg reaches a child's own children (Streamlit's, uvicorn's) as well.
    return subprocess.Popen(command, env=env, start_new_session=True,
                            preexec_fn=lambda parent=os.getpid(): _die_with_parent(parent))


def _descendants() -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process().children(recursive=True)
    return []


def _signal_groups(procs: list[subprocess.Popen], signum: int) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)  # the group outlives its leader: Streamlit after its parent died


def _wait_gone(procs: list[psutil.Process], timeout: float, hurry: threading.Event) -> list[psutil.Process]:
    """Wait (reaping those that are our children) until every one has exited, `timeout` passed or `hurry`
    is set; the ones still alive."""
    deadline = time.monotonic() + timeout
    alive = procs
    while alive and not hurry.is_set() and time.monotonic() < deadline:
        _, alive = psutil.wait_procs(alive, timeout=min(0.5, max(0.01, deadline - time.monotonic())))
    return alive


def stop_children(procs: list[subprocess.Popen], grace: float, hurry: threading.Event) -> None:
    """SIGTERM to each child's process group; after `grace` seconds (at once when `hurry` is set: a second
    Ctrl-C) SIGKILL to the groups and to every descendant left, including those in groups of their own (a
    worker's training processes)."""
    family = _descendants()  # recorded before the signal: once a parent exits, its children are harder to find
    _signal_groups(procs, signal.SIGTERM)
    if not _wait_gone(family, grace, hurry):
        return
    left = {p.pid: p for p in family + _descendants()}  # and what was started during the grace
    _signal_groups(procs, signal.SIGKILL)
    for proc in left.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil checks that the pid was not reused
    _wait_gone(list(left.values()), 10, threading.Event())


def _wait_healthy(url: str, procs: list[subprocess.Popen], stopping: threading.Event,
                  timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping.is_set():
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a KLQ Lab process exited during start-up; see its output above")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return
        stopping.wait(0.5)
    if not stopping.is_set():
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
    """Queue a KLQ and a PPO run on the built-in task through the REST client; once both succeed, judge KLQ
    against PPO (a daemon thread polls the runs). Returns the two run ids."""
    from klq.client import Client

    client = Client(api, token, timeout=30)
    try:
        run_ids = [client.create_run(ROOT / "configs" / name, queue="cpu", tags=["demo"])["id"]
                   for name in DEMO_CONFIGS]
    except BaseException:
        client.close()
        raise
    log(f"demo: queued runs {run_ids[0]} (KLQ) and {run_ids[1]} (PPO); a judgement follows when both finish")

    def judge_when_done() -> None:
        with client:
            while True:
                statuses = [client.get_run(i)["status"] for i in run_ids]
                if all(s == "succeeded" for s in statuses):
                    break
                if any(s in ("failed", "cancelled") for s in statuses):
                    log(f"demo: a run ended {statuses}; no judgement")
                    return
                time.sleep(2)
            judgement = client.create_judgement(run_ids[0], run_ids[1], num_prompts=32, queue="cpu",
                                                judge={"backend": "gold"})
            log(f"demo: judgement {judgement['id']} queued (gold judge, KLQ vs PPO, 32 prompts)")

    threading.Thread(target=judge_when_done, daemon=True, name="demo-judge").start()
    return run_ids


def up(host: str = "127.0.0.1", api_port: int = 8000, ui_port: int = 8501, demo: bool = False,
       stop_timeout: float = 10.0) -> int:
    with_ui = (ROOT / "frontend" / "app.py").exists()
    busy = busy_port_message(host, {"api": api_port, "ui": ui_port} if with_ui else {"api": api_port})
    if busy:
        _say(f"klq up: {busy}", file=sys.stderr)
        return 1
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _say(f"KLQ Lab data directory: {settings.data_dir}")
    from klq.tasks.builtin import ensure_assets

    _say("built-in task assets (built on first start, about a minute on CPU) ...")
    _say(f"  {ensure_assets(log=_say)}")
    upgrade(settings.resolved_database_url)
    token = _token(settings)
    api = f"http://{host}:{api_port}"
    env = dict(os.environ, KLQ_DATA_DIR=str(settings.data_dir), KLQ_PRINT_INITIAL_TOKEN="false")
    commands = {
        "api": [sys.executable, "-m", "klqlab.cli", "api", "--host", host, "--port", str(api_port),
                "--log-level", "warning"],
        "worker": [sys.executable, "-m", "klqlab.cli", "worker", "--queues", "gpu,cpu", "--loglevel", "WARNING"],
    }
    if with_ui:
        commands["ui"] = [sys.executable, "-m", "klqlab.cli", "ui", "--host", host, "--port", str(ui_port),
                          "--api-url", api]
    stopping, hurry = threading.Event(), threading.Event()

    def on_signal(*_args) -> None:  # Ctrl-C, SIGTERM, SIGHUP: stop; a second one: kill at once
        if stopping.is_set():
            hurry.set()
        stopping.set()

    for signum in STOP_SIGNALS:  # before the first child starts: no window where a signal kills us alone
        signal.signal(signum, on_signal)
    if _prctl is not None:
        # Orphaned descendants (a crashed child's children) become ours, not init's, so they are found and
        # stopped too.
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            procs[name] = _start_child(command, env)
        _wait_healthy(api, list(procs.values()), stopping)
        if not stopping.is_set():
            lines = [f"  API        {api}/api/v1   (docs: {api}/api/v1/docs)"]
            if "ui" in procs:
                lines.insert(0, f"  Dashboard  http://{host}:{ui_port}")
            lines.append(f"  API token  {token or '(not available: see ' + str(settings.resolved_token_file) + ')'}")
            _say("\nKLQ Lab is up:\n" + "\n".join(lines) + "\n\nCtrl-C stops everything.\n")
            if demo and token:
                queue_demo(api, token, log=_say)
        while not stopping.wait(1):
            exited = [name for name, p in procs.items() if p.poll() is not None]
            if exited:
                _say(f"KLQ Lab: {', '.join(exited)} exited; stopping the rest", file=sys.stderr)
                return 1
        return 0
    except RuntimeError as err:  # start-up failed: the child's own output says why
        _say(f"klq up: {err}", file=sys.stderr)
        return 1
    finally:
        _say(f"KLQ Lab stopping (up to {stop_timeout:.0f} s; Ctrl-C again to kill at once) ...")
        stop_children(list(procs.values()), stop_timeout, hurry)
        _say("KLQ Lab stopped.")
