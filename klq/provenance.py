"""Provenance of a training run: which code trained it (the git commit of klq's source checkout and whether
it had uncommitted changes), which versions of the libraries that matter, on which device and host.

``collect`` is recorded once per (re)start of a run: ``klq train`` writes it to ``provenance.json`` in the
run directory (klq.sinks.JSONLSink), a worker's run stores it in ``runs.provenance`` (GET /runs/{id}).
Nothing here may fail a run: what cannot be found is None."""

from __future__ import annotations

import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# the distributions whose versions decide what a run computes (klq-lab is this project)
PACKAGES = ("klq-lab", "torch", "transformers", "accelerate")
GIT_TIMEOUT_S = 5.0

_PACKAGE_DIR = Path(__file__).resolve().parent  # klq/


def _git(cwd: Path, *args: str) -> str | None:
    """stdout of ``git -C cwd args`` (stripped), None when git is missing, fails or hangs."""
    try:
        done = subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(package_dir: Path = _PACKAGE_DIR) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout that ``package_dir`` is tracked in: the full HEAD hash, and
    whether any tracked file differs from it (untracked files are not counted). (None, None) when the
    package is not a tracked part of a git checkout: an installed wheel, a Docker image without .git, or
    an install into a virtual environment that merely lies inside some checkout (its files are untracked
    there, so that checkout's commit says nothing about them)."""
    if _git(package_dir, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return None, None
    commit = _git(package_dir, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else status != "")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """{distribution name: installed version, None if not installed}."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu_name(device: Any) -> str | None:
    """The CUDA device's name ("NVIDIA H100 80GB HBM3"), None for any other device or when unknown."""
    if getattr(device, "type", None) != "cuda":
        return None
    try:
        import torch

        return str(torch.cuda.get_device_name(device))
    except Exception:  # noqa: BLE001 - provenance never fails a run
        return None


def collect(device: Any = None) -> dict[str, Any]:
    """This process's provenance, as JSON-ready values:
    {git_commit: str | None, git_dirty: bool | None, packages: {name: version | None}, python: str,
     device: str | None (e.g. "cuda:0", "cpu"), gpu: str | None, host: str}."""
    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": package_versions(),
        "python": platform.python_version(),
        "device": None if device is None else str(device),
        "gpu": gpu_name(device),
        "host": socket.gethostname(),
    }
