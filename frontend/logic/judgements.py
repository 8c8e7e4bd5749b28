"""Judgement diagnostics as tables: the length diagnostics of a judgement (or a pooled win-rate), the
agreement of automatic judges with human votes, the leaderboard of the judged policies (GET /leaderboard);
and the words of the blind vote page (human voting sessions, their reveal)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from frontend.logic.format import format_number, percent_range
from frontend.logic.labels import algorithm_label, series_label

LEADERBOARD_COLUMNS = ["rank", "player", "rating", "ci_low", "ci_high", "95% CI", "comparisons", "wins",
                       "ties", "losses", "runs", "key"]  # fmt: skip


def format_lc_win_rate(length: Mapping[str, Any] | None) -> str:
    """'58.1% (95% CI 44.0–71.2%)': the length-controlled win-rate of A; '–' without length diagnostics."""
    if not length or length.get("lc_win_rate") is None:
        return "–"
    text = f"{100 * length['lc_win_rate']:.1f}%"
    if length.get("lc_ci_low") is not None and length.get("lc_ci_high") is not None:
        text += f" (95% CI {percent_range(length['lc_ci_low'], length['lc_ci_high'])})"
    return text


def format_mean_lengths(length: Mapping[str, Any] | None) -> str:
    """'42.0 / 35.5': the mean response lengths of A and B in words; '–' without length diagnostics."""
    if not length:
        return "–"
    return f"{length['mean_length_a']:.1f} / {length['mean_length_b']:.1f}"


def _bound(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"


def length_buckets_frame(length: Mapping[str, Any] | None) -> pd.DataFrame:
    """A's win-rate by bucket of the length difference (words of A's response minus B's), one row a
    bucket, with its Wilson interval."""
    rows = [
        {
            "words A − B": f"[{_bound(b['low'], '−∞')}, {_bound(b['high'], '∞')})",
            "prompts": b["prompts"],
            "mean difference": b["mean_diff"],
            "A's win rate": b["win_rate"],
            "95% CI": "–"
            if b["ci_low"] is None or b["ci_high"] is None
            else percent_range(b["ci_low"], b["ci_high"]),
        }
        for b in (length or {}).get("buckets") or []
    ]
    return pd.DataFrame(rows, columns=["words A − B", "prompts", "mean difference", "A's win rate", "95% CI"])


def player_label(player: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """'#3 klq-a (KLQ)', '#3 klq-a @ step 50 (KLQ)', 'KLQ τ=0.05', 'SFT (builtin:sft)'."""
    if player["kind"] == "reference":
        return f"SFT ({player['reference']})"
    if player["kind"] == "algorithm_tau":
        return series_label(player["algorithm"], player["kl_coef"], labels)
    return f"{player['label']} ({algorithm_label(player['algorithm'], labels)})"


def leaderboard_frame(board: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The leaderboard's players, best first: rank, label, Elo rating with its 95% bootstrap interval,
    the record behind it, and the runs it stands for."""
    rows = [
        {
            "rank": i + 1,
            "player": player_label(p, labels),
            "rating": p["rating"],
            "ci_low": p["ci_low"],
            "ci_high": p["ci_high"],
            "95% CI": "–"
            if p["ci_low"] is None or p["ci_high"] is None
            else f"{format_number(p['ci_low'], 4)}–{format_number(p['ci_high'], 4)}",
            "comparisons": p["comparisons"],
            "wins": p["wins"],
            "ties": p["ties"],
            "losses": p["losses"],
            "runs": ", ".join(f"#{r}" for r in p["run_ids"]),
            "key": p["player"],
        }
        for i, p in enumerate(board.get("players") or [])
    ]
    return pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)


AGREEMENT_COLUMNS = ["automatic judgement", "judge", "human votes", "voters", "pairs", "excluded", "agreement",
                     "agreement 95% CI", "kappa", "kappa 95% CI", "judge A/B/tie × human A/B/tie"]  # fmt: skip


def judge_label(judge: Mapping[str, Any]) -> str:
    """'gold', 'openai gpt-4o-mini': a judgement's judge backend and model."""
    return str(judge.get("backend", "?")) + (f" {judge['model']}" if judge.get("model") else "")


def _interval(low: float | None, high: float | None, percent: bool) -> str:
    if low is None or high is None:
        return "–"
    return percent_range(low, high) if percent else f"{low:.2f} to {high:.2f}"


def agreement_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A judgement's agreement rows (GET /judgements/{id} ``agreement``), one per pair of an automatic and a
    human judgement: percent agreement and Cohen's kappa with their 95% intervals, and the confusion
    matrix as 'A→A 2, A→B 0, ...' (the judge's label → the human's)."""
    out = []
    for r in rows:
        labels = r["labels"]
        cells = ", ".join(
            f"{labels[i]}→{labels[j]} {n}" for i, row in enumerate(r["confusion"]) for j, n in enumerate(row)
        )
        out.append(
            {
                "automatic judgement": r["automatic_judgement"],
                "judge": judge_label(r["judge"]),
                "human votes": r["human_judgement"],
                "voters": ", ".join(r["voters"]),
                "pairs": r["n"],
                "excluded": r["excluded"],
                "agreement": r["agreement"],
                "agreement 95% CI": _interval(r["agreement_low"], r["agreement_high"], True),
                "kappa": r["kappa"],
                "kappa 95% CI": _interval(r["kappa_low"], r["kappa_high"], False),
                "judge A/B/tie × human A/B/tie": cells,
            }
        )
    return pd.DataFrame(out, columns=AGREEMENT_COLUMNS)


def is_human(judgement: Mapping[str, Any]) -> bool:
    """Whether a judgement is people's votes (judge backend 'human')."""
    return (judgement.get("judge") or {}).get("backend") == "human"


def session_label(j: Mapping[str, Any]) -> str:
    """'Session 12 · 3 of 10 voted (running)': a human judgement, without the runs it compares (the vote
    page stays blind)."""
    source = f" · pairs of judgement {j['source_judgement']}" if j.get("source_judgement") else ""
    return f"Session {j['id']} · {j['completed']} of {j['total']} voted ({j['status']}){source}"


def reveal_text(vote: Mapping[str, Any]) -> str:
    """'You chose left. Left: #3 klq-a (A) · Right: #4 ppo-b (B)': what a vote revealed (plain text; the
    caller escapes it for Markdown)."""
    chose = {"left": "the left response", "right": "the right response", "tie": "a tie"}[vote["choice"]]
    left, right = vote["left"], vote["right"]
    return (
        f"You chose {chose}. Left: {left['label']} (policy {left['policy']}) · "
        f"Right: {right['label']} (policy {right['policy']})"
    )
