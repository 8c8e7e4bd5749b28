"""Agreement between two raters' A/B/tie labels: percent agreement and Cohen's kappa, with intervals;
the conventions are `klq.judge.stats`'s."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from klq.judge.stats.winrate import _percentile_bootstrap, wilson_interval

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
