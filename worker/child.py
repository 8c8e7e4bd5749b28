"""The child process that does a job's work (`python -m worker.runner`, or `accelerate launch` for a
multi-GPU run): started with its GPUs in CUDA_VISIBLE_DEVICES, in its own process group and dying with
the worker (PR_SET_PDEATHSIG); stopped (SIGTERM, then SIGKILL after a grace) or killed at once; the tail
of its log and its CPU, memory and GPU use, read by its supervisor (worker/supervise.py)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

try:  # resolved here: between fork and exec (in a process with threads) the child must not dlopen
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux/glibc: no parent-death signal
    _prctl = None


def _die_with_parent(parent: int) -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1 (fires when the forking thread exits)
        if os.getppid() != parent:  # the worker died before the signal was armed
            os._exit(1)
    os.setpgrp()  # its own process group, so a stop reaches accelerate's children too


def _child_command(job: str, object_id: int, owner: str, gpus: list[str]) -> list[str]:
    runner = ["-m", "worker.runner", job, str(object_id), "--owner", owner]
    if len(gpus) > 1:
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(len(gpus)),
            *runner,
        ]
    return [sys.executable, *runner]


def _start_child(job: str, object_id: int, owner: str, gpus: list[str], log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpus), PYTHONUNBUFFERED="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            _child_command(job, object_id, owner, gpus),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )


def _stop_child(child: subprocess.Popen, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _system_metrics(child: subprocess.Popen, gpus: list[str]) -> dict[str, float]:
    """CPU and memory of the training process, and utilisation/memory of its GPUs."""
    metrics: dict[str, float] = {}
    try:
        import psutil

        proc = psutil.Process(child.pid)
        procs = [proc, *proc.children(recursive=True)]
        metrics["system/cpu_percent"] = sum(p.cpu_percent(interval=None) for p in procs)
        metrics["system/rss_gb"] = sum(p.memory_info().rss for p in procs) / 2**30
    except Exception:  # the process may have just exited
        pass
    if gpus:
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    f"--id={','.join(gpus)}",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            rows = [[float(x) for x in line.split(",")] for line in out.splitlines() if line.strip()]
            metrics["system/gpu_util_percent"] = sum(r[0] for r in rows) / len(rows)
            metrics["system/gpu_memory_gb"] = sum(r[1] for r in rows) / 1024
        except (OSError, subprocess.SubprocessError, ValueError, ZeroDivisionError):
            pass
    return metrics


def _kill_child(child: subprocess.Popen) -> None:
    """SIGKILL the child's process group at once: a hung (or SIGSTOPped) process may ignore SIGTERM."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()
