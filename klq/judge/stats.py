"""Win-rates with confidence intervals, position consistency, verdict counts, and the diagnostics that make a
judgement trustworthy: length control, Bradley-Terry ratings of many policies, and agreement between raters.

Conventions (used everywhere in `klq.judge`):

- A judgement compares policy A with policy B; each prompt ends with one combined verdict:
  ``"A"`` (policy A preferred), ``"B"``, ``"tie"`` or ``"invalid"`` (see `klq.judge.core`).
- **Ties count half.** The win-rate of A is ``(wins_A + 0.5 * ties) / valid`` where
  ``valid = wins_A + wins_B + ties``. Invalid verdicts are left out of the numerator *and* the denominator:
  they are never wins for either side, and are reported separately as a count. The per-prompt *score* of
  A is `VERDICT_SCORE`: 1 for an A win, 0.5 for a tie, 0 for a B win (None for an invalid verdict).
- **Wilson score interval** (default): the Wilson interval of that proportion with ``n = valid``,

      centre    = (p + z^2 / (2n)) / (1 + z^2 / n)
      half-width = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

  with ``z = scipy.stats.norm.ppf(0.975) = 1.959964`` for 95%. (A tie is therefore treated as half a
  success; with ties this is the usual approximation, not an exact binomial interval.)
- **Bootstrap** (``method="bootstrap"``): percentile interval of the mean per-prompt score over
  ``n_resamples`` resamples of the valid prompts with replacement (`scipy.stats.bootstrap`, percentile
  method), drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same interval. Every
  bootstrap in this module is a seeded percentile bootstrap over the independent unit (prompts, comparisons
  or items); BCa is not used because most statistics here need a refit per jackknife sample.
- **Position consistency**: of the prompts whose two orders both gave a valid answer, the fraction where
  both orders prefer the same policy (or both say tie). A judge that always answers "A" scores 0.
- **Length control** (`length_controlled_win_rate`, AlpacaEval 2's GLM without its instruction-difficulty
  term): ``P(A preferred) = sigmoid(theta + phi * tanh(d / sd(d)))`` with ``d = len_A - len_B`` per prompt and
  ``sd`` its sample standard deviation; the length-controlled win-rate is the prediction at ``d = 0``,
  ``sigmoid(theta)``.
- **Bradley-Terry** (`bradley_terry`): ``P(i beats j) = sigmoid(r_i - r_j)``, reported on the Elo scale
  ``1000 + 400 / ln(10) * r`` (shifted so that an anchor policy, or the mean, sits at 1000).
- **Agreement** (`rater_agreement`): percent agreement and Cohen's kappa between two raters' A/B/tie labels.

SciPy is imported inside the functions that need it, so importing `klq.judge` stays cheap.
"""

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


# --------------------------------------------------------------------------------------- length diagnostics

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


# ------------------------------------------------------------------------------ Bradley-Terry (Elo scale)

ELO_PER_LOGIT = 400 / math.log(10)  # 173.7 Elo points per logit: a 400-point gap is 10:1 odds


def elo_win_probability(rating_a: float, rating_b: float) -> float:
    """P(A beats B) under Bradley-Terry on the Elo scale: 1 / (1 + 10^((rating_b - rating_a) / 400))."""
    return 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / 400.0))


@dataclass
class BradleyTerryRating:
    """One policy's Bradley-Terry rating on the Elo scale with its percentile bootstrap interval, and its
    record: `comparisons` = wins + ties + losses (from this policy's side)."""

    policy: str
    rating: float
    low: float
    high: float
    comparisons: int
    wins: int
    ties: int
    losses: int


def _fit_bradley_terry(ia: Any, ib: Any, s: Any, k: int, l2: float, x0: Any = None) -> Any:
    """Logits r (k,) maximising sum_rows [s log sigmoid(r_a - r_b) + (1 - s) log sigmoid(r_b - r_a)] -
    l2 / 2 * |r|^2 by Newton-CG with the analytic gradient and Hessian (convex: one optimum). The likelihood
    only sees differences, so the ridge alone fixes the level: at the optimum sum(r) = 0 (per connected
    group of policies)."""
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import expit

    def loss(r: Any) -> tuple[float, Any]:
        eta = r[ia] - r[ib]
        g = expit(eta) - s
        value = np.sum(np.logaddexp(0.0, eta) - s * eta) + 0.5 * l2 * float(r @ r)
        grad = np.bincount(ia, g, minlength=k) - np.bincount(ib, g, minlength=k) + l2 * r
        return float(value), grad

    def hessian(r: Any) -> Any:  # sum_rows w (e_a - e_b)(e_a - e_b)^T + l2 I, w = p (1 - p)
        p = expit(r[ia] - r[ib])
        w = p * (1 - p)
        h = np.bincount(ia * k + ia, w, k * k) + np.bincount(ib * k + ib, w, k * k)
        h -= np.bincount(ia * k + ib, w, k * k) + np.bincount(ib * k + ia, w, k * k)
        return h.reshape(k, k) + l2 * np.eye(k)

    start = np.zeros(k) if x0 is None else np.asarray(x0, dtype=np.float64)
    fit = minimize(loss, start, jac=True, hess=hessian, method="Newton-CG", options={"xtol": 1e-10})
    return fit.x


def bradley_terry(
    comparisons: Iterable[tuple[str, str, float]],
    *,
    anchor: str | None = None,
    anchor_rating: float = 1000.0,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    l2: float = 1e-2,
) -> list[BradleyTerryRating]:
    """Bradley-Terry ratings of every policy in `comparisons`, best first.

    Each comparison is ``(policy_a, policy_b, score_a)`` with score_a 1 (A won), 0.5 (tie: half a win each
    way, as in the win-rate) or 0; invalid verdicts are left out by the caller. The MLE of the logits uses
    `_fit_bradley_terry` with ``l2`` = 0.01 on the summed log-likelihood, i.e. a N(0, 10^2) prior per logit:
    negligible next to a few comparisons, but it keeps a perfect record (all wins) finite and gives policies
    with no path of comparisons between them a defined (mean-zero) level. Ratings are ``ELO_PER_LOGIT * r``
    shifted so that `anchor` (e.g. the SFT/reference policy) is at `anchor_rating`, or, without an anchor,
    so that the mean rating is `anchor_rating`. [`low`, `high`] is the percentile bootstrap interval over
    comparisons (resampled with replacement, refitted and re-anchored each time, so the anchor's own
    interval is a point and every other interval is relative to it). Needs at least two comparisons.
    """
    import numpy as np

    rows = list(comparisons)
    for a, b, score in rows:
        if a == b:
            raise ValueError(f"a policy cannot be compared with itself ({a!r})")
        if score not in (0.0, 0.5, 1.0):
            raise ValueError(f"score_a must be 1, 0.5 or 0, got {score!r} for ({a!r}, {b!r})")
    if len(rows) < 2:
        raise ValueError("Bradley-Terry ratings need at least two comparisons")
    policies = sorted({p for a, b, _ in rows for p in (a, b)})
    if anchor is not None and anchor not in policies:
        raise ValueError(f"anchor {anchor!r} is not among the compared policies {policies}")
    index = {p: i for i, p in enumerate(policies)}
    k = len(policies)
    ia = np.array([index[a] for a, _, _ in rows], dtype=np.intp)
    ib = np.array([index[b] for _, b, _ in rows], dtype=np.intp)
    s = np.array([score for _, _, score in rows], dtype=np.float64)

    def ratings(logits: Any) -> Any:
        elo = ELO_PER_LOGIT * logits
        level = elo[index[anchor]] if anchor is not None else elo.mean()
        return elo - level + anchor_rating

    logits = _fit_bradley_terry(ia, ib, s, k, l2)

    def resampled(ia_b: Any, ib_b: Any, s_b: Any) -> Any:
        return ratings(_fit_bradley_terry(ia_b.astype(np.intp), ib_b.astype(np.intp), s_b, k, l2, x0=logits))

    low, high = _percentile_bootstrap(
        (ia, ib, s),
        resampled,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        vectorized=False,
        paired=True,
    )
    rating = ratings(logits)
    out = []
    for p, i in index.items():
        as_a, as_b = ia == i, ib == i
        wins = int((s[as_a] == 1).sum() + (s[as_b] == 0).sum())
        losses = int((s[as_a] == 0).sum() + (s[as_b] == 1).sum())
        ties = int((s[as_a | as_b] == 0.5).sum())
        out.append(
            BradleyTerryRating(
                p, float(rating[i]), float(low[i]), float(high[i]), wins + ties + losses, wins, ties, losses
            )
        )
    return sorted(out, key=lambda r: (-r.rating, r.policy))


# ------------------------------------------------------------------------------ agreement between raters

AGREEMENT_LABELS: tuple[str, ...] = ("A", "B", "tie")


def _label_codes(labels_1: Sequence[str], labels_2: Sequence[str]) -> tuple[Any, Any, int]:
    """(codes_1, codes_2, excluded): integer codes (index in AGREEMENT_LABELS) of the items where both
    labels are A, B or tie; `excluded` counts the other items (an invalid or missing label on either side)."""
    import numpy as np

    if len(labels_1) != len(labels_2):
        raise ValueError(f"the two raters must label the same items ({len(labels_1)} vs {len(labels_2)})")
    code = {label: i for i, label in enumerate(AGREEMENT_LABELS)}
    pairs = [(code[x], code[y]) for x, y in zip(labels_1, labels_2) if x in code and y in code]
    c = np.array(pairs, dtype=np.intp).reshape(-1, 2)
    return c[:, 0], c[:, 1], len(labels_1) - len(pairs)


def _kappa(c1: Any, c2: Any, axis: int = -1) -> Any:
    """Cohen's kappa (p_o - p_e) / (1 - p_e) along `axis` of integer label codes; NaN where p_e = 1."""
    import numpy as np

    p_o = np.mean(c1 == c2, axis=axis)
    p_e = sum(np.mean(c1 == k, axis=axis) * np.mean(c2 == k, axis=axis) for k in range(len(AGREEMENT_LABELS)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p_e < 1, (p_o - p_e) / (1 - p_e), np.nan)


def cohen_kappa(labels_1: Sequence[str], labels_2: Sequence[str]) -> float | None:
    """Cohen's kappa between two raters' labels of the same items, over the items both labelled A, B or tie.

    kappa = (p_o - p_e) / (1 - p_e) with p_o the fraction of items with equal labels and p_e = sum_k
    p1_k * p2_k the agreement expected from the raters' label frequencies alone: 1 for perfect agreement,
    about 0 for raters that agree only by chance. None when undefined (no such items, or p_e = 1: both raters
    used one and the same label for every item).
    """
    c1, c2, _ = _label_codes(labels_1, labels_2)
    return _kappa_or_none(c1, c2)


def _kappa_or_none(c1: Any, c2: Any) -> float | None:
    value = float(_kappa(c1, c2)) if len(c1) else math.nan
    return None if math.isnan(value) else value


@dataclass
class RaterAgreement:
    """Agreement of two raters (e.g. the LLM judge and human votes) over the `n` items both labelled A, B
    or tie (`excluded`: the others). `agreement` is the fraction of equal labels with its Wilson interval;
    `kappa` is Cohen's kappa with its percentile bootstrap interval over items (None where undefined, see
    `cohen_kappa`, or when a resample makes it undefined). ``confusion[i][j]`` counts items rater 1 labelled
    ``labels[i]`` and rater 2 ``labels[j]``."""

    n: int
    excluded: int
    agreement: float | None
    agreement_low: float | None
    agreement_high: float | None
    kappa: float | None
    kappa_low: float | None
    kappa_high: float | None
    confusion: list[list[int]]
    labels: tuple[str, ...] = AGREEMENT_LABELS
    confidence: float = 0.95
    n_resamples: int = 2000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rater_agreement(
    labels_1: Sequence[str],
    labels_2: Sequence[str],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> RaterAgreement:
    """Percent agreement (Wilson interval: a proportion of items) and Cohen's kappa (seeded percentile
    bootstrap over items: kappa has no simple exact interval and the usual analytic SE assumes large n)
    between two raters' A/B/tie labels of the same items; other labels are excluded item-wise."""
    import warnings

    import numpy as np
    from scipy.stats import DegenerateDataWarning

    c1, c2, excluded = _label_codes(labels_1, labels_2)
    n = len(c1)
    k = len(AGREEMENT_LABELS)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (c1, c2), 1)
    agreement = agree_low = agree_high = kappa_low = kappa_high = None
    if n:
        agreed = int((c1 == c2).sum())
        agreement = agreed / n
        agree_low, agree_high = wilson_interval(agreed, n, confidence)
    kappa = _kappa_or_none(c1, c2)
    if kappa is not None and n >= 2:
        with warnings.catch_warnings():  # a resample with p_e = 1 gives NaN: reported as no interval
            warnings.simplefilter("ignore", DegenerateDataWarning)
            low, high = _percentile_bootstrap(
                (c1, c2),
                _kappa,
                confidence=confidence,
                n_resamples=n_resamples,
                seed=seed,
                vectorized=True,
                paired=True,
                batch=max(1, 2_000_000 // n),
            )
        if not (math.isnan(low) or math.isnan(high)):
            kappa_low, kappa_high = float(low), float(high)
    return RaterAgreement(
        n=n,
        excluded=excluded,
        agreement=agreement,
        agreement_low=agree_low,
        agreement_high=agree_high,
        kappa=kappa,
        kappa_low=kappa_low,
        kappa_high=kappa_high,
        confusion=confusion.tolist(),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )
