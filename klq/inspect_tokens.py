"""`klq inspect RUN_DIR --step N`: a standalone run's stored samples token by token in the terminal.

Each response token gets a background colour by the chosen quantity (docs/ALGORITHMS.md "Per-token
quantities"): a diverging blue-white-red scale centred on 0 for the signed ones (k1, advantages, delta,
rewards: `DIVERGING_QUANTITIES`), a sequential white-to-purple scale from the smallest to the largest
value for the others (entropy, log-probs, values), one scale over all the samples shown, with a legend.
Without a terminal (a pipe, a file) or with --no-color (or $NO_COLOR): plain text, one token per line with
its value. Token pieces are shown as text: control characters (a newline, an escape) come out escaped, so
a token never drives the terminal.

Reads the run directory's samples.jsonl and sample_tokens.jsonl (klq.sinks.JSONLSink).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from klq.client.samples import DIVERGING_QUANTITIES
from klq.sinks import read_jsonl

RESET = "\x1b[0m"
BLUE, WHITE, RED, PURPLE = (33, 102, 172), (247, 247, 247), (178, 24, 43), (84, 39, 143)


class InspectError(ValueError):
    """What the user asked for is not in the run directory; the message says what is."""


def load_samples(run_dir: str | Path, step: int, kind: str = "eval") -> list[dict[str, Any]]:
    """The samples of ``kind`` at ``step`` that have a token record, each with its record under
    ``"tokens"`` (token_ids, tokens, quantities), ordered by sample index then prompt id."""
    run_dir = Path(run_dir)
    samples_path, tokens_path = run_dir / "samples.jsonl", run_dir / "sample_tokens.jsonl"
    if not samples_path.exists() or not tokens_path.exists():
        raise InspectError(
            f"{run_dir} has no samples.jsonl and sample_tokens.jsonl (not a klq train output?)"
        )
    records = {
        (r["kind"], r["step"], r["prompt_id"], r["sample_index"]): r
        for r in read_jsonl(tokens_path)
        if r["kind"] == kind
    }
    samples = []
    for s in read_jsonl(samples_path):
        key = (s.get("kind", "eval"), s["step"], s["prompt_id"], s.get("sample_index", 0))
        if key in records:
            samples.append({**s, "tokens": records[key]})
    at_step = sorted(
        (s for s in samples if s["step"] == step), key=lambda s: (s["sample_index"], s["prompt_id"])
    )
    if not at_step:
        steps = sorted({s["step"] for s in samples})
        raise InspectError(
            f"no {kind} samples with token records at step {step}; steps that have them: "
            f"{', '.join(map(str, steps)) or 'none'}"
        )
    return at_step


def printable(piece: str) -> str:
    """A token's text with control characters escaped (newline as \\n, ESC as \\x1b, ...)."""
    out = []
    for ch in piece:
        code = ord(ch)
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 32 or 127 <= code < 160:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def colour_scale(quantity: str, values: list[float]) -> tuple[float, float]:
    """(low, high) of the scale: symmetric about 0 for a diverging quantity, else min and max."""
    finite = [v for v in values if v is not None and math.isfinite(v)] or [0.0]
    if quantity in DIVERGING_QUANTITIES:
        top = max(abs(v) for v in finite) or 1.0
        return -top, top
    low, high = min(finite), max(finite)
    return low, high if high > low else low + 1.0


def colour_of(quantity: str, value: float | None, scale: tuple[float, float]) -> tuple[int, int, int]:
    """The background colour of ``value`` on ``scale`` (grey for a missing value)."""
    if value is None or not math.isfinite(value):
        return (160, 160, 160)
    low, high = scale
    t = min(1.0, max(0.0, (value - low) / (high - low)))
    if quantity in DIVERGING_QUANTITIES:
        return _mix(WHITE, RED, 2 * t - 1) if t >= 0.5 else _mix(WHITE, BLUE, 1 - 2 * t)
    return _mix(WHITE, PURPLE, t)


def _painted(text: str, rgb: tuple[int, int, int]) -> str:
    ink = "0;0;0" if sum(rgb) > 360 else "255;255;255"  # dark text on light backgrounds, light on dark
    return f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m\x1b[38;2;{ink}m{text}{RESET}"


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:+.4g}"


def _header(index: int, s: dict[str, Any]) -> str:
    gold = "" if s.get("gold_score") is None else f"  gold {s['gold_score']:+.3f}"
    where = f"rollout {s['sample_index']}" if s["kind"] == "train" else "eval"
    return (
        f"[{index}] step {s['step']} {where}  prompt {s['prompt_id']}  score {s['score']:+.3f}{gold}  "
        f"KL {s['kl']:.3f}  {len(s['tokens']['token_ids'])} tokens\n"
        f"prompt:   {printable(s['prompt'])}"
    )


def render(samples: list[tuple[int, dict[str, Any]]], quantity: str, colour: bool) -> str:
    """The samples (with their listing index) token by token, coloured by ``quantity`` (a legend
    first), or as plain text: one line per token, its index, text and value."""
    values = [v for _, s in samples for v in s["tokens"]["quantities"][quantity]]
    scale = colour_scale(quantity, values)
    lines = []
    if colour:
        kind = "diverging, centred on 0" if quantity in DIVERGING_QUANTITIES else "sequential"
        steps = [scale[0] + (scale[1] - scale[0]) * i / 8 for i in range(9)]
        swatches = "".join(_painted("  ", colour_of(quantity, v, scale)) for v in steps)
        lines.append(
            f"{quantity} ({kind}): {_fmt(scale[0])} {swatches} {_fmt(scale[1])}"
            + ("   missing: " + _painted("  ", colour_of(quantity, None, scale)) if None in values else "")
        )
    for index, s in samples:
        lines += ["", _header(index, s)]
        record = s["tokens"]
        pieces, qs = record["tokens"], record["quantities"][quantity]
        if colour:
            lines.append(
                "response: "
                + "".join(
                    _painted(printable(p), colour_of(quantity, v, scale))
                    for p, v in zip(pieces, qs, strict=True)
                )
            )
        else:
            lines.append(f"{'t':>4}  {'token':<20} {quantity}")
            lines += [
                f"{t:>4}  {printable(p):<20} {_fmt(v)}"
                for t, (p, v) in enumerate(zip(pieces, qs, strict=True))
            ]
    return "\n".join(lines) + "\n"


def inspect_run(
    run_dir: str | Path,
    step: int,
    quantity: str = "k1",
    sample: int | None = None,
    kind: str = "eval",
    colour: bool = False,
    out: TextIO | None = None,
) -> None:
    """Print the samples of ``kind`` at ``step`` (or the ``sample``-th of them) coloured by ``quantity``.
    Raises InspectError naming what the run has when the step, the sample or the quantity is not there."""
    samples = list(enumerate(load_samples(run_dir, step, kind)))
    if sample is not None:
        if not 0 <= sample < len(samples):
            raise InspectError(
                f"--sample {sample}: step {step} has {len(samples)} {kind} samples (0..{len(samples) - 1})"
            )
        samples = [samples[sample]]
    names = list(samples[0][1]["tokens"]["quantities"])
    if quantity not in names:
        raise InspectError(f"no quantity {quantity!r} in these samples; they have: {', '.join(names)}")
    (out or sys.stdout).write(render(samples, quantity, colour))


def cmd_inspect(args: argparse.Namespace) -> int:
    colour = not args.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()
    try:
        inspect_run(args.run_dir, args.step, args.quantity, args.sample, args.kind, colour)
    except InspectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def add_inspect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="a standalone run's samples token by token, coloured by a per-token quantity"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `klq train` output directory")
    p.add_argument(
        "--step", type=int, required=True, help="the eval step (or, with --kind train, the iteration)"
    )
    p.add_argument(
        "--quantity",
        default="k1",
        help="logp, logp_ref, k1 (default), k3, entropy, value; KLQ: q, delta, target; PPO: reward, "
        "advantage_raw, advantage, return; RLOO/GRPO: advantage",
    )
    p.add_argument("--sample", type=int, help="only the I-th sample of the step (as numbered in the listing)")
    p.add_argument(
        "--kind",
        choices=("eval", "train"),
        default="eval",
        help="eval: held-out samples (default); train: the recorded training rollouts",
    )
    p.add_argument("--no-color", action="store_true", help="plain text even on a terminal")
    p.set_defaults(func=cmd_inspect)
