"""The library's `klq` commands: train, build-assets, judge, inspect (no server needed).

The `klq` console script is klqlab/cli.py, which adds the service commands (up, api, worker, ui,
migrate) to this parser; `python -m klq.cli` runs the library's commands alone."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
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
    from klq.tasks import ensure_builtin_assets_if_used, run_model_names
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
    ensure_builtin_assets_if_used(cfg.task.name, run_model_names(cfg))
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


def cmd_build_assets(args: argparse.Namespace) -> int:
    from klq.tasks.builtin import build_assets

    path = build_assets(Path(args.out) if args.out else None, seed=args.seed, force=args.force)
    print(f"built-in task assets: {path}")
    return 0


def build_parser(
    add_commands: Callable[[argparse._SubParsersAction], None] | None = None,
) -> argparse.ArgumentParser:
    """The `klq` parser with the library's commands; ``add_commands(sub)`` registers more sub-commands
    (klqlab/cli.py: the service commands)."""
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

    p = sub.add_parser("build-assets", help="build the built-in offline task (tokenizer, SFT policy, reward model)")
    p.add_argument("--out", help="directory (default <data dir>/assets/builtin)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_build_assets)

    from klq.inspect_tokens import add_inspect_parser
    from klq.judge.cli import add_judge_parser

    add_judge_parser(sub)
    add_inspect_parser(sub)
    if add_commands is not None:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse ``argv`` with ``parser`` (default: the library's commands) and run the chosen command."""
    args = (parser or build_parser()).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
