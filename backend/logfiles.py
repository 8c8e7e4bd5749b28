"""Job logs: where a run's (or judgement's) log file lies, and reading it in pages that suit a live tail.

The worker runs each job in a child process whose stdout and stderr go to ``<data_dir>/runs/<id>/train.log``
(runs) or ``<data_dir>/judgements/<id>/judge.log`` (judgements), appended to by every attempt. The API reads
the same files (the deployment shares the data directory between worker and API). A path is only ever
derived from an id, never taken from a request, and a log that is a symbolic link or lies outside the data
directory is not served.

Pages hold whole lines: while the job may still write, a last line without its newline is held back (the
next page starts with it); once the job has ended, it is returned too. Bytes are decoded as UTF-8 with
``errors="replace"``; a carriage return overwrites the line as on a terminal (progress bars).
"""

from __future__ import annotations

import codecs
import errno
import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_TAIL = 5000  # lines a tail may ask for
MAX_PAGE_BYTES = 1 << 20  # bytes of log in one JSON page
_BLOCK = 64 << 10


def run_log_path(data_dir: Path, run_id: int) -> Path:
    return Path(data_dir) / "runs" / str(int(run_id)) / "train.log"


def judgement_log_path(data_dir: Path, judgement_id: int) -> Path:
    return Path(data_dir) / "judgements" / str(int(judgement_id)) / "judge.log"


class LogUnavailable(LookupError):
    """The log file is absent (``missing``), or there but not served (a symlink, outside the data dir)."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass
class LogPage:
    lines: list[str]
    start: int  # byte offset of the first line returned
    offset: int  # byte offset after the last line returned: where the next page starts
    size: int  # size of the file when it was read
    truncated: bool  # the byte cap cut the page short (offset mode: more follows at once)


def open_log(path: Path, data_dir: Path) -> io.FileIO:
    """The log, opened for reading (LogUnavailable if it is missing, a symlink, or outside data_dir)."""
    root = Path(os.path.realpath(data_dir))
    parent = Path(os.path.realpath(path.parent))
    if not (parent == root or parent.is_relative_to(root)):
        raise LogUnavailable(f"{path} lies outside the data directory")
    try:
        fd = os.open(parent / path.name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as err:
        raise LogUnavailable(f"{path} does not exist", missing=True) from err
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise LogUnavailable(f"{path} is a symbolic link") from err
        raise LogUnavailable(f"{path} cannot be read ({err.strerror})") from err
    f = io.FileIO(fd, "rb")  # closed when done with, or when collected
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise LogUnavailable(f"{path} is not a regular file")
    return f


def size_of(f: io.FileIO) -> int:
    return os.fstat(f.fileno()).st_size


def _pread(f: io.FileIO, n: int, at: int) -> bytes:
    chunks = []
    while n > 0:
        data = os.pread(f.fileno(), min(n, _BLOCK * 16), at)
        if not data:
            break
        chunks.append(data)
        n -= len(data)
        at += len(data)
    return b"".join(chunks)


def decode_lines(data: bytes) -> list[str]:
    if not data:
        return []
    text = data.decode("utf-8", errors="replace")
    if text.endswith("\n"):
        text = text[:-1]
    return [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]


def _complete_end(f: io.FileIO, size: int, finished: bool) -> int:
    """Where the complete lines end: the file's end once the job has finished, else after the last
    newline (looked for in the last MAX_PAGE_BYTES; a longer unfinished line is cut there)."""
    if finished or size == 0:
        return size
    at = size
    while at > max(0, size - MAX_PAGE_BYTES):
        lo = max(0, at - _BLOCK, size - MAX_PAGE_BYTES)
        i = _pread(f, at - lo, lo).rfind(b"\n")
        if i >= 0:
            return lo + i + 1
        at = lo
    return size if size > MAX_PAGE_BYTES else 0


def tail_start(f: io.FileIO, end: int, n: int, max_bytes: int | None = MAX_PAGE_BYTES) -> tuple[int, bool]:
    """(start of the last n lines before ``end``, whether max_bytes (None: no cap) cut them short)."""
    if n <= 0 or end <= 0:
        return end, False
    floor = 0 if max_bytes is None else max(0, end - max_bytes)
    at = end - 1  # a newline ending the last line does not start another
    found = 0
    while at > floor:
        lo = max(floor, at - _BLOCK)
        block = _pread(f, at - lo, lo)
        i = len(block)
        while (i := block.rfind(b"\n", 0, i)) >= 0:
            found += 1
            if found == n:
                return lo + i + 1, False
        at = lo
    if floor == 0:
        return 0, False
    # The cap: start at the first line that begins inside the last max_bytes (mid-line if none does).
    block = _pread(f, end - floor + 1, floor - 1)
    i = block.find(b"\n")
    return (floor + i if 0 <= i < len(block) - 1 else floor), True


def read_page(f: io.FileIO, *, finished: bool, tail: int | None = None, offset: int | None = None) -> LogPage:
    """The last ``tail`` lines, or the lines from byte ``offset`` on (at most MAX_PAGE_BYTES)."""
    size = size_of(f)
    if offset is None:
        end = _complete_end(f, size, finished)
        start, truncated = tail_start(f, end, tail if tail is not None else 200)
        return LogPage(decode_lines(_pread(f, end - start, start)), start, end, size, truncated)
    start = min(offset, size)
    data = _pread(f, min(MAX_PAGE_BYTES, size - start), start)
    truncated = start + len(data) < size
    if truncated or not finished:
        cut = data.rfind(b"\n")
        if cut >= 0:
            data = data[: cut + 1]
        elif not truncated:
            data = b""  # an unfinished line: it comes with the next page
        # else: one line longer than the cap, returned in pieces
    return LogPage(decode_lines(data), start, start + len(data), size, truncated)


def stream_text(f: io.FileIO, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The bytes from ``start`` to ``end`` (default: the size now) in chunks, as valid UTF-8 (invalid
    bytes replaced); closes ``f`` when done."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with f:
        at = start
        stop = os.fstat(f.fileno()).st_size if end is None else end
        while at < stop:
            data = os.pread(f.fileno(), min(_BLOCK * 16, stop - at), at)
            if not data:
                break
            at += len(data)
            yield decoder.decode(data).encode()
        yield decoder.decode(b"", final=True).encode()
