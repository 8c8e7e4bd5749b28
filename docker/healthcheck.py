"""Container healthchecks of KLQ Lab's services (docker-compose.yml): the image's Python and KLQ Lab's modules.

    python docker/healthcheck.py http URL      # exit 0 if URL answers 2xx within the timeout
    python docker/healthcheck.py worker QUEUES # exit 0 if this host's `klq worker --queues QUEUES`
                                               # answers a Celery ping through the broker

Exit status 0 = healthy, 1 = unhealthy (what Docker's HEALTHCHECK expects); the reason goes to stdout,
which `docker inspect` shows under .State.Health.
"""

from __future__ import annotations

import re
import socket
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


def worker_pattern(queues: str, host: str | None = None) -> re.Pattern[str]:
    """Celery node names that `klq worker --queues QUEUES` on this host gives itself (klqlab/cli.py):
    ``klq-<queues joined by '-'>[-<pid>]@<hostname>``."""
    tag = re.escape(queues.replace(",", "-"))
    return re.compile(rf"^klq-{tag}(-\d+)?@{re.escape(host or socket.gethostname())}$")


def check_worker(queues: str, timeout: float = 10.0) -> int:
    """Ping the workers through the broker; healthy if one of this host's workers for QUEUES answers."""
    try:
        from worker.celery_app import app

        replies = app.control.ping(timeout=timeout)
    except Exception as err:  # the broker is unreachable, or the settings are invalid
        print(f"cannot ping the workers: {type(err).__name__}: {err}")
        return 1
    pattern = worker_pattern(queues)
    names = sorted(name for reply in replies for name in reply)
    if any(pattern.match(name) for name in names):
        return 0
    print(f"no worker matching {pattern.pattern} answered a ping within {timeout:g} s (answers: {names})")
    return 1


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        return check_http(argv[1])
    if len(argv) == 2 and argv[0] == "worker":
        return check_worker(argv[1])
    print("usage: healthcheck.py http URL | healthcheck.py worker QUEUES", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
