"""Display labels: of an algorithm (the server's, GET /algorithms), of a pairing (a judgement, a pooled
win-rate) and of one (algorithm, tau) cell of an experiment's grid."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PAIR_PREFIX = (
    "klq_vs_"  # judgement kinds klq_vs_<algorithm>: KLQ against that algorithm (docs/EXPERIMENTS.md)
)


def algorithm_labels(algorithms: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """name -> display label of the server's algorithms (GET /algorithms)."""
    return {a["name"]: a.get("label") or a["name"].upper() for a in algorithms}


def algorithm_label(algorithm: str | None, labels: Mapping[str, str] | None = None) -> str:
    """The display label of an algorithm: the server's (``labels``, from algorithm_labels), else its name
    in capitals (an algorithm the server no longer has)."""
    return (labels or {}).get(algorithm or "", str(algorithm or "").upper())


def comparison_label(item: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """'KLQ vs PPO' for a pairing (kind klq_vs_<vs>), 'PPO vs SFT' for vs_sft: of a pooled win-rate, a
    judgement or a pair not judged."""
    kind = item.get("kind") or ""
    vs = item.get("vs") or (kind[len(PAIR_PREFIX) :] if kind.startswith(PAIR_PREFIX) else None)
    if vs:
        return f"{algorithm_label('klq', labels)} vs {algorithm_label(vs, labels)}"
    return f"{algorithm_label(item.get('algorithm'), labels)} vs SFT"


def series_label(algorithm: str, kl_coef: float, labels: Mapping[str, str] | None = None) -> str:
    """'KLQ τ=0.05': one (algorithm, tau) cell of an experiment's grid."""
    return f"{algorithm_label(algorithm, labels)} τ={kl_coef:g}"
