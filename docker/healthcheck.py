"""Container healthchecks of KLQ Lab's services (docker-compose.yml), with nothing beyond the image's Python.

    python docker/healthcheck.py http URL      # exit 0 if URL answers 2xx within the timeout
    python docker/healthcheck.py worker QUEUES # exit 0 if this container's `klq worker --queues QUEUES`
                                               # answers a Celery ping through the broker

Exit status 0 = healthy, 1 = unhealthy (what Docker's HEALTHCHECK expects); the reason goes to stdout,
which `docker inspect` shows under .State.Health.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request


def check_http(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if 200 <= response.status < 300:
                return 0
            print(f"{url}: HTTP {response.status}")
    except urllib.error.HTTPError as err:
        print(f"{url}: HTTP {err.code}")
    except (OSError, ValueError) as err:
        print(f"{url}: {err}")
    return 1


def worker_name(queues: str) -> str:
    """The Celery node name `klq worker --queues QUEUES` gives itself (klq/cli.py)."""
    return f"klq-{queues.replace(',', '-')}@{socket.gethostname()}"


def check_worker(queues: str, timeout: float = 10.0) -> int:
    node = worker_name(queues)
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "inspect", "ping",
           "--destination", node, "--timeout", str(timeout)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 20)
    except subprocess.TimeoutExpired:
        print(f"{node}: no answer to a ping within {timeout + 20:g} s")
        return 1
    if done.returncode != 0 or "pong" not in done.stdout:
        print(f"{node}: no pong ({(done.stdout + done.stderr).strip()[-300:]})")
        return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        return check_http(argv[1])
    if len(argv) == 2 and argv[0] == "worker":
        return check_worker(argv[1])
    print("usage: healthcheck.py http URL | healthcheck.py worker QUEUES", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
