"""Small helpers shared by the bench scripts (standard library only)."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
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


def print_peer_result(side: str, marks: list[dict[str, float]], warmup: int, peak_gib: float | None,
                      **fields) -> None:
    """Print a TRL runner's `RESULT {json}` line from its per-iteration marks (perf_counter times `start`,
    `generated`, `scored`, `end` and process time `cpu` at `end`): whole iterations from one `end` to the
    next (the loop's full cost), the first `warmup` ones left out, and the phases of the measured ones."""
    ends, cpus = [m["end"] for m in marks], [m["cpu"] for m in marks]
    measured = marks[warmup:]
    skip = max(warmup - 1, 0)  # the first difference is already the second iteration's
    result = {
        "side": side, **fields, "iterations": len(measured),
        "iteration_s": [b - e for e, b in zip(ends[:-1], ends[1:])][skip:],
        "cpu_s": [b - e for e, b in zip(cpus[:-1], cpus[1:])][skip:],
        "generation_s": [m["generated"] - m["start"] for m in measured],
        "scoring_s": [m["scored"] - m["generated"] for m in measured],
        "training_s": [m["end"] - m["scored"] for m in measured],
        "peak_gib": peak_gib,
        # peak resident memory of the whole process (CPU: the models, optimizer state, activations)
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    print("RESULT " + json.dumps(result), flush=True)
