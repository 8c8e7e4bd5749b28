"""The `klq` console script: the library's commands (klq/cli.py: train, build-assets, judge, inspect) plus the
commands that start KLQ Lab's services (up, api, worker, ui, migrate), which need backend/ and worker/
and so the `app` extra. Without it the library's commands still run (this module imports only klq at
its top) and a service command says, in one line, what to install.

    klq up --demo            # or: python -m klqlab.cli up --demo
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from klq import cli as library_cli

APP_EXTRA = "pip install 'klq-lab[app]'"
# The import names of the `app` extra's packages (pyproject.toml; tests/test_layout.py keeps them in step).
APP_MODULES = (
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "celery",
    "redis",
    "psycopg",
    "pydantic_settings",
    "sse_starlette",
    "tsdownsample",
    "prometheus_client",
    "psutil",
    "streamlit",
)


def missing_app_modules() -> list[str]:
    """The app extra's packages that cannot be imported here (found, not imported: cheap)."""
    return [name for name in APP_MODULES if importlib.util.find_spec(name) is None]


def service_command(
    func: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """A command that starts a service: refused in one line, naming the extra, where the app's packages
    are missing (instead of an ImportError from deep inside, or from a child process)."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        missing = missing_app_modules()
        if missing:
            raise SystemExit(
                f"klq {args.command}: needs KLQ Lab's app packages, missing here ({', '.join(missing)}): "
                f"{APP_EXTRA}"
            )
        return func(args)

    return run


@service_command
def cmd_migrate(args: argparse.Namespace) -> int:
    from backend.migrate import upgrade
    from backend.settings import get_settings

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    print(f"database migrated: {_safe_url(settings.resolved_database_url)}")
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


@service_command
def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "backend.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.log_level in ("debug", "info"),
        workers=args.workers,
    )
    return 0


@service_command
def cmd_ui(args: argparse.Namespace) -> int:
    import os

    app = Path(__file__).resolve().parents[1] / "frontend" / "app.py"
    env = dict(os.environ, KLQ_API_URL=args.api_url)
    if not env.get("KLQ_API_TOKEN"):
        # The UI's token: KLQ_API_TOKEN, else the admin token the API wrote into the data directory (a
        # local API); without either the UI asks for one in its sidebar.
        token = getattr(args, "api_token", None)
        if not token:
            from backend.settings import Settings

            try:
                token = Settings().resolved_token_file.read_text().strip() or None
            except (OSError, ValueError):  # no token file, or settings the UI need not understand
                token = None
        if token:
            env["KLQ_API_TOKEN"] = token
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.headless=true",
        f"--server.port={args.port}",
        f"--server.address={args.host}",
        "--browser.gatherUsageStats=false",
        "--client.toolbarMode=minimal",
    ]
    # Streamlit takes this process's place (exec), so that a signal to `klq ui`, or the parent-death signal
    # `klq up` arms, reaches the server itself: as a child, Streamlit outlived a stopped `klq ui`.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    return 0  # not reached


@service_command
def cmd_up(args: argparse.Namespace) -> int:
    """API, one worker and the UI on the embedded defaults, each its own process; Ctrl-C, SIGTERM or SIGHUP
    stops them all."""
    from klqlab.up import up

    return up(
        host=args.host,
        api_port=args.api_port,
        ui_port=args.ui_port,
        demo=args.demo,
        stop_timeout=args.stop_timeout,
    )


@service_command
def cmd_worker(args: argparse.Namespace) -> int:
    """A Celery worker: threads pool (the work itself runs in child processes), one slot per GPU,
    prefetch 1, early acks plus the database lease (see worker/tasks.py for why)."""
    import os
    import socket

    from worker.tasks import DEVICES, app

    concurrency = args.concurrency or max(1, DEVICES.total)
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency}",
        f"--queues={args.queues}",
        f"--loglevel={args.loglevel}",
        "--prefetch-multiplier=1",
        "--without-gossip",
        "--without-mingle",
        f"--hostname=klq-{args.queues.replace(',', '-')}-{os.getpid()}@{socket.gethostname()}",
    ]
    app.worker_main(argv)
    return 0


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    """Register up, migrate, api, ui and worker on the `klq` parser's sub-commands."""
    p = sub.add_parser(
        "up", help="start API, worker and UI on the embedded defaults (SQLite, filesystem broker)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--api-port", type=int, default=8000)
    p.add_argument("--ui-port", type=int, default=8501)
    p.add_argument(
        "--demo",
        action="store_true",
        help="queue a KLQ and a PPO run on the built-in task, and a judgement between them",
    )
    p.add_argument(
        "--stop-timeout",
        type=_non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="on Ctrl-C, SIGTERM or SIGHUP, how long the API, worker and UI get to exit by themselves "
        "before they and their children are killed (default 10; a second Ctrl-C kills at once)",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("migrate", help="create or upgrade the database schema (Alembic)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("api", help="start the REST API server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="uvicorn worker processes sharing the port (default 1); each has its own connection "
        "pool and its own KLQ_API_MAX_CONCURRENCY cap, so size the database for N times both",
    )
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("ui", help="start the Streamlit dashboard")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--api-url", default="http://127.0.0.1:8000")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("worker", help="start a Celery worker that trains runs and judges")
    p.add_argument("--queues", default="gpu,cpu", help="comma-separated queues to consume (default gpu,cpu)")
    p.add_argument("--concurrency", type=int, default=0, help="parallel jobs (default: one per GPU, else 1)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)


def build_parser() -> argparse.ArgumentParser:
    return library_cli.build_parser(add_service_commands)


def main(argv: list[str] | None = None) -> int:
    return library_cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
