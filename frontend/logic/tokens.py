"""Per-token views of samples (GET /samples/{id}/tokens: ``SampleTokens``): which quantities a sample has,
how each is coloured (diverging around 0 or sequential), one colour domain shared by the samples shown
together, the token table, the token-per-mark layout of the token view, the step x token heatmap of one
prompt across a run's steps, and the sort and filter parameters of GET /runs/{id}/samples.

A ``SampleTokens`` is ``{sample_id, run_id, step, kind, prompt_id, algorithm, token_ids: [int],
tokens: [str], quantities: {name: [float | None]}}``, every list one entry per response token."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from frontend.logic.format import format_number
from klq.client.samples import DIVERGING_QUANTITIES, SAMPLE_FILTERS, SAMPLE_SORT_KEYS

# Signed quantities (klq.client's DIVERGING_QUANTITIES: k1, k3, delta, advantage, advantage_raw, reward)
# are coloured on a diverging scale centred on 0, where the sign is the point (which tokens add KL, which
# have a positive advantage); the others (logp, logp_ref, entropy, value, q, target, return) on a
# sequential scale over their range.
QUANTITY_ORDER = ("k1", "k3", "logp", "logp_ref", "entropy", "value", "q", "delta", "target", "reward",
                  "advantage_raw", "advantage", "return")  # fmt: skip
QUANTITY_HELP = {
    "k1": "log π(t) − log π_ref(t): this token's contribution to the sequence KL",
    "k3": "exp(−k1) − 1 + k1: the non-negative KL estimator",
    "logp": "log-probability of the token under the policy that sampled it",
    "logp_ref": "log-probability of the token under the reference (SFT) policy",
    "entropy": "entropy of the policy's next-token distribution",
    "value": "V_old: the value model's estimate",
    "q": "Q_old = τ·k1 + V_old (KLQ)",
    "delta": "the TD error δ_t (KLQ)",
    "target": "G_t: the λ-return target (KLQ)",
    "reward": "r_t including the KL penalty (PPO)",
    "advantage_raw": "GAE advantage before whitening (PPO)",
    "advantage": "the advantage the policy loss used (whitened for PPO; the sequence's for RLOO/GRPO)",
    "return": "the value target (PPO)",
}
_SORT_LABELS = {
    "score": "reward-model score",
    "gold": "gold reward",
    "kl": "KL",
    "length": "response length (tokens)",
    "rm_gold_gap": "score − gold (reward model up, gold down)",
    "step": "step",
    "prompt_id": "prompt id",
}
SORT_KEYS = {key: _SORT_LABELS.get(key, key) for key in SAMPLE_SORT_KEYS}  # GET /runs/{id}/samples' sort
# what min_<name> and max_<name> of GET /runs/{id}/samples bound: score, gold, kl, length
FILTERS = tuple(dict.fromkeys(name.split("_", 1)[1] for name in SAMPLE_FILTERS))
LINE_CHARS = 72  # characters per line of the token view (tokens wrap like text)


def quantity_kind(name: str) -> str:
    """'diverging' (centred on 0) or 'sequential'; a quantity this dashboard does not know is sequential."""
    return "diverging" if name in DIVERGING_QUANTITIES else "sequential"


def present_quantities(samples: Iterable[Mapping[str, Any]]) -> list[str]:
    """The quantities with at least one value in any of these SampleTokens, known ones in QUANTITY_ORDER,
    unknown ones after them by name."""
    names: set[str] = set()
    for s in samples:
        for name, values in (s.get("quantities") or {}).items():
            if any(_finite(v) for v in values):
                names.add(name)
    known = [q for q in QUANTITY_ORDER if q in names]
    return known + sorted(names - set(known))


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(v)


def color_domain(name: str, value_lists: Iterable[Sequence[float | None]]) -> list[float] | None:
    """The colour domain of a quantity shared by several samples (so that equal values look equal):
    diverging: [-m, m] with m the largest |value| (centred on 0); sequential: [min, max] (widened by 0.5
    either side when all values are equal). None if there is no finite value."""
    values = [float(v) for vs in value_lists for v in vs if _finite(v)]
    if not values:
        return None
    if quantity_kind(name) == "diverging":
        m = max(abs(v) for v in values)
        m = m if m > 0 else 1.0
        return [-m, m]
    lo, hi = min(values), max(values)
    return [lo - 0.5, hi + 0.5] if lo == hi else [lo, hi]


def token_table(sample: Mapping[str, Any]) -> pd.DataFrame:
    """One row per response token: position, token (its text, as is), id, then every quantity (None
    where the sample has no value), in present_quantities order."""
    tokens, ids = list(sample["tokens"]), list(sample["token_ids"])
    quantities = sample.get("quantities") or {}
    frame = pd.DataFrame({"position": range(len(tokens)), "token": tokens, "id": ids})
    for name in present_quantities([sample]):
        frame[name] = pd.array([float(v) if _finite(v) else None for v in quantities[name]], dtype="Float64")
    return frame


_VISIBLE_BREAKS = {"\r\n": "↵", "\n": "↵", "\r": "↵", "\t": "⇥"}


def display_piece(piece: str) -> str:
    """A token's text for the token view: line breaks and tabs made visible (↵, ⇥) so that each token
    stays on its line, other control characters escaped (ESC as \\x1b: invisible, or not even allowed in
    SVG text); everything else (markup included) as is: the chart draws text, never HTML."""
    for raw, shown in _VISIBLE_BREAKS.items():
        piece = piece.replace(raw, shown)
    return "".join(f"\\x{ord(ch):02x}" if ord(ch) < 32 or 127 <= ord(ch) < 160 else ch for ch in piece)


def token_layout(
    sample: Mapping[str, Any], quantity: str, domain: Sequence[float] | None, line_chars: int = LINE_CHARS
) -> pd.DataFrame:
    """The token view's marks: one row per token, laid out like text in lines of ``line_chars`` characters
    (a token wider than a line gets a line of its own). Columns: position, token (as is), label (what is
    drawn: display_piece), id, x and x2 (character columns), line, shown (the value of ``quantity``: not
    "value", which is a quantity's name), ink ('black' or 'white': the text colour readable on its colour)
    and every present quantity (tooltips).
    Shapes: each list of the sample has one entry per token."""
    table = token_table(sample)
    values = (sample.get("quantities") or {}).get(quantity) or [None] * len(table)
    x = line = 0
    xs, x2s, lines, labels = [], [], [], []
    for piece in table["token"]:
        label = display_piece(piece)
        width = max(1, len(label))
        if x > 0 and x + width > line_chars:
            x, line = 0, line + 1
        xs.append(x)
        x2s.append(x + width)
        lines.append(line)
        labels.append(label)
        x += width
    out = table.assign(label=labels, x=xs, x2=x2s, line=lines)
    out["shown"] = pd.array([float(v) if _finite(v) else None for v in values], dtype="Float64")
    out["ink"] = [ink_for(v, quantity, domain) for v in values]
    return out


def ink_for(value: float | None, quantity: str, domain: Sequence[float] | None) -> str:
    """'white' where the fill is dark (the outer 35% of a diverging scale, the top 35% of a sequential one,
    matching the schemes of ui.token_chart), else 'black'."""
    if not _finite(value) or not domain:
        return "black"
    lo, hi = domain[0], domain[-1]
    if quantity_kind(quantity) == "diverging":
        return "white" if abs(value) > 0.65 * max(abs(lo), abs(hi)) else "black"
    return "white" if hi > lo and (value - lo) / (hi - lo) > 0.65 else "black"


def steps_heatmap(samples: Iterable[Mapping[str, Any]], quantity: str) -> pd.DataFrame:
    """One prompt's SampleTokens at several steps as a step x token-position grid: rows (step, position,
    token, value) for every token of every sample, by step; value None where the sample lacks it."""
    rows = []
    for s in sorted(samples, key=lambda s: s["step"]):
        values = (s.get("quantities") or {}).get(quantity) or [None] * len(s["tokens"])
        for i, (piece, v) in enumerate(zip(s["tokens"], values)):
            rows.append(
                {"step": s["step"], "position": i, "token": piece, "value": float(v) if _finite(v) else None}
            )
    frame = pd.DataFrame(rows, columns=["step", "position", "token", "value"])
    frame["value"] = frame["value"].astype("Float64")
    return frame


def token_totals(sample: Mapping[str, Any]) -> dict[str, float]:
    """Sum over the response of each present quantity (k1's sum is the sample's KL estimate)."""
    quantities = sample.get("quantities") or {}
    return {
        name: math.fsum(float(v) for v in quantities[name] if _finite(v))
        for name in present_quantities([sample])
    }


def sample_query(
    sort: str | None = None,
    descending: bool = False,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of Client.list_samples for a sort order and min/max filters: {"sort": "-kl",
    "min_score": 0.5, ...}; unset bounds are left out (the API's defaults apply). ``bounds`` maps a name of
    FILTERS to (min, max); top/bottom k is this sort plus ``limit``."""
    out: dict[str, Any] = {}
    if sort:
        if sort not in SORT_KEYS:
            raise ValueError(f"unknown sort key {sort!r}: one of {', '.join(SORT_KEYS)}")
        out["sort"] = ("-" if descending else "") + sort
    for name, (lo, hi) in (bounds or {}).items():
        if name not in FILTERS:
            raise ValueError(f"unknown filter {name!r}: one of {', '.join(FILTERS)}")
        if lo is not None:
            out[f"min_{name}"] = lo
        if hi is not None:
            out[f"max_{name}"] = hi
    return out


def sample_label(sample: Mapping[str, Any]) -> str:
    """A sample in a picker: prompt, step, batch index of a training rollout, score, gold, KL, length."""
    parts = [f"{sample['prompt_id']} @ step {sample['step']}"]
    if sample.get("kind") == "train":
        parts[0] += f" #{sample.get('sample_index', 0)}"
    parts.append(f"score {format_number(sample.get('score'))}")
    parts.append(f"gold {format_number(sample.get('gold_score'))}")
    parts.append(f"KL {format_number(sample.get('kl'))}")
    if sample.get("response_length") is not None:
        parts.append(f"{sample['response_length']} tokens")
    return " · ".join(parts)


def rollouts_frame(samples: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Samples (SampleOut) as a table, in the order given (the API's sort): prompt, batch index, score, gold,
    the RM-gold gap (score - gold), KL, length in tokens, response."""
    rows = [
        {
            "prompt_id": s["prompt_id"],
            "index": s.get("sample_index", 0),
            "score": s.get("score"),
            "gold": s.get("gold_score"),
            "score − gold": (
                s["score"] - s["gold_score"]
                if s.get("score") is not None and s.get("gold_score") is not None
                else None
            ),
            "KL": s.get("kl"),
            "tokens": s.get("response_length"),
            "response": s["response"],
        }
        for s in samples
    ]
    return pd.DataFrame(
        rows, columns=["prompt_id", "index", "score", "gold", "score − gold", "KL", "tokens", "response"]
    )
