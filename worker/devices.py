"""The GPUs a worker hands out to its jobs: ``DEVICES``, made once per process from KLQ_WORKER_GPUS or
what nvidia-smi lists (klqlab/cli.py's `klq worker` sizes its Celery concurrency by it)."""

from __future__ import annotations

import os
import subprocess
import threading


class DevicePool:
    """The GPUs this worker may hand out (KLQ_WORKER_GPUS, else all it sees); one run per GPU."""

    def __init__(self, devices: list[str]) -> None:
        self.total = len(devices)
        self.free = list(devices)
        self.lock = threading.Condition()

    def take(self, n: int) -> list[str]:
        """n GPUs, waiting while other jobs of this worker hold them (a run on several GPUs leaves
        Celery slots without a GPU); RuntimeError if this worker can never give n."""
        with self.lock:
            if n > self.total:
                raise RuntimeError(f"needs {n} GPU(s) but this worker has {self.total}")
            self.lock.wait_for(lambda: n <= len(self.free))
            taken, self.free = self.free[:n], self.free[n:]
            return taken

    def give_back(self, devices: list[str]) -> None:
        with self.lock:
            self.free.extend(devices)
            self.lock.notify_all()


def detect_gpus() -> list[str]:
    configured = os.environ.get("KLQ_WORKER_GPUS")
    if configured is not None:
        return [d.strip() for d in configured.split(",") if d.strip()]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


DEVICES = DevicePool(detect_gpus())
