"""Small helpers shared by the bench scripts (standard library only)."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path


def machine() -> str:
    """CPUs, CPU model, RAM and the load average right now (other work on a shared machine skews timings)."""
    cpu, mem = "?", float("nan")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                   if x.startswith("MemTotal")) / 2**20
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM; "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]
