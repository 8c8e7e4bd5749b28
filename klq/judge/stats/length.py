"""Length diagnostics: A's win-rate by length-difference bucket and the length-controlled win-rate
(AlpacaEval 2's GLM), and the length unit of `klq judge` and the API (`word_count`); the conventions are
`klq.judge.stats`'s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from klq.judge.stats.winrate import VERDICT_SCORE, _percentile_bootstrap, wilson_interval

# Ridge on the GLM intercept: only so that an all-A (or all-B) record has a finite optimum (sigmoid(theta) is
# then 1 - 1e-5 instead of theta running off to infinity); it moves no realistic estimate.
_LC_THETA_L2 = 1e-6


def _valid_scores_and_diffs(
    scores: Sequence[float | None], len_a: Sequence[float], len_b: Sequence[float]
) -> tuple[Any, Any, Any, Any, int]:
    """(s, d, len_a, len_b, invalid) as float arrays over the valid prompts: s the score in [0, 1], d =
    len_a - len_b. A score of None or NaN is an invalid verdict and is dropped with its lengths."""
    import numpy as np

    if not len(scores) == len(len_a) == len(len_b):
        sizes = f"{len(scores)}, {len(len_a)}, {len(len_b)}"
        raise ValueError(f"scores, len_a and len_b must have one entry per prompt ({sizes})")
    s = np.array([np.nan if v is None else v for v in scores], dtype=np.float64)
    la = np.asarray(len_a, dtype=np.float64)
    lb = np.asarray(len_b, dtype=np.float64)
    keep = ~np.isnan(s)
    s, la, lb = s[keep], la[keep], lb[keep]
    if ((s < 0) | (s > 1)).any():
        raise ValueError("scores must lie in [0, 1] (1 = A wins, 0.5 = tie, 0 = B wins) or be None (invalid)")
    if not (np.isfinite(la).all() and np.isfinite(lb).all()):
        raise ValueError("response lengths must be finite numbers")
    return s, la - lb, la, lb, int((~keep).sum())


@dataclass
class LengthBucket:
    """The prompts whose length difference ``d = len_A - len_B`` lies in ``[low, high)`` (None: unbounded),
    with A's win-rate among them (ties half) and its Wilson interval; None when the bucket is empty."""

    low: float | None
    high: float | None
    n: int
    mean_diff: float | None
    win_rate: float | None
    ci_low: float | None
    ci_high: float | None


def length_buckets(
    scores: Sequence[float | None],
    len_a: Sequence[float],
    len_b: Sequence[float],
    n_buckets: int = 4,
    bucket_edges: Sequence[float] | None = None,
    confidence: float = 0.95,
) -> list[LengthBucket]:
    """A's win-rate by bucket of ``d = len_A - len_B`` over the valid prompts (score None/NaN = invalid).

    `bucket_edges` are interior cut points (sorted, e.g. ``(-50, 0, 50)`` gives d < -50, [-50, 0), [0, 50),
    d >= 50); by default the cuts are the ``n_buckets``-quantiles of d (duplicates merged, so heavily tied
    differences give fewer buckets). Every valid prompt falls in exactly one bucket.
    """
    import numpy as np

    s, d, _, _, _ = _valid_scores_and_diffs(scores, len_a, len_b)
    if bucket_edges is None:
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be at least 1, got {n_buckets}")
        cuts = np.unique(np.quantile(d, np.linspace(0, 1, n_buckets + 1)[1:-1])) if len(d) else np.empty(0)
    else:
        cuts = np.asarray(bucket_edges, dtype=np.float64)
        if not np.isfinite(cuts).all() or (np.diff(cuts) <= 0).any():
            raise ValueError("bucket_edges must be finite and strictly increasing")
    which = np.searchsorted(cuts, d, side="right")  # bucket i holds cuts[i-1] <= d < cuts[i]
    bounds = [None, *(float(c) for c in cuts), None]
    buckets = []
    for i in range(len(cuts) + 1):
        member = which == i
        n = int(member.sum())
        rate = low = high = mean_diff = None
        if n:
            successes = float(s[member].sum())
            rate, mean_diff = successes / n, float(d[member].mean())
            low, high = wilson_interval(min(successes, n), n, confidence)
        buckets.append(LengthBucket(bounds[i], bounds[i + 1], n, mean_diff, rate, low, high))
    return buckets


def _fit_length_glm(s: Any, d: Any, l2: float, x0: Any = None) -> tuple[float, float, float]:
    """(theta, phi, sd): the weighted logistic fit of P(A) = sigmoid(theta + phi * tanh(d / sd)).

    Each prompt is two rows, y = 1 with weight s and y = 0 with weight 1 - s (a tie: half a row each), so the
    loss is the mean of softplus(eta) - s * eta, plus ``l2 / 2 * phi^2`` (and `_LC_THETA_L2` on theta),
    minimised by Newton-CG with the analytic gradient and Hessian (convex: one optimum).
    ``sd`` is the sample standard deviation of d (ddof = 1, as AlpacaEval's pandas ``std``); when d has no
    spread (sd = 0) the length term is dropped (phi = 0) and sigmoid(theta) is the raw win-rate.
    """
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import expit, logit

    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)

    def loss(params: Any) -> tuple[float, Any]:
        theta, phi = params
        eta = theta + phi * x
        g = expit(eta) - s
        value = np.mean(np.logaddexp(0.0, eta) - s * eta) + 0.5 * (_LC_THETA_L2 * theta**2 + l2 * phi**2)
        return float(value), np.array([g.mean() + _LC_THETA_L2 * theta, (g * x).mean() + l2 * phi])

    def hessian(params: Any) -> Any:
        p = expit(params[0] + params[1] * x)
        w = p * (1 - p)
        wx = float((w * x).mean())
        return np.array([[w.mean() + _LC_THETA_L2, wx], [wx, float((w * x * x).mean()) + l2]])

    if x0 is None:
        x0 = (float(logit(np.clip(s.mean(), 1e-3, 1 - 1e-3))), 0.0)
    fit = minimize(
        loss,
        np.asarray(x0, dtype=np.float64),
        jac=True,
        hess=hessian,
        method="Newton-CG",
        options={"xtol": 1e-10},
    )
    return float(fit.x[0]), float(fit.x[1]), sd


@dataclass
class LengthControl:
    """Length diagnostics of one A-vs-B judgement.

    `win_rate` is the length-controlled win-rate of A, sigmoid(theta) of `_fit_length_glm` (what the judge
    would say if both responses had the same length), with its percentile bootstrap interval
    [`low`, `high`] over prompts (the whole fit, sd included, is redone per resample). `raw_win_rate` and
    [`raw_low`, `raw_high`] are the plain win-rate and its Wilson interval on the same prompts. `phi` > 0:
    the judge prefers the longer response; `length_scale` is sd(len_A - len_B). `n` counts valid prompts,
    `invalid` the dropped ones; mean lengths and buckets are over the valid prompts too.
    """

    win_rate: float
    low: float
    high: float
    raw_win_rate: float
    raw_low: float
    raw_high: float
    theta: float
    phi: float
    length_scale: float
    mean_len_a: float
    mean_len_b: float
    n: int
    invalid: int
    buckets: list[LengthBucket]
    confidence: float = 0.95
    n_resamples: int = 1000
    seed: int = 0
    l2: float = 1e-3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def length_controlled_win_rate(
    scores: Sequence[float | None],
    len_a: Sequence[float],
    len_b: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    n_buckets: int = 4,
    bucket_edges: Sequence[float] | None = None,
    l2: float = 1e-3,
) -> LengthControl:
    """AlpacaEval 2's length-controlled win-rate of A, with mean lengths and `length_buckets`.

    `scores` has one entry per prompt (``VERDICT_SCORE.get(verdict)``: 1, 0.5, 0, or None for an invalid
    verdict, which is dropped with its lengths); `len_a`/`len_b` are the two responses' lengths in any unit
    (tokens, characters). The GLM is AlpacaEval's ``tanh(std_delta_len)`` term plus an intercept, without its
    instruction-difficulty term (it needs AlpacaEval's own data) and with a small fixed L2 ``l2 / 2 * phi^2``
    on the mean loss instead of its cross-validated L1: it keeps phi finite when the length difference
    separates the verdicts (A wins exactly when longer) and hardly moves phi otherwise. theta is not
    shrunk towards 0.5 beyond a 1e-6 ridge. Needs at least two valid prompts (the bootstrap).
    """
    from scipy.special import expit

    s, d, la, lb, invalid = _valid_scores_and_diffs(scores, len_a, len_b)
    if len(s) < 2:
        raise ValueError("the length-controlled win-rate needs at least two valid prompts")
    theta, phi, sd = _fit_length_glm(s, d, l2)

    def lc_rate(s_b: Any, d_b: Any) -> float:
        return float(expit(_fit_length_glm(s_b, d_b, l2, x0=(theta, phi))[0]))

    low, high = _percentile_bootstrap(
        (s, d),
        lc_rate,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        vectorized=False,
        paired=True,
    )
    successes = float(s.sum())
    raw_low, raw_high = wilson_interval(min(successes, len(s)), len(s), confidence)
    return LengthControl(
        win_rate=float(expit(theta)),
        low=float(low),
        high=float(high),
        raw_win_rate=successes / len(s),
        raw_low=raw_low,
        raw_high=raw_high,
        theta=theta,
        phi=phi,
        length_scale=sd,
        mean_len_a=float(la.mean()),
        mean_len_b=float(lb.mean()),
        n=len(s),
        invalid=invalid,
        buckets=length_buckets(s, la, lb, n_buckets, bucket_edges, confidence),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        l2=l2,
    )


def word_count(text: str) -> int:
    """A response's length in the length diagnostics of `klq judge` and the API: its number of words,
    ``len(text.split())`` (runs of whitespace separate words). Words, not tokens: a stored judgement keeps
    the texts only, and the two policies (and the judge) may use different tokenizers."""
    return len(text.split())


def length_control_of_verdicts(
    verdicts: Sequence[str], len_a: Sequence[float], len_b: Sequence[float], **options: Any
) -> LengthControl | None:
    """`length_controlled_win_rate` of per-prompt combined verdicts (policy space: "A", "B", "tie",
    "invalid"; scored by `VERDICT_SCORE`, invalid ones dropped) and the responses' lengths; `options` are
    its keyword arguments. None when fewer than two verdicts are valid (no fit, no bootstrap)."""
    scores = [VERDICT_SCORE.get(v) for v in verdicts]
    if sum(s is not None for s in scores) < 2:
        return None
    return length_controlled_win_rate(scores, len_a, len_b, **options)
