"""The `klq` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml


def _parse_overrides(pairs: list[str]) -> dict:
    """["train.batch_size=8", "algorithm=ppo"] -> {"train.batch_size": 8, "algorithm": "ppo"} (YAML values)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from klq.config import ConfigError, load_config
    from klq.trainer import TrainingError, load_run_config, train

    if args.resume:
        out_dir = Path(args.resume)
        if not (out_dir / "run_config.json").exists():
            raise SystemExit(f"{out_dir} is not a run directory (no run_config.json)")
        cfg = load_run_config(out_dir)
    else:
        if not args.config:
            raise SystemExit("klq train: give a CONFIG file, or --resume RUN_DIR")
        try:
            cfg = load_config(args.config, _parse_overrides(args.set))
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        out_dir = Path(args.out or Path("runs") / (cfg.name or f"{Path(args.config).stem}"))
    _ensure_builtin_assets(cfg)
    try:
        result = train(cfg, out_dir, resume=bool(args.resume), progress=True)
    except TrainingError as err:
        print(f"run failed: {err}", file=sys.stderr)
        return 1
    m = result.last_metrics
    summary = ", ".join(f"{k}={m[k]:.4g}" for k in ("objective/scores", "objective/gold_scores", "objective/kl",
                                                    "objective/rlhf_reward") if k in m)
    state = "stopped" if result.stopped else "finished"
    print(f"{state} after {result.iterations_done} iterations: {summary}\noutput: {out_dir.resolve()}")
    return 0


def _ensure_builtin_assets(cfg) -> None:
    names = [cfg.model.policy, cfg.model.reward, cfg.model.reference or "", cfg.model.value or ""]
    if cfg.task.name == "builtin" or any(n.startswith("builtin:") for n in names):
        from klq.tasks.builtin import ensure_assets

        ensure_assets()


def cmd_build_assets(args: argparse.Namespace) -> int:
    from klq.tasks.builtin import build_assets

    path = build_assets(Path(args.out) if args.out else None, seed=args.seed, force=args.force)
    print(f"built-in task assets: {path}")
    return 0


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


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("backend.main:create_app", factory=True, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level in ("debug", "info"), workers=args.workers)
    return 0


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
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless=true", f"--server.port={args.port}",
            f"--server.address={args.host}", "--browser.gatherUsageStats=false", "--client.toolbarMode=minimal"]
    # Streamlit takes this process's place (exec), so that a signal to `klq ui`, or the parent-death signal
    # `klq up` arms, reaches the server itself: as a child, Streamlit outlived a stopped `klq ui`.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    return 0  # not reached


def cmd_up(args: argparse.Namespace) -> int:
    """API, one worker and the UI on the embedded defaults, each its own process; Ctrl-C, SIGTERM or SIGHUP
    stops them all."""
    from backend.launch import up

    return up(host=args.host, api_port=args.api_port, ui_port=args.ui_port, demo=args.demo,
              stop_timeout=args.stop_timeout)


def cmd_worker(args: argparse.Namespace) -> int:
    """A Celery worker: threads pool (the work itself runs in child processes), one slot per GPU,
    prefetch 1, early acks plus the database lease (see worker/tasks.py for why)."""
    import os
    import socket

    from worker.tasks import DEVICES, app

    concurrency = args.concurrency or max(1, DEVICES.total)
    argv = ["worker", "--pool=threads", f"--concurrency={concurrency}", f"--queues={args.queues}",
            f"--loglevel={args.loglevel}", "--prefetch-multiplier=1", "--without-gossip", "--without-mingle",
            f"--hostname=klq-{args.queues.replace(',', '-')}-{os.getpid()}@{socket.gethostname()}"]
    app.worker_main(argv)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klq", description="KLQ Lab: RLHF runs with KLQ and PPO")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run one training run standalone (metrics JSONL, samples, checkpoints)")
    p.add_argument("config", nargs="?", help="run configuration (.yaml/.yml/.json)")
    p.add_argument("--out", help="output directory (default runs/<name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.total_episodes=640")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("up", help="start API, worker and UI on the embedded defaults (SQLite, filesystem broker)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--api-port", type=int, default=8000)
    p.add_argument("--ui-port", type=int, default=8501)
    p.add_argument("--demo", action="store_true",
                   help="queue a KLQ and a PPO run on the built-in task, and a judgement between them")
    p.add_argument("--stop-timeout", type=_non_negative_float, default=10.0, metavar="SECONDS",
                   help="on Ctrl-C, SIGTERM or SIGHUP, how long the API, worker and UI get to exit by themselves "
                        "before they and their children are killed (default 10; a second Ctrl-C kills at once)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("migrate", help="create or upgrade the database schema (Alembic)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("api", help="start the REST API server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="uvicorn worker processes sharing the port (default 1); each has its own connection "
                        "pool and its own KLQ_API_MAX_CONCURRENCY cap, so size the database for N times both")
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

    p = sub.add_parser("build-assets", help="build the built-in offline task (tokenizer, SFT policy, reward model)")
    p.add_argument("--out", help="directory (default <data dir>/assets/builtin)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_build_assets)

    from klq.judge.cli import add_judge_parser

    add_judge_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
