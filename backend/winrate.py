"""Win-rates with confidence intervals: pure functions, shared by the API and the judge.

Conventions (so that results are comparable across judgements):

* every judge call yields one verdict, expressed in terms of the *policies* (``"A"`` = policy A's
  response won), never of the positions in which the responses were shown;
* a tie counts half a win for each side; ``invalid`` verdicts (unparseable judge output) are excluded
  from the win-rate and counted separately, never as wins;
* the win-rate of A is ``(wins_a + ties / 2) / (wins_a + wins_b + ties)`` with a Wilson score interval;
* position consistency is the share of prompts, among those judged validly in both orders, whose two
  verdicts agree. A judge that always answers "the first one" scores 0 and its wins cancel out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any


def z_value(confidence: float = 0.95) -> float:
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` (successes may be fractional for ties).

    Returns (0.0, 1.0) when n == 0 (nothing is known).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class WinRate:
    wins_a: int
    wins_b: int
    ties: int
    invalid: int
    n_valid: int
    win_rate: float | None  # of policy A; None when there is no valid verdict
    ci_low: float | None
    ci_high: float | None
    confidence: float = 0.95
    position_consistency: float | None = None
    prompts: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def win_rate(
    wins_a: int, wins_b: int, ties: int = 0, invalid: int = 0, *, confidence: float = 0.95
) -> WinRate:
    n = wins_a + wins_b + ties
    if n == 0:
        return WinRate(wins_a, wins_b, ties, invalid, 0, None, None, None, confidence)
    successes = wins_a + ties / 2
    low, high = wilson_interval(successes, n, confidence)
    return WinRate(wins_a, wins_b, ties, invalid, n, successes / n, low, high, confidence)


def summarize(verdicts: Iterable[tuple[str, str, str]], *, confidence: float = 0.95) -> WinRate:
    """Summarise ``(prompt_id, order, verdict)`` triples; order is "ab" or "ba", verdict A/B/tie/invalid."""
    counts = {"A": 0, "B": 0, "tie": 0, "invalid": 0}
    by_prompt: dict[str, dict[str, str]] = defaultdict(dict)
    for prompt_id, order, verdict in verdicts:
        if verdict not in counts:
            raise ValueError(f"unknown verdict {verdict!r}")
        counts[verdict] += 1
        by_prompt[prompt_id][order] = verdict
    both = [
        v
        for v in by_prompt.values()
        if v.get("ab", "invalid") != "invalid" and v.get("ba", "invalid") != "invalid"
    ]
    consistency = sum(v["ab"] == v["ba"] for v in both) / len(both) if both else None
    result = win_rate(counts["A"], counts["B"], counts["tie"], counts["invalid"], confidence=confidence)
    return WinRate(**{**asdict(result), "position_consistency": consistency, "prompts": len(by_prompt)})
