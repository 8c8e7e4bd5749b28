"""`klq up` leaves nothing behind: Ctrl-C, SIGTERM and SIGHUP each stop every process it started (the API,
the worker, the dashboard's Streamlit server and whatever they run), whatever happened to its stdout, and a
second `klq up` or a busy port is refused, naming the port, before anything starts.

Real processes throughout. `klq up` runs in its own session, as in a terminal; its stdout is a pipe that this
test reads, and closes before the signal where a user's pipe would be gone too (`klq up | tee up.log` and
Ctrl-C: tee dies with it; a closed terminal). The built-in task's assets come prebuilt from the
`builtin_assets` fixture (copied into each data directory), so each start takes ~10-20 s, not a minute.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

START_TIMEOUT = 180.0  # `klq up` to API and dashboard answering, on a loaded 2-core machine
STOP_TIMEOUT = 60.0  # a signal to every process gone: `klq up` escalates to SIGKILL after its grace (10 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    """Whether a server could bind the port now (SO_REUSEADDR, as uvicorn and Streamlit bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Up:
    """A `klq up` whose stdout is a pipe this test reads (and can close, like a killed `tee`)."""

    def __init__(self, data_dir: Path, cwd: Path, api_port: int, ui_port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KLQ_", "CUDA_"))}
        env.update(KLQ_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
        self._read_fd, write_fd = os.pipe()
        self.stderr_path = cwd / f"klq-up-{api_port}.stderr"
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "klqlab.cli", "up", "--api-port", str(api_port), "--ui-port", str(ui_port)],
                cwd=cwd, env=env, stdout=write_fd, stderr=stderr,
                start_new_session=True,  # its own process group, as a terminal's foreground job
            )
        os.close(write_fd)
        self.stdout = b""

    def read_available(self) -> None:
        while self._read_fd is not None and select.select([self._read_fd], [], [], 0)[0]:
            chunk = os.read(self._read_fd, 65536)
            if not chunk:
                break
            self.stdout += chunk

    def printed(self, text: bytes) -> bool:
        self.read_available()
        return text in self.stdout

    def close_stdout(self) -> None:
        """The reader goes away: from now on `klq up` (and its children) write to a closed pipe."""
        self.read_available()
        os.close(self._read_fd)
        self._read_fd = None

    def output(self) -> str:
        self.read_available()
        stderr = self.stderr_path.read_text(errors="replace")
        return f"--- stdout:\n{self.stdout.decode(errors='replace')[-3000:]}\n--- stderr:\n{stderr[-5000:]}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None


def _wait(predicate, timeout: float, what: str, up: Up):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{up.output()}")
        time.sleep(0.5)


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=5).status_code == 200
    return False


def _ours(data_dir: Path) -> list[psutil.Process]:
    """Every live process that runs with this data directory (started by `klq up`, whoever its parent now)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE \
                    and proc.environ().get("KLQ_DATA_DIR") == str(data_dir):
                found.append(proc)
    return found


def _describe(procs: list[psutil.Process]) -> list[tuple[int, str]]:
    described = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            described.append((p.pid, " ".join(p.cmdline())[:120]))
    return described


@pytest.fixture
def data_dir(builtin_assets: Path, tmp_path: Path) -> Path:
    path = (tmp_path / "klq-data").resolve()
    shutil.copytree(builtin_assets, path / "assets" / "builtin")  # follows the fixture's link
    return path


@pytest.mark.parametrize(("signum", "stdout_closed"), [
    pytest.param(signal.SIGINT, True, id="ctrl-c-piped-to-tee"),  # `klq up | tee up.log`, Ctrl-C kills both
    pytest.param(signal.SIGTERM, False, id="sigterm"),
    pytest.param(signal.SIGHUP, True, id="sighup-terminal-closed"),
])
def test_signal_stops_every_process_and_frees_the_ports(data_dir: Path, tmp_path: Path, signum: int,
                                                        stdout_closed: bool) -> None:
    api_port, ui_port = _free_port(), _free_port()
    up = Up(data_dir, tmp_path, api_port, ui_port)
    family: list[psutil.Process] = []
    try:
        _wait(lambda: up.printed(b"Ctrl-C stops everything") or up.proc.poll() is not None, START_TIMEOUT,
              "klq up's URLs", up)
        assert up.proc.poll() is None, f"klq up exited with {up.proc.returncode}\n{up.output()}"
        _wait(lambda: _answers(f"http://127.0.0.1:{ui_port}/_stcore/health"), START_TIMEOUT, "the dashboard", up)

        # while it runs, a second `klq up` on the same ports is refused, naming the port, starting nothing
        second = subprocess.run([sys.executable, "-m", "klqlab.cli", "up", "--api-port", str(api_port),
                                 "--ui-port", str(ui_port)], cwd=tmp_path, capture_output=True, text=True,
                                env=dict(os.environ, KLQ_DATA_DIR=str(data_dir)), timeout=120)
        assert second.returncode != 0, second.stdout + second.stderr
        assert f"port {api_port}" in second.stderr and "in use" in second.stderr, second.stderr
        assert _answers(f"http://127.0.0.1:{api_port}/api/v1/health"), "the first klq up was disturbed"

        family = psutil.Process(up.proc.pid).children(recursive=True)
        commands = " ".join(c for _, c in _describe(family))
        assert all(word in commands for word in (" api ", " worker ", "streamlit")), _describe(family)
        ours = _ours(data_dir)  # also what a child started in a session of its own
        if stdout_closed:
            up.close_stdout()
        signalled = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(up.proc.pid, signum)  # what a terminal's Ctrl-C does: the whole foreground group
        else:
            up.proc.send_signal(signum)
        try:
            code = up.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"klq up still running {STOP_TIMEOUT:.0f}s after {signum!r}\n{up.output()}") from None
        _, alive = psutil.wait_procs(family + ours, timeout=STOP_TIMEOUT)
        took = time.monotonic() - signalled
        assert not alive, f"left running after {signum!r}: {_describe(alive)}\n{up.output()}"
        assert not _ours(data_dir), _describe(_ours(data_dir))
        assert _port_is_free(api_port) and _port_is_free(ui_port), up.output()
        assert code == 0, f"exit status {code}\n{up.output()}"
        # the clean-up itself never failed (the children may report their own writes to a closed pipe)
        assert "klqlab/up.py" not in up.stderr_path.read_text(errors="replace"), up.output()
        print(f"\n{signal.Signals(signum).name}: {len(family)} processes gone {took:.1f}s after the signal")
    finally:
        up.kill()
        for proc in family + _ours(data_dir):
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.mark.parametrize("busy", ["api", "ui"])
def test_busy_port_is_refused_naming_it_before_anything_starts(busy: str, tmp_path: Path) -> None:
    ports = {"api": _free_port(), "ui": _free_port()}
    data_dir = tmp_path / "klq-data"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[busy]))
        holder.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KLQ_", "CUDA_"))}
        result = subprocess.run(
            [sys.executable, "-m", "klqlab.cli", "up", "--api-port", str(ports["api"]), "--ui-port", str(ports["ui"])],
            cwd=tmp_path, env=dict(env, KLQ_DATA_DIR=str(data_dir)), capture_output=True, text=True, timeout=120,
        )
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"port {ports[busy]}" in result.stderr and "in use" in result.stderr, result.stderr
    assert f"--{busy}-port" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not (data_dir / "klq.db").exists(), "klq up went on to set up the database"
