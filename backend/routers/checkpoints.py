"""Checkpoints: list a run's, and download a policy as a zip in Hugging Face layout (streamed).

A checkpoint's ``path`` is a directory written by the worker. If it holds a ``policy/`` directory, that is
the policy; otherwise the directory itself is, minus training state (optimizer, scheduler, RNG states and
``value/`` / ``optimizer/`` sub-directories). The zip holds one top folder, so that unpacking it gives a
directory that ``from_pretrained`` loads. Only files inside the data directory or the model roots are
served, and symlinks are skipped.
"""

from __future__ import annotations

import fnmatch
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from .. import store
from ..deps import CanRead, ReadSession
from ..models import Checkpoint
from ..schemas import CheckpointOut
from ..settings import Settings
from .common import RunId

router = APIRouter(tags=["checkpoints"])

TRAINING_STATE = ("optimizer*", "scheduler*", "rng_state*", "trainer_state*", "training_state*")
TRAINING_DIRS = {"value", "optimizer", "training_state", "critic"}
_COMPRESSIBLE = (".json", ".txt", ".model", ".md", ".jinja", ".py")
_CHUNK = 1 << 20


class _Sink:
    """A write-only, tell-only file object: zipfile then writes data descriptors and never seeks."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def write(self, data: bytes) -> int:
        self._buf += data
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def pending(self) -> int:
        return len(self._buf)

    def take(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data


def policy_dir(path: Path) -> Path:
    sub = path / "policy"
    return sub if (sub / "config.json").is_file() else path


def policy_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in TRAINING_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file() or name.startswith("."):
                continue
            if any(fnmatch.fnmatch(name, pat) for pat in TRAINING_STATE):
                continue
            files.append(full)
    return files


def zip_stream(root: Path, files: list[Path], folder: str) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        for path in files:
            info = zipfile.ZipInfo.from_file(path, arcname=f"{folder}/{path.relative_to(root).as_posix()}")
            info.compress_type = zipfile.ZIP_DEFLATED if path.suffix in _COMPRESSIBLE else zipfile.ZIP_STORED
            size = path.stat().st_size
            with path.open("rb") as src, zf.open(info, "w", force_zip64=size > 2**31) as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    if sink.pending() >= _CHUNK:
                        yield sink.take()
            yield sink.take()
    yield sink.take()


def _served_roots(settings: Settings) -> list[Path]:
    return [settings.data_dir, *settings.model_roots]


def _download(ckpt: Checkpoint | None, settings: Settings, what: str) -> StreamingResponse:
    if ckpt is None:
        raise store.NotFound(what)
    path = Path(os.path.realpath(ckpt.path))
    if not any(path == r or path.is_relative_to(r) for r in _served_roots(settings)):
        raise store.NotFound(f"checkpoint {ckpt.id} lies outside the directories this server serves")
    if not path.is_dir():
        raise store.NotFound(f"checkpoint {ckpt.id}: its files are gone ({ckpt.path})")
    root = policy_dir(path)
    files = policy_files(root)
    folder = f"klq-run-{ckpt.run_id}-step-{ckpt.step}"
    return StreamingResponse(
        zip_stream(root, files, folder),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{folder}.zip"'},
    )


@router.get(
    "/runs/{run_id}/checkpoints",
    response_model=list[CheckpointOut],
    dependencies=[CanRead],
    summary="Checkpoints of a run",
)
def list_checkpoints(run_id: RunId, session: ReadSession) -> list[CheckpointOut]:
    store.require_run(session, run_id)
    return [CheckpointOut.model_validate(c) for c in store.list_checkpoints(session, run_id)]


_ZIP = {200: {"content": {"application/zip": {}}, "description": "the policy in HF layout, zipped"}}


@router.get(
    "/runs/{run_id}/checkpoints/final/download",
    dependencies=[CanRead],
    response_class=StreamingResponse,
    responses=_ZIP,
    summary="Download the final policy (zip, HF layout)",
)
def download_final(request: Request, run_id: RunId, session: ReadSession) -> StreamingResponse:
    store.require_run(session, run_id)
    ckpt = store.final_checkpoint(session, run_id)
    return _download(ckpt, request.app.state.settings, f"run {run_id} has no final checkpoint (yet)")


@router.get(
    "/runs/{run_id}/checkpoints/{checkpoint_id}/download",
    dependencies=[CanRead],
    response_class=StreamingResponse,
    responses=_ZIP,
    summary="Download a checkpoint's policy (zip, HF layout)",
)
def download_checkpoint(
    request: Request, run_id: RunId, checkpoint_id: RunId, session: ReadSession
) -> StreamingResponse:
    store.require_run(session, run_id)
    ckpt = store.get_checkpoint(session, run_id, checkpoint_id)
    return _download(
        ckpt, request.app.state.settings, f"checkpoint {checkpoint_id} of run {run_id} not found"
    )
