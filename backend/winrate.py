"""Win-rates of stored judgements, with the judge library's conventions (klq.judge.stats / klq.judge.core).

One implementation of the statistics exists: ``klq.judge.stats`` (ties count half, invalid verdicts are
never wins and leave the denominator, 95% Wilson score interval). This module applies it to verdict rows
as the database keeps them, one row per (prompt, order) with the verdict already in policy space:

* a prompt counts once both orders ("ab" and "ba") are stored; its combined verdict is
  ``klq.judge.core.combine``'s (equal -> that verdict, different -> tie, any invalid -> invalid);
* position consistency is the share of prompts with two valid answers whose two answers agree, so a
  judge that always prefers the first position scores 0 and its "wins" cancel out as ties.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable

from klq.judge.core import combine
from klq.judge.stats import JudgementSummary, summarize, wilson_interval

__all__ = ["JudgementSummary", "summarize_rows", "wilson_interval"]


def summarize_rows(rows: Iterable[tuple[Hashable, str, str]], *, confidence: float = 0.95) -> JudgementSummary:
    """Summary of ``(prompt key, order, verdict)`` rows; prompts with only one order stored are pending.
    The key is the prompt_id within one judgement; pooling several, key by (judgement_id, prompt_id)."""
    by_prompt: dict[Hashable, dict[str, str]] = defaultdict(dict)
    for prompt_id, order, verdict in rows:
        by_prompt[prompt_id][order] = verdict
    combined: list[str] = []
    pairs: list[tuple[str, str]] = []
    for orders in by_prompt.values():
        if "ab" in orders and "ba" in orders:
            verdict, _consistent = combine(orders["ab"], orders["ba"])  # type: ignore[arg-type]
            combined.append(verdict)
            pairs.append((orders["ab"], orders["ba"]))
    return summarize(combined, pairs, confidence=confidence)
