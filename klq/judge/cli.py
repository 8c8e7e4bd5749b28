"""`klq judge`: compare two policies on held-out prompts and print the win-rate table, with the length
diagnostics (the length-controlled win-rate and the win-rate by length difference, lengths in words).

    klq judge --a runs/klq --b reference --task builtin --n 32 --judge gold
    klq judge --a runs/klq --b runs/ppo --judge openai --judge-model gpt-4o-mini --template summarisation

--a / --b: a run directory (its latest checkpoint's policy), a model directory / hub id / builtin:* name,
or (for --b) "reference": the reference (SFT) policy of the --a run. Prompts are the first N of the task's
held-out ("eval") split. The endpoint of `--judge openai` comes from KLQ_JUDGE_BASE_URL / KLQ_JUDGE_API_KEY
(and KLQ_JUDGE_MODEL unless --judge-model is given).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from klq.judge.stats import JudgementSummary, LengthControl


def add_judge_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `judge` sub-command to an argparse sub-parsers object (sets func=main)."""
    p = subparsers.add_parser("judge", help="pairwise judgement of two policies: win-rate with a 95%% CI",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=main)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", required=True, metavar="RUN_DIR_OR_MODEL", help="policy A")
    p.add_argument("--b", required=True, metavar="RUN_DIR_OR_MODEL",
                   help="policy B, or 'reference' for the --a run's reference (SFT) policy")
    p.add_argument("--task", default=None,
                   help="builtin, tldr, hh or prompts (default: the --a run's task, else builtin)")
    p.add_argument("--dataset", default=None, help="dataset for tldr/hh/prompts (default: the run's)")
    p.add_argument("--n", type=int, default=32, help="number of held-out prompts (default 32)")
    p.add_argument("--judge", default="gold", choices=["gold", "reward_model", "local_hf", "openai"])
    p.add_argument("--judge-model", default=None,
                   help="reward_model: scorer (default: the run's reward model); local_hf: required; "
                        "openai: model name (default KLQ_JUDGE_MODEL)")
    p.add_argument("--template", default=None,
                   help="summarisation, dialogue, generic (default by task), or @FILE with a template")
    p.add_argument("--seed", type=int, default=0, help="presentation orders, sampling and bootstrap")
    p.add_argument("--sample", action="store_true", help="sample responses instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    p.add_argument("--response-length", type=int, default=None,
                   help="max new tokens (default: the run's rollout.response_length)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32, help="generation batch size")
    p.add_argument("--ci", default="wilson", choices=["wilson", "bootstrap"])
    p.add_argument("--output", default=None, metavar="JSONL", help="write per-prompt records and the summary")
    p.add_argument("--examples", type=int, default=0, metavar="K", help="print K per-prompt verdicts")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klq judge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return parser


def format_table(summary: JudgementSummary, length: LengthControl | None = None) -> str:
    """The win-rate table: n, A wins, B wins, ties, invalid, win-rate of A [95% CI], position consistency,
    then, with `length`, the length-controlled win-rate of A [95% bootstrap CI] and the mean response
    lengths of A and B in words."""
    pct = f"{round(summary.confidence * 100):d}%"
    header = ["n", "A wins", "B wins", "ties", "invalid", f"win-rate A [{pct} CI]", "position-consistency"]
    if summary.win_rate is None:
        rate = "n/a (no valid verdicts)"
    else:
        rate = f"{summary.win_rate:.3f} [{summary.ci_low:.3f}, {summary.ci_high:.3f}]"
    if summary.position_consistency is None:
        consistency = "n/a"
    else:
        consistency = (f"{summary.position_consistency:.3f} "
                       f"({summary.consistent}/{summary.consistency_checked})")
    row = [str(summary.n), str(summary.wins_a), str(summary.wins_b), str(summary.ties), str(summary.invalid),
           rate, consistency]
    header += [f"length-controlled A [{pct} CI]", "words A / B"]
    if length is None:
        row += ["n/a (fewer than 2 valid)", "n/a"]
    else:
        row += [f"{length.win_rate:.3f} [{length.low:.3f}, {length.high:.3f}]",
                f"{length.mean_len_a:.1f} / {length.mean_len_b:.1f}"]
    return _aligned(header, [row])


def format_length_buckets(length: LengthControl) -> str:
    """A's win-rate by bucket of the length difference d = words of A's response - words of B's."""
    header = ["words A - B", "n", "mean d", "win-rate A [95% CI]"]
    rows = []
    for b in length.buckets:
        span = f"[{'-inf' if b.low is None else f'{b.low:g}'}, {'inf' if b.high is None else f'{b.high:g}'})"
        if b.win_rate is None:
            rows.append([span, "0", "", "n/a"])
        else:
            rows.append([span, str(b.n), f"{b.mean_diff:.1f}",
                         f"{b.win_rate:.3f} [{b.ci_low:.3f}, {b.ci_high:.3f}]"])
    return _aligned(header, rows)


def _aligned(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [header, *rows])


def _task_config(args: argparse.Namespace, run_cfg: Any):
    from klq.config import TaskConfig

    if run_cfg is not None and (args.task is None or args.task == run_cfg.task.name):
        base = run_cfg.task.model_dump()
    else:
        base = {"name": args.task or "builtin"}
    if args.dataset:
        base["dataset"] = args.dataset
    return TaskConfig.model_validate(base)


def _template(args: argparse.Namespace, task_name: str) -> str:
    from klq.judge.templates import resolve_template, template_for_task, validate_template

    if args.template and args.template.startswith("@"):
        return validate_template(Path(args.template[1:]).read_text())
    return resolve_template(args.template or template_for_task(task_name))


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """Run `klq judge`; `args` is a parsed Namespace (from `add_judge_parser`) or an argv list."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    from klq.judge.backends import JudgeAPIError, make_judge
    from klq.judge.generate import is_run_dir, read_run_config, resolve_policy
    from klq.judge.pipeline import judge_two_policies
    from klq.tasks import ensure_builtin_assets_if_used, load_task

    if args.n < 1:
        print("error: --n must be at least 1", file=sys.stderr)
        return 2
    try:
        run_cfg = read_run_config(args.a) if is_run_dir(args.a) else None
        if run_cfg is None and is_run_dir(args.b):
            run_cfg = read_run_config(args.b)
        if args.a == "reference":
            raise ValueError("--a cannot be 'reference'; put the run in --a and 'reference' in --b")
        policy_a = resolve_policy(args.a)
        policy_b = resolve_policy(args.b, reference_run=args.a)
        task_cfg = _task_config(args, run_cfg)
        names = [policy_a.model, policy_b.model, policy_a.tokenizer, policy_b.tokenizer, args.judge_model or ""]
        if args.judge == "reward_model" and not args.judge_model:
            names.append(run_cfg.model.reward if run_cfg else "builtin:reward")
        ensure_builtin_assets_if_used(task_cfg.name, names, log=lambda msg: print(msg, file=sys.stderr))
        task = load_task(task_cfg)
        prompts = task.prompts("eval")[: args.n]
        if len(prompts) < args.n:
            print(f"note: the task has only {len(prompts)} held-out prompts", file=sys.stderr)
        template = _template(args, task_cfg.name) if args.judge in ("openai", "local_hf") else None
        spec: dict[str, Any] = {"backend": args.judge}
        if args.judge == "reward_model":
            spec["model"] = args.judge_model or (run_cfg.model.reward if run_cfg else "builtin:reward")
        elif args.judge in ("local_hf", "openai") and args.judge_model:
            spec["model"] = args.judge_model
        elif args.judge == "local_hf":
            raise ValueError("--judge local_hf needs --judge-model (an HF causal LM directory or hub id)")
        if args.judge in ("local_hf", "reward_model"):
            spec["device"] = args.device
        judge = make_judge(spec, task=task if args.judge == "gold" else None)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if args.response_length:
        response_length = args.response_length
    elif run_cfg is not None:
        response_length = run_cfg.rollout.response_length
    elif task_cfg.name == "builtin":
        from klq.tasks.builtin import RESPONSE_LENGTH as response_length
    else:
        from klq.config import RolloutConfig

        response_length = RolloutConfig().response_length
    stops = run_cfg.rollout.stop_sequences if run_cfg else []

    def progress(done: int, total: int, _records: list) -> None:
        print(f"\rjudged {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    def generating(side: str, model: str) -> None:
        policy = policy_a if side == "A" else policy_b
        print(f"generating {len(prompts)} responses of {side}: {policy.description or model}", file=sys.stderr)

    try:
        result = judge_two_policies(
            prompts, (policy_a.model, policy_a.tokenizer), (policy_b.model, policy_b.tokenizer), judge, template,
            response_length=response_length, greedy=not args.sample, temperature=args.temperature,
            seed=args.seed, stop_sequences=stops, device=args.device, batch_size=args.batch_size,
            on_progress=progress, on_generate=generating, ci_method=args.ci,
        )
    except JudgeAPIError as err:
        print(f"\njudgement failed: {err}", file=sys.stderr)
        return 1
    finally:
        close = getattr(judge, "close", None)
        if close is not None:
            close()
    print(f"judge: {args.judge}{' (' + spec['model'] + ')' if spec.get('model') else ''}   task: {task_cfg.name}"
          f"   prompts: {len(prompts)}   decoding: {'sampled' if args.sample else 'greedy'}   seed: {args.seed}")
    print(f"A: {policy_a.description or policy_a.model}")
    print(f"B: {policy_b.description or policy_b.model}")
    length = _length_control(result.records, args.seed)
    if length is not None:
        print(f"win-rate of A by length difference (words; length preference phi = {length.phi:.3f}):")
        print(format_length_buckets(length))
    print(format_table(result.summary, length))
    for record in result.records[: max(0, args.examples)]:
        print(f"\n[{record.prompt_id}] {record.prompt}\n  A: {record.response_1}\n  B: {record.response_2}\n"
              f"  verdict {record.verdict} ({record.first.order}: {record.first.raw!r}; "
              f"{record.second.order}: {record.second.raw!r})")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as f:
            for record in result.records:
                f.write(json.dumps(record.to_dict()) + "\n")
            f.write(json.dumps({"summary": result.summary.to_dict(),
                                "length": None if length is None else length.to_dict()}) + "\n")
    return 0


def _length_control(records: list, seed: int) -> LengthControl | None:
    """The length diagnostics of the judged prompts (lengths in words, klq.judge.stats.word_count; the
    bootstrap seeded with --seed); None with fewer than two valid verdicts."""
    from klq.judge.stats import length_control_of_verdicts, word_count

    return length_control_of_verdicts(
        [r.verdict for r in records],
        [word_count(r.response_1) for r in records],
        [word_count(r.response_2) for r in records],
        seed=seed,
    )
