"""klq.judge.stats beyond the win-rate: SciPy quantiles against the old hand-written code and textbook
values, length control (AlpacaEval 2's GLM), Bradley-Terry ratings on the Elo scale, and rater agreement.

Synthetic verdicts are drawn from known models (numpy Generators with fixed seeds), so each test knows the
truth it must recover; every interval here is a percentile bootstrap with a fixed seed (deterministic).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from klq.judge.stats import (
    ELO_PER_LOGIT,
    VERDICT_SCORE,
    bootstrap_interval,
    bradley_terry,
    cohen_kappa,
    elo_win_probability,
    length_buckets,
    length_controlled_win_rate,
    rater_agreement,
    student_t_interval,
    t_value,
    wilson_interval,
    z_value,
)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ------------------------------------------------------------------------- SciPy versus the old hand code

# Outputs of the hand-written code these functions replaced (statistics.NormalDist, the closed-form
# Student t of Abramowitz & Stegun 26.7.3/4 with bisection, the numpy bootstrap), computed by running that
# code (klq/judge/stats.py at commit 08810fd) just before it was replaced by SciPy.
OLD_Z = {0.9: 1.6448536269514715, 0.95: 1.9599639845400536, 0.99: 2.5758293035489}
OLD_T = {(1, 0.95): 12.70620473617464, (10, 0.95): 2.22813885198633, (30, 0.99): 2.7499956535672254,
         (100, 0.95): 1.9839715185235605, (4, 0.99): 4.604094871350071}  # fmt: skip
OLD_STUDENT = {(1.0, 2.0, 4.0, 7.0): (-0.7099807422984181, 7.709980742298418)}
OLD_WILSON_13_5_OF_20_AT_90 = (0.4911287218728516, 0.8171660350508109)
PATTERN_200 = [(1.0, 0.5, 0.0, 1.0, 1.0, 0.0, 1.0)[i % 7] for i in range(200)]
PATTERN_5000 = [(1.0, 0.0, 0.5, 0.0, 1.0)[(i * i) % 5] for i in range(5000)]  # the old code drew it in chunks
OLD_BOOTSTRAP = {
    ("200", 0.95, 2000, 7): (0.5825, 0.7),
    ("200", 0.9, 500, 11): (0.5975, 0.6876249999999999),
    ("5000", 0.95, 1000, 0): (0.587, 0.613205),
}


def test_scipy_quantiles_equal_the_old_hand_written_ones_and_the_tables() -> None:
    for confidence, old in OLD_Z.items():
        assert z_value(confidence) == pytest.approx(old, abs=1e-12)
    for (df, confidence), old in OLD_T.items():
        assert t_value(df, confidence) == pytest.approx(old, abs=1e-10)
    # textbook: z_0.975 = 1.959964, z_0.995 = 2.575829; t_{0.975, 1} = 12.7062, t_{0.975, 10} = 2.2281,
    # t_{0.995, 30} = 2.7500, t_{0.975, 100} = 1.9840
    assert (z_value(), z_value(0.99)) == pytest.approx((1.959964, 2.575829), abs=1e-6)
    assert [t_value(1), t_value(10), t_value(30, 0.99), t_value(100)] == pytest.approx(
        [12.7062, 2.2281, 2.7500, 1.9840], abs=1e-4
    )
    for values, old in OLD_STUDENT.items():
        assert student_t_interval(values) == pytest.approx(old, abs=1e-12)
    assert wilson_interval(13.5, 20, 0.9) == pytest.approx(OLD_WILSON_13_5_OF_20_AT_90, abs=1e-12)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError):
            z_value(bad)
        with pytest.raises(ValueError):
            t_value(3, bad)
    with pytest.raises(ValueError):
        t_value(2.5)


def test_scipy_bootstrap_matches_the_old_numpy_bootstrap() -> None:
    data = {"200": PATTERN_200, "5000": PATTERN_5000}
    for (name, confidence, n_resamples, seed), old in OLD_BOOTSTRAP.items():
        new = bootstrap_interval(data[name], confidence, n_resamples, seed)
        # scipy.stats.bootstrap draws the same indices from default_rng(seed) (batched like the old chunks),
        # so today the numbers agree to rounding; the tolerance only allows SciPy to change its draws.
        assert new == pytest.approx(old, abs=0.01), (name, new, old)
    assert bootstrap_interval([0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_interval([])


def test_importing_the_stats_module_does_not_import_scipy() -> None:
    code = "import sys, klq.judge.stats; print('scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------------------- length control


def simulate_length_bias(n, theta0, phi0, seed, mean_len_a=320.0, mean_len_b=200.0, tie_rate=0.1):
    """Verdict scores from P(A) = sigmoid(theta0 + phi0 * tanh(d / sd(d))), d = len_A - len_B, with
    A's responses longer on average; a fraction `tie_rate` of prompts are ties, independent of length."""
    rng = np.random.default_rng(seed)
    len_a = rng.normal(mean_len_a, 60.0, n).round()
    len_b = rng.normal(mean_len_b, 60.0, n).round()
    d = len_a - len_b
    p_a = sigmoid(theta0 + phi0 * np.tanh(d / d.std(ddof=1)))
    scores = np.where(rng.random(n) < p_a, 1.0, 0.0)
    scores[rng.random(n) < tie_rate] = 0.5
    return scores.tolist(), len_a.tolist(), len_b.tolist()


def test_length_control_removes_a_known_length_bias() -> None:
    # The judge has no preference between equal-length answers (theta0 = 0) but strongly prefers the
    # longer one (phi0 = 3), and A is the verbose policy: the raw win-rate is far above 0.5.
    scores, len_a, len_b = simulate_length_bias(1500, theta0=0.0, phi0=3.0, seed=1)
    lc = length_controlled_win_rate(scores, len_a, len_b, n_resamples=200, seed=0)
    assert lc.raw_win_rate > 0.75 and lc.raw_low > 0.7
    assert lc.low < 0.5 < lc.high and abs(lc.win_rate - 0.5) < 0.06
    assert lc.high - lc.low < 0.15
    assert lc.phi > 1.5  # ties independent of length flatten the curve (E[s] = 0.05 + 0.9 p): phi < 3
    assert lc.mean_len_a == pytest.approx(np.mean(len_a)) and lc.mean_len_b == pytest.approx(np.mean(len_b))
    assert lc.length_scale == pytest.approx(np.std(np.subtract(len_a, len_b), ddof=1))
    # A genuinely better policy (theta0 = 1) that is also verbose, no ties (so the GLM is the true model):
    # the LC rate recovers sigmoid(1) = 0.731 and phi its 3.
    scores, len_a, len_b = simulate_length_bias(1500, theta0=1.0, phi0=3.0, seed=2, tie_rate=0.0)
    better = length_controlled_win_rate(scores, len_a, len_b, n_resamples=200, seed=0)
    assert better.raw_win_rate > 0.85
    assert better.low < sigmoid(1.0) < better.high
    assert better.phi == pytest.approx(3.0, abs=0.6)


def test_length_control_equals_the_raw_rate_when_length_is_unrelated() -> None:
    scores, len_a, len_b = simulate_length_bias(1500, theta0=0.8, phi0=0.0, seed=3)
    lc = length_controlled_win_rate(scores, len_a, len_b, n_resamples=200, seed=0)
    assert abs(lc.phi) < 0.4
    assert lc.win_rate == pytest.approx(lc.raw_win_rate, abs=0.02)
    assert lc.low < lc.raw_win_rate < lc.high
    # no spread in the length difference at all: the length term drops out, LC = raw exactly (up to the
    # 1e-6 ridge on theta)
    flat = length_controlled_win_rate([1, 1, 0, 0.5, 1], [10] * 5, [7] * 5, n_resamples=50)
    assert (flat.length_scale, flat.phi) == (0.0, 0.0)
    assert flat.win_rate == pytest.approx(0.7, abs=1e-5)


def test_length_control_counts_a_tie_as_half_a_win_and_half_a_loss() -> None:
    # Two weighted rows per prompt: one tie on a prompt is the same data as that prompt twice, once won by A
    # and once by B. The fitted model (a mean loss) is therefore identical.
    scores, len_a, len_b = simulate_length_bias(300, theta0=0.3, phi0=1.5, seed=4, tie_rate=0.0)
    tie_at = [0, 5, 9]
    with_ties = [0.5 if i in tie_at else s for i, s in enumerate(scores)]
    keep = [i for i in range(len(scores)) if i not in tie_at]
    doubled = [scores[i] for i in keep for _ in (0, 1)] + [1.0, 0.0] * len(tie_at)
    la2 = [len_a[i] for i in keep for _ in (0, 1)] + [len_a[i] for i in tie_at for _ in (0, 1)]
    lb2 = [len_b[i] for i in keep for _ in (0, 1)] + [len_b[i] for i in tie_at for _ in (0, 1)]
    a = length_controlled_win_rate(with_ties, len_a, len_b, n_resamples=20)
    b = length_controlled_win_rate(doubled, la2, lb2, n_resamples=20)
    # the only difference: sd(d) of the doubled data uses n - 1 = 2 * 300 - 1, not 299
    assert b.length_scale == pytest.approx(a.length_scale * math.sqrt(299 * 2 / 599), rel=1e-9)
    assert a.win_rate == pytest.approx(b.win_rate, abs=2e-3) and a.phi == pytest.approx(b.phi, rel=0.01)
    assert a.raw_win_rate == pytest.approx(b.raw_win_rate)


def test_length_control_on_separable_data_is_finite_and_seeded() -> None:
    # A wins exactly when its response is longer: without the L2 on phi the MLE would not exist.
    rng = np.random.default_rng(5)
    len_a, len_b = rng.integers(50, 150, 200), rng.integers(50, 150, 200)
    keep = len_a != len_b
    len_a, len_b = len_a[keep].tolist(), len_b[keep].tolist()
    scores = [1.0 if a > b else 0.0 for a, b in zip(len_a, len_b)]
    lc = length_controlled_win_rate(scores, len_a, len_b, n_resamples=100, seed=7)
    assert math.isfinite(lc.phi) and lc.phi > 5 and 0.0 < lc.low <= lc.win_rate <= lc.high < 1.0
    again = length_controlled_win_rate(scores, len_a, len_b, n_resamples=100, seed=7)
    other = length_controlled_win_rate(scores, len_a, len_b, n_resamples=100, seed=8)
    assert again.to_dict() == lc.to_dict()
    assert (other.low, other.high) != (lc.low, lc.high) and other.win_rate == lc.win_rate


def test_length_buckets_by_hand_and_invalid_verdicts() -> None:
    verdicts = ["A", "A", "B", "tie", "B", "A", "invalid"]
    scores = [VERDICT_SCORE.get(v) for v in verdicts]
    len_a = [90, 95, 100, 105, 110, 120, 500]
    len_b = [100] * 7  # d = -10, -5, 0, 5, 10, 20 (and 400 for the invalid prompt, which is dropped)
    buckets = length_buckets(scores, len_a, len_b, bucket_edges=(0, 10))
    assert [(b.low, b.high, b.n) for b in buckets] == [(None, 0.0, 2), (0.0, 10.0, 2), (10.0, None, 2)]
    assert [b.win_rate for b in buckets] == [1.0, 0.25, 0.5]  # (1 + 1)/2, (0 + 0.5)/2, (0 + 1)/2
    assert [b.mean_diff for b in buckets] == [-7.5, 2.5, 15.0]
    assert (buckets[1].ci_low, buckets[1].ci_high) == wilson_interval(0.5, 2)
    empty = length_buckets(scores, len_a, len_b, bucket_edges=(-100, 0))[0]
    assert (empty.n, empty.win_rate, empty.ci_low) == (0, None, None)
    lc = length_controlled_win_rate(scores, len_a, len_b, n_resamples=50)
    assert (lc.n, lc.invalid, lc.mean_len_a) == (6, 1, 620 / 6)
    assert sum(b.n for b in lc.buckets) == 6 and len(lc.buckets) == 4  # quartiles of 6 distinct d's
    with pytest.raises(ValueError):
        length_buckets(scores, len_a, len_b, bucket_edges=(5, 0))
    with pytest.raises(ValueError):
        length_controlled_win_rate([1.0, 2.0], [1, 2], [2, 1])
    with pytest.raises(ValueError):
        length_controlled_win_rate([1.0, 0.0], [1, 2], [2])
    with pytest.raises(ValueError):
        length_controlled_win_rate([1.0, None], [1, 2], [2, 1])  # one valid prompt


# ---------------------------------------------------------------------------------------- Bradley-Terry


def simulate_comparisons(strengths, n, seed, tie_rate=0.0):
    """n comparisons between random distinct pairs; A wins with probability sigmoid(s_A - s_B), and a
    fraction `tie_rate` are ties (which carry no information about the order, so they pull the fitted
    ratings together: the recovery test draws none)."""
    rng = np.random.default_rng(seed)
    names = list(strengths)
    rows = []
    for _ in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        p = sigmoid(strengths[names[a]] - strengths[names[b]])
        score = 0.5 if rng.random() < tie_rate else float(rng.random() < p)
        rows.append((names[a], names[b], score))
    return rows


def test_bradley_terry_recovers_known_strengths_on_the_elo_scale() -> None:
    strengths = {"sft": 0.0, "ppo": 0.6, "klq": 1.2, "rloo": 0.3, "broken": -1.0}  # logits
    rows = simulate_comparisons(strengths, 4000, seed=0)
    ratings = bradley_terry(rows, anchor="sft", n_resamples=200, seed=0)
    assert [r.policy for r in ratings] == ["klq", "ppo", "rloo", "sft", "broken"]
    for r in ratings:
        true_elo = 1000 + ELO_PER_LOGIT * strengths[r.policy]  # relative to the anchor, like the intervals
        assert r.low <= true_elo <= r.high, (r, true_elo)
        assert r.policy == "sft" or 20 < r.high - r.low < 120
        assert r.comparisons == r.wins + r.ties + r.losses
    sft = next(r for r in ratings if r.policy == "sft")
    assert (sft.rating, sft.low, sft.high) == (1000.0, 1000.0, 1000.0)
    assert sum(r.comparisons for r in ratings) == 2 * len(rows)
    tied = simulate_comparisons(strengths, 1000, seed=1, tie_rate=0.2)
    with_ties = bradley_terry(tied, n_resamples=20)
    assert sum(r.ties for r in with_ties) == 2 * sum(s == 0.5 for _, _, s in tied) > 0
    # without an anchor the mean rating is 1000; differences do not depend on the anchor
    unanchored = {r.policy: r.rating for r in bradley_terry(rows, n_resamples=20)}
    assert np.mean(list(unanchored.values())) == pytest.approx(1000.0)
    assert unanchored["klq"] - unanchored["sft"] == pytest.approx(ratings[0].rating - 1000.0, abs=1e-3)
    assert pytest.approx(173.7178, abs=1e-4) == ELO_PER_LOGIT
    assert elo_win_probability(1400, 1000) == pytest.approx(10 / 11)


def test_bradley_terry_by_hand_perfect_record_and_seed() -> None:
    # Two policies, A wins 3 of 4: the MLE of the logit gap is log(3) (the ridge moves it by < 1e-2),
    # 400 * log10(3) = 190.85 Elo.
    rows = [("a", "b", 1.0), ("a", "b", 1.0), ("b", "a", 0.0), ("b", "a", 1.0)]
    a, b = bradley_terry(rows, anchor="b", n_resamples=50)
    assert (a.policy, b.policy) == ("a", "b") and (a.wins, a.losses, b.wins) == (3, 1, 1)
    assert a.rating - b.rating == pytest.approx(400 * math.log10(3), abs=2.0)
    ties = bradley_terry([("a", "b", 0.5), ("b", "a", 0.5), ("a", "b", 1.0), ("a", "b", 0.0)], n_resamples=20)
    assert [r.rating for r in ties] == pytest.approx([1000.0, 1000.0], abs=1e-6)
    # a perfect record (and a pair never compared with the others): finite thanks to the small L2
    perfect = [("champ", "x", 1.0)] * 6 + [("x", "y", 1.0), ("y", "x", 0.5), ("p", "q", 1.0), ("q", "p", 0.0)]
    out = bradley_terry(perfect, n_resamples=50, seed=3)
    assert out[0].policy == "champ" and all(math.isfinite(r.rating) and r.low <= r.high for r in out)
    again = bradley_terry(perfect, n_resamples=50, seed=3)
    assert again == out
    assert [(r.low, r.high) for r in bradley_terry(perfect, n_resamples=50, seed=4)] != [
        (r.low, r.high) for r in out
    ]
    with pytest.raises(ValueError):
        bradley_terry([("a", "a", 1.0), ("a", "b", 1.0)])
    with pytest.raises(ValueError):
        bradley_terry([("a", "b", 0.7), ("a", "b", 1.0)])
    with pytest.raises(ValueError):
        bradley_terry(rows, anchor="nobody")


# -------------------------------------------------------------------------------------------- agreement


def test_cohen_kappa_hand_computed() -> None:
    judge = ["A", "A", "A", "A", "A", "B", "B", "B", "tie", "tie"]
    human = ["A", "A", "A", "B", "tie", "B", "B", "A", "tie", "B"]
    # p_o = 6/10 (items 1-3, 6, 7, 9); judge's frequencies A .5, B .3, tie .2, the human's .4, .4, .2:
    # p_e = .5*.4 + .3*.4 + .2*.2 = .36;  kappa = (.6 - .36) / (1 - .36) = .375
    assert cohen_kappa(judge, human) == pytest.approx(0.375)
    assert cohen_kappa(judge, judge) == 1.0
    # complete disagreement with balanced labels: p_o = 0, p_e = .5 -> kappa = -1
    assert cohen_kappa(["A", "B"], ["B", "A"]) == -1.0
    # both raters always say A: p_e = 1, kappa undefined
    assert cohen_kappa(["A"] * 4, ["A"] * 4) is None
    assert cohen_kappa(["invalid"], ["A"]) is None
    res = rater_agreement(judge + ["invalid"], human + ["A"], n_resamples=500, seed=0)
    assert (res.n, res.excluded, res.agreement, res.kappa) == (10, 1, 0.6, pytest.approx(0.375))
    assert (res.agreement_low, res.agreement_high) == wilson_interval(6, 10)
    assert res.kappa_low < 0.375 < res.kappa_high
    assert res.confusion == [[3, 1, 1], [1, 2, 0], [0, 1, 1]]
    with pytest.raises(ValueError):
        rater_agreement(["A"], ["A", "B"])


def test_rater_agreement_at_chance_and_perfect_and_seeded() -> None:
    rng = np.random.default_rng(0)
    labels = np.array(["A", "B", "tie"])
    a = labels[rng.choice(3, 2000, p=[0.45, 0.4, 0.15])].tolist()
    b = labels[rng.choice(3, 2000, p=[0.45, 0.4, 0.15])].tolist()
    chance = rater_agreement(a, b, n_resamples=1000, seed=1)
    # independent raters: kappa ~ 0, agreement ~ p_e = .45^2 + .4^2 + .15^2 = 0.385
    assert abs(chance.kappa) < 0.05 and chance.kappa_low < 0 < chance.kappa_high
    assert chance.agreement_low < 0.385 < chance.agreement_high
    assert rater_agreement(a, b, n_resamples=1000, seed=1) == chance
    assert rater_agreement(a, b, n_resamples=1000, seed=2).kappa_low != chance.kappa_low
    perfect = rater_agreement(a, a, n_resamples=200)
    assert (perfect.agreement, perfect.kappa, perfect.kappa_low, perfect.kappa_high) == (1.0, 1.0, 1.0, 1.0)
    degenerate = rater_agreement(["A"] * 5, ["A"] * 5)
    assert degenerate.agreement == 1.0 and degenerate.kappa is None and degenerate.kappa_low is None
