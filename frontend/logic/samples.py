"""Samples and judgements: word diffs of a response against its baseline, judgement progress and labels,
verdicts by prompt and a prompt's outcome."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

# --- samples: word diff ----------------------------------------------------------------------------------

_WORDS = re.compile(r"\s+|[^\s]+")


def word_diff(baseline: str, text: str) -> list[tuple[str, str]]:
    """Word-level diff of ``text`` against ``baseline``: [(op, chunk)] with op 'equal', 'delete' (only in
    the baseline) or 'insert' (only in text); whitespace is kept so that chunks join back to the texts."""
    a = _WORDS.findall(baseline or "")
    b = _WORDS.findall(text or "")
    out: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out.append(("equal", "".join(b[j1:j2])))
        else:
            if i2 > i1:
                out.append(("delete", "".join(a[i1:i2])))
            if j2 > j1:
                out.append(("insert", "".join(b[j1:j2])))
    return out


def render_word_diff(ops: Sequence[tuple[str, str]]) -> str:
    """Plain text in ``git diff --word-diff=plain`` style: [-removed-]{+added+}."""
    parts = []
    for op, chunk in ops:
        if op == "delete":
            parts.append(f"[-{chunk}-]")
        elif op == "insert":
            parts.append(f"{{+{chunk}+}}")
        else:
            parts.append(chunk)
    return "".join(parts)


def diff_ratio(baseline: str, text: str) -> float:
    """Share of words the two texts have in common (1: identical)."""
    a, b = (baseline or "").split(), (text or "").split()
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


# --- judgements ------------------------------------------------------------------------------------------


def judgement_progress(j: Mapping[str, Any]) -> float:
    total = j.get("total") or 0
    if total <= 0:
        return 1.0 if j.get("status") == "succeeded" else 0.0
    return max(0.0, min(1.0, (j.get("completed") or 0) / total))


def verdicts_by_prompt(verdicts: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Verdicts grouped by prompt id, the 'ab' order first."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for v in verdicts:
        out.setdefault(str(v["prompt_id"]), []).append(v)
    for items in out.values():
        items.sort(key=lambda v: v.get("order") != "ab")
    return out


def prompt_outcome(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """One prompt's outcome from its verdicts in both orders: 'A', 'B', 'tie' or 'invalid'
    (A and B disagreeing across the two orders counts as a tie, as klq.judge does)."""
    votes = [v["verdict"] for v in verdicts if v.get("verdict") in ("A", "B", "tie")]
    if not votes:
        return "invalid"
    score = sum(1.0 if v == "A" else 0.0 if v == "B" else 0.5 for v in votes) / len(votes)
    return "A" if score > 0.5 else "B" if score < 0.5 else "tie"


def verdict_frame(verdicts: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            "prompt_id": v["prompt_id"],
            "order": v["order"],
            "verdict": v["verdict"],
            "prompt": v["prompt"],
            "response A": v["response_a"],
            "response B": v["response_b"],
            "judge output": v.get("raw_output"),
            "voter": v.get("voter"),
            "comment": v.get("comment"),
        }
        for v in verdicts
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "prompt_id", "order", "verdict", "prompt", "response A", "response B", "judge output", "voter", "comment",
        ],
    )  # fmt: skip


def judgement_label(j: Mapping[str, Any], names: Mapping[int, str] | None = None) -> str:
    names = names or {}

    def side(run: int | None, step: int | None, default: str) -> str:
        if run is None:
            return default
        label = f"#{run} {names.get(run, '')}".strip()
        return label + (f" @ step {step}" if step is not None else "")

    a = side(j.get("run_a"), j.get("step_a"), "?")
    b = side(j.get("run_b"), j.get("step_b"), f"SFT of #{j.get('run_a')}")
    votes = " · human votes" if (j.get("judge") or {}).get("backend") == "human" else ""
    return f"Judgement {j['id']}: {a} vs {b} ({j.get('status')}){votes}"
