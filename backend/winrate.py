"""Win-rates of stored judgements, with the judge library's conventions (klq.judge.stats / klq.judge.core).

One implementation of the statistics exists: ``klq.judge.stats`` (ties count half, invalid verdicts are
never wins and leave the denominator, 95% Wilson score interval). This module applies it to verdict rows
as the database keeps them, one row per (prompt, order) with the verdict already in policy space:

* a prompt counts once both orders ("ab" and "ba") are stored; its combined verdict is
  ``klq.judge.core.combine``'s (equal -> that verdict, different -> tie, any invalid -> invalid);
* a human judgement's prompt (``single_order=True``) has one row, the vote on the order it was shown in,
  which is its verdict; it has no position consistency;
* position consistency is the share of prompts with two valid answers whose two answers agree, so a
  judge that always prefers the first position scores 0 and its "wins" cancel out as ties;
* the length diagnostics (``length_diagnostics``) are ``klq.judge.stats.length_controlled_win_rate`` over
  the combined verdicts and the two responses' lengths in words (``klq.judge.stats.word_count``), computed
  when read. Its bootstrap refits the model 1000 times (about a second), so the results are memoised by
  their inputs (the same verdicts and lengths give the same, seeded, result): a finished judgement is
  fitted once per server process, a running one again when new verdicts arrive.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from klq.judge.core import combine
from klq.judge.stats import (
    JudgementSummary,
    LengthControl,
    length_control_of_verdicts,
    summarize,
    wilson_interval,
    word_count,
)

from .schemas import LengthBucketOut, LengthDiagnosticsOut

__all__ = [
    "JudgementSummary",
    "PromptVerdict",
    "by_prompt",
    "length_diagnostics",
    "summarize_rows",
    "wilson_interval",
]

LC_RESAMPLES = 1000  # bootstrap resamples of the length-controlled win-rate (the library's default)
LC_SEED = 0
LC_CACHE_SIZE = 1024  # length diagnostics kept per server process


class PromptVerdict(NamedTuple):
    """One prompt whose two orders are stored: the combined verdict, the two orders' verdicts (None: a
    human vote, one order), and the columns of its "ab" row (a vote's one row) after the verdict (e.g.
    the two responses)."""

    verdict: str
    orders: tuple[str, str] | None
    extra: tuple[Any, ...]


def by_prompt(rows: Iterable[Sequence[Any]], *, single_order: bool = False) -> dict[Hashable, PromptVerdict]:
    """Rows ``(prompt key, order, verdict, *extra)`` combined per prompt key, in the order the keys first
    appear; prompts with only one order stored are pending and left out. ``single_order``: the rows are
    human votes, one per prompt, each the prompt's verdict as it stands."""
    orders: dict[Hashable, dict[str, Sequence[Any]]] = defaultdict(dict)
    for row in rows:
        orders[row[0]][row[1]] = row
    out: dict[Hashable, PromptVerdict] = {}
    for key, stored in orders.items():
        if single_order:
            row = next(iter(stored.values()))
            out[key] = PromptVerdict(row[2], None, tuple(row[3:]))
        elif "ab" in stored and "ba" in stored:
            ab, ba = stored["ab"][2], stored["ba"][2]
            verdict, _consistent = combine(ab, ba)  # type: ignore[arg-type]
            out[key] = PromptVerdict(verdict, (ab, ba), tuple(stored["ab"][3:]))
    return out


def summarize_rows(
    rows: Iterable[Sequence[Any]], *, confidence: float = 0.95, single_order: bool = False
) -> JudgementSummary:
    """Summary of ``(prompt key, order, verdict)`` rows; prompts with only one order stored are pending
    (``single_order``: human votes, see ``by_prompt``). The key is the prompt_id within one judgement;
    pooling several, key by (judgement_id, prompt_id)."""
    prompts = by_prompt(rows, single_order=single_order).values()
    pairs = [p.orders for p in prompts if p.orders is not None]
    return summarize([p.verdict for p in prompts], pairs, confidence=confidence)


def length_diagnostics(
    rows: Iterable[Sequence[Any]], *, single_order: bool = False
) -> LengthDiagnosticsOut | None:
    """The length diagnostics of ``(prompt key, order, verdict, response_a, response_b)`` rows (keys and
    ``single_order`` as in ``summarize_rows``); None while fewer than two prompts have a valid verdict.
    Prompts are taken in key order, so the seeded bootstrap does not depend on the order the rows came in."""
    prompts = sorted(by_prompt(rows, single_order=single_order).items())
    verdicts = tuple(p.verdict for _, p in prompts)
    len_a = tuple(word_count(p.extra[0]) for _, p in prompts)
    len_b = tuple(word_count(p.extra[1]) for _, p in prompts)
    return _length_diagnostics(verdicts, len_a, len_b)


@lru_cache(maxsize=LC_CACHE_SIZE)
def _length_diagnostics(
    verdicts: tuple[str, ...], len_a: tuple[int, ...], len_b: tuple[int, ...]
) -> LengthDiagnosticsOut | None:
    lc = length_control_of_verdicts(verdicts, len_a, len_b, n_resamples=LC_RESAMPLES, seed=LC_SEED)
    return None if lc is None else length_out(lc)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def length_out(lc: LengthControl) -> LengthDiagnosticsOut:
    return LengthDiagnosticsOut(
        prompts=lc.n,
        mean_length_a=lc.mean_len_a,
        mean_length_b=lc.mean_len_b,
        lc_win_rate=_finite(lc.win_rate),
        lc_ci_low=_finite(lc.low),
        lc_ci_high=_finite(lc.high),
        length_preference=_finite(lc.phi),
        length_scale=lc.length_scale,
        buckets=[
            LengthBucketOut(
                low=b.low,
                high=b.high,
                prompts=b.n,
                mean_diff=b.mean_diff,
                win_rate=b.win_rate,
                ci_low=b.ci_low,
                ci_high=b.ci_high,
            )
            for b in lc.buckets
        ],
    )
