"""klq.provenance: the git commit and dirty flag of klq's checkout (None, never an error, when there is
none), library versions, device and host; `klq train` writes it to provenance.json in its run directory."""

from __future__ import annotations

import json
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

import klq
from klq import provenance
from klq.sinks import JSONLSink

PACKAGE_DIR = Path(klq.__file__).resolve().parent


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_collect_on_this_checkout():
    got = provenance.collect()
    assert got["git_commit"] == git(PACKAGE_DIR, "rev-parse", "HEAD")
    assert len(got["git_commit"]) == 40
    assert got["git_dirty"] == bool(git(PACKAGE_DIR, "status", "--porcelain", "--untracked-files=no"))
    assert got["packages"] == {
        name: metadata.version(name) for name in ("klq-lab", "torch", "transformers", "accelerate")
    }
    assert got["host"] == socket.gethostname()
    assert got["device"] is None and got["gpu"] is None
    assert json.loads(json.dumps(got)) == got  # JSON-ready (the sinks write it as is)


def test_device_and_gpu():
    torch = pytest.importorskip("torch")
    got = provenance.collect(torch.device("cpu"))
    assert got["device"] == "cpu" and got["gpu"] is None
    if torch.cuda.is_available():
        got = provenance.collect(torch.device("cuda:0"))
        assert got["device"] == "cuda:0" and got["gpu"] == torch.cuda.get_device_name(0)


def test_git_state_of_a_package_in_and_out_of_a_checkout(tmp_path):
    pkg = tmp_path / "repo" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    assert provenance.git_state(pkg) == (None, None)  # not a git checkout at all
    repo = pkg.parent
    git(repo, "init", "-q")
    assert provenance.git_state(pkg) == (None, None)  # inside a checkout, but untracked there (an install)
    git(repo, "add", "pkg/__init__.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "first")
    head = git(repo, "rev-parse", "HEAD")
    assert provenance.git_state(pkg) == (head, False)
    (repo / "notes.txt").write_text("untracked files do not make it dirty\n")
    assert provenance.git_state(pkg) == (head, False)
    (pkg / "__init__.py").write_text("x = 2\n")
    assert provenance.git_state(pkg) == (head, True)


def test_without_git_nothing_fails(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert provenance.git_state() == (None, None)
    got = provenance.collect()
    assert got["git_commit"] is None and got["git_dirty"] is None and got["host"]


def test_package_versions_of_a_missing_package():
    assert provenance.package_versions(("torch", "no-such-distribution-klq")) == {
        "torch": metadata.version("torch"),
        "no-such-distribution-klq": None,
    }


def test_jsonl_sink_writes_provenance_json(tmp_path):
    sink = JSONLSink(tmp_path / "run")
    sink.log_provenance(provenance.collect())
    sink.log_provenance({**provenance.collect(), "host": "resumed-on"})  # the latest start's wins
    sink.close()
    got = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert got["host"] == "resumed-on" and got["git_commit"] == provenance.collect()["git_commit"]
