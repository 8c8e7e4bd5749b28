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

The package, by concern (every name is re-exported here): `klq.judge.stats.winrate` (verdicts, the
intervals, counts, position consistency, `summarize`), `klq.judge.stats.length` (length buckets and length
control; `word_count`, the length unit of `klq judge` and the API), `klq.judge.stats.ratings` (Bradley-Terry
on the Elo scale) and `klq.judge.stats.agreement` (rater agreement). SciPy is imported inside the functions
that need it, so importing `klq.judge` stays cheap.
"""

from klq.judge.stats.agreement import AGREEMENT_LABELS, RaterAgreement, cohen_kappa, rater_agreement
from klq.judge.stats.length import (
    LengthBucket,
    LengthControl,
    length_buckets,
    length_control_of_verdicts,
    length_controlled_win_rate,
    word_count,
)
from klq.judge.stats.ratings import ELO_PER_LOGIT, BradleyTerryRating, bradley_terry, elo_win_probability
from klq.judge.stats.winrate import (
    VERDICT_SCORE,
    VERDICTS,
    CIMethod,
    JudgementSummary,
    Verdict,
    bootstrap_interval,
    count_verdicts,
    position_consistency,
    student_t_interval,
    summarize,
    t_value,
    wilson_interval,
    z_value,
)

__all__ = [
    "AGREEMENT_LABELS",
    "ELO_PER_LOGIT",
    "VERDICTS",
    "VERDICT_SCORE",
    "BradleyTerryRating",
    "CIMethod",
    "JudgementSummary",
    "LengthBucket",
    "LengthControl",
    "RaterAgreement",
    "Verdict",
    "bootstrap_interval",
    "bradley_terry",
    "cohen_kappa",
    "count_verdicts",
    "elo_win_probability",
    "length_buckets",
    "length_control_of_verdicts",
    "length_controlled_win_rate",
    "position_consistency",
    "rater_agreement",
    "student_t_interval",
    "summarize",
    "t_value",
    "wilson_interval",
    "word_count",
    "z_value",
]
