"""Verdicts, win-rates with Wilson, bootstrap and Student-t intervals, verdict counts, position
consistency, and `summarize` (a `JudgementSummary`); the conventions are `klq.judge.stats`'s."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Verdict = Literal["A", "B", "tie", "invalid"]
VERDICTS: tuple[Verdict, ...] = ("A", "B", "tie", "invalid")
CIMethod = Literal["wilson", "bootstrap"]

# Per-prompt score of a valid verdict, from A's side.
VERDICT_SCORE = {"A": 1.0, "tie": 0.5, "B": 0.0}


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def z_value(confidence: float = 0.95) -> float:
    """Two-sided standard-normal quantile ``scipy.stats.norm.ppf(0.5 + confidence / 2)``: 1.959964 for 95%."""
    _check_confidence(confidence)
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion successes / n (successes may be fractional: ties = 0.5).

    Returns (low, high) within [0, 1]. Raises ValueError when n < 1 (no valid comparisons: no interval).
    """
    if n < 1:
        raise ValueError("the Wilson interval needs at least one valid comparison")
    if not 0 <= successes <= n:
        raise ValueError(f"successes ({successes}) must lie in [0, n={n}]")
    z = z_value(confidence)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def t_value(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t quantile ``scipy.stats.t.ppf(0.5 + confidence / 2, df)``: the t with
    P(|T| <= t) = confidence (12.706 for df=1, 2.776 for df=4 at 95%). ``df`` must be a positive integer."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    _check_confidence(confidence)
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, int(df)))


def student_t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (e.g. one final reward per seed): mean +- t * s / sqrt(n)
    with s the sample standard deviation (n - 1) and t = t_value(n - 1). Raises ValueError when n < 2."""
    n = len(values)
    if n < 2:
        raise ValueError("the Student-t interval needs at least two values")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_value(n - 1, confidence) * sd / math.sqrt(n)
    return mean - half, mean + half


def _percentile_bootstrap(
    data: tuple[Any, ...],
    statistic: Any,
    *,
    confidence: float,
    n_resamples: int,
    seed: int,
    vectorized: bool,
    paired: bool = False,
    batch: int | None = None,
) -> tuple[Any, Any]:
    """(low, high) of `scipy.stats.bootstrap`'s percentile interval, resampling from default_rng(seed).

    `data` is a tuple of equal-length 1-D arrays; with ``paired=True`` they are resampled together (one index
    per unit: a prompt's score and lengths, a comparison's two policies and score). `statistic` returns a
    scalar or a 1-D array (one interval per entry); a NaN anywhere in its bootstrap distribution gives NaN.
    """
    import numpy as np
    from scipy.stats import bootstrap

    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    result = bootstrap(
        data,
        statistic,
        n_resamples=n_resamples,
        batch=batch,
        vectorized=vectorized,
        paired=paired,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return result.confidence_interval.low, result.confidence_interval.high


def bootstrap_interval(
    scores: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-prompt `scores` (1, 0.5 or 0), seeded.

    `scipy.stats.bootstrap` in batches of at most 2,000,000 drawn indices (bounded memory); one score gives
    (score, score), since every resample of it is that score.
    """
    import numpy as np

    if len(scores) < 1:
        raise ValueError("the bootstrap interval needs at least one valid comparison")
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    values = np.asarray(scores, dtype=np.float64)
    if len(values) == 1:
        return float(values[0]), float(values[0])
    low, high = _percentile_bootstrap(
        (values,),
        np.mean,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        vectorized=True,
        batch=max(1, 2_000_000 // len(values)),
    )
    return float(low), float(high)


def count_verdicts(verdicts: Iterable[str]) -> dict[str, int]:
    """{"A": .., "B": .., "tie": .., "invalid": ..}; anything that is not A, B or tie counts as invalid."""
    counts = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        counts[v if v in counts else "invalid"] += 1
    return counts


def position_consistency(pairs: Iterable[tuple[str, str]]) -> tuple[float | None, int, int]:
    """(rate, agreeing, checked) over pairs of per-order verdicts already mapped to policies.

    A pair is checked when neither verdict is invalid; it agrees when both are equal ("A"/"A", "B"/"B" or
    "tie"/"tie"). rate is None when nothing could be checked.
    """
    agree = checked = 0
    for first, second in pairs:
        if first not in VERDICT_SCORE or second not in VERDICT_SCORE:
            continue
        checked += 1
        agree += first == second
    return (agree / checked if checked else None), agree, checked


@dataclass
class JudgementSummary:
    """Counts, A's win-rate with its confidence interval, and the position-consistency rate.

    `n` is the number of prompts judged; `valid` = wins_a + wins_b + ties. `win_rate` (of policy A, ties
    counting half) and the interval are None when no verdict is valid; so is `position_consistency` when
    no prompt had two valid answers.
    """

    n: int
    wins_a: int
    wins_b: int
    ties: int
    invalid: int
    win_rate: float | None
    ci_low: float | None
    ci_high: float | None
    ci_method: CIMethod = "wilson"
    confidence: float = 0.95
    position_consistency: float | None = None
    consistent: int = 0  # prompts whose two orders agreed
    consistency_checked: int = 0  # prompts with two valid answers

    @property
    def valid(self) -> int:
        return self.wins_a + self.wins_b + self.ties

    @property
    def win_rate_b(self) -> float | None:
        return None if self.win_rate is None else 1.0 - self.win_rate

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["valid"] = self.valid
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JudgementSummary:
        fields = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in fields})


def summarize(
    verdicts: Sequence[str],
    order_pairs: Iterable[tuple[str, str]] = (),
    method: CIMethod = "wilson",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> JudgementSummary:
    """A `JudgementSummary` from the combined per-prompt verdicts (policy space: "A" = policy A wins) and,
    for position consistency, the per-prompt pairs of per-order verdicts (also in policy space)."""
    if method not in ("wilson", "bootstrap"):
        raise ValueError(f"unknown interval method {method!r}: expected 'wilson' or 'bootstrap'")
    counts = count_verdicts(verdicts)
    valid = counts["A"] + counts["B"] + counts["tie"]
    win_rate = low = high = None
    if valid:
        successes = counts["A"] + 0.5 * counts["tie"]
        win_rate = successes / valid
        if method == "wilson":
            low, high = wilson_interval(successes, valid, confidence)
        else:
            scores = [VERDICT_SCORE[v] for v in verdicts if v in VERDICT_SCORE]
            low, high = bootstrap_interval(scores, confidence, n_resamples, seed)
    rate, agree, checked = position_consistency(order_pairs)
    return JudgementSummary(
        n=len(verdicts),
        wins_a=counts["A"],
        wins_b=counts["B"],
        ties=counts["tie"],
        invalid=counts["invalid"],
        win_rate=win_rate,
        ci_low=low,
        ci_high=high,
        ci_method=method,
        confidence=confidence,
        position_consistency=rate,
        consistent=agree,
        consistency_checked=checked,
    )
