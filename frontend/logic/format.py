"""Formatting of API values for the pages: timestamps, durations, sizes, numbers, win-rates and their
intervals, compute hours."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any


def parse_time(value: str | datetime | None) -> datetime | None:
    """An API timestamp (ISO 8601, 'Z' or offset; naive means UTC) as an aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def format_duration(seconds: float | None) -> str:
    """'45s', '12m 03s', '3h 07m', '2d 04h'; '' for None."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s % 3600) // 60:02d}m"
    return f"{s // 86400}d {(s % 86400) // 3600:02d}h"


def format_bytes(n: int) -> str:
    """512 -> '512 B', 1536 -> '1.5 KiB', 3 * 2**20 -> '3.0 MiB'."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}"


def format_win_rate(result: Mapping[str, Any] | None) -> str:
    """'62.5% (95% CI 48.1–75.0%)' for a judgement's result; '–' while it has none."""
    if not result or result.get("win_rate") is None:
        return "–"
    text = f"{100 * result['win_rate']:.1f}%"
    if result.get("ci_low") is not None and result.get("ci_high") is not None:
        text += f" (95% CI {percent_range(result['ci_low'], result['ci_high'])})"
    return text


def percent_range(low: float, high: float) -> str:
    """'48.1–75.0%': an interval of shares."""
    return f"{100 * low:.1f}–{100 * high:.1f}%"


def format_hours(hours: float | None) -> str:
    """'0.42 h', '12.50 h', '250 h'; '<0.01 h' for a few seconds; '–' for None."""
    if hours is None or not math.isfinite(hours):
        return "–"
    if 0 < hours < 0.005:
        return "<0.01 h"
    return f"{hours:.2f} h" if hours < 100 else f"{hours:.0f} h"


def format_ci(interval: Mapping[str, Any] | None, digits: int = 4) -> str:
    """An interval's 95% CI as '[0.551, 0.672]'; 'n=1' with one seed (no interval); '–' with none."""
    if not interval or interval.get("mean") is None:
        return "–"
    low, high = interval.get("ci_low"), interval.get("ci_high")
    if low is None or high is None:
        return f"n={interval.get('n', 0)}"
    return f"[{format_number(low, digits)}, {format_number(high, digits)}]"
