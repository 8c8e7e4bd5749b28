"""Bradley-Terry ratings of many policies on the Elo scale, with bootstrap intervals; the conventions
are `klq.judge.stats`'s."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from klq.judge.stats.winrate import _percentile_bootstrap

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
