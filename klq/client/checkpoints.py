"""The checkpoints of runs: their list, and their policies as zips (in memory or streamed to a file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import httpx

from klq.api_types import Checkpoint
from klq.client.base import ClientBase
from klq.client.errors import APIConnectionError, _error_of


class CheckpointsAPI(ClientBase):
    """The checkpoints' endpoints of `klq.client.Client`."""

    def list_checkpoints(self, run_id: int) -> list[Checkpoint]:
        return self._get(f"/runs/{int(run_id)}/checkpoints")

    def download_checkpoint(self, run_id: int, checkpoint_id: int | Literal["final"] = "final") -> bytes:
        """The checkpoint's policy as a zip (Hugging Face layout, one top folder)."""
        part = "final" if checkpoint_id == "final" else str(int(checkpoint_id))
        return self._download(f"/runs/{int(run_id)}/checkpoints/{part}/download")

    def download_checkpoint_to(
        self, run_id: int, dest: str | os.PathLike, checkpoint_id: int | Literal["final"] = "final"
    ) -> Path:
        """Stream the checkpoint's zip into the file ``dest`` (for large policies)."""
        part = "final" if checkpoint_id == "final" else str(int(checkpoint_id))
        url = f"/runs/{int(run_id)}/checkpoints/{part}/download"
        path = Path(dest)
        try:
            with self._http.stream("GET", url, timeout=self.download_timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_of(response, "GET", url)
                with path.open("wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
        except httpx.HTTPError as err:
            raise APIConnectionError(
                0, None, message=f"download from {self.base_url} failed ({err})"
            ) from err
        return path
