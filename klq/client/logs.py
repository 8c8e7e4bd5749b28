"""The logs of runs and judgements: pages of lines (to follow them live) and whole downloads."""

from __future__ import annotations

from klq.api_types import LogPage
from klq.client.base import ClientBase


class LogsAPI(ClientBase):
    """The logs' endpoints of `klq.client.Client`: the stdout/stderr of a run's training process or a
    judgement's judge process."""

    def run_log(self, run_id: int, *, tail: int | None = None, offset: int | None = None) -> LogPage:
        """A page of the run's training log: its last ``tail`` lines (default 200, at most 5000), or with
        ``offset`` (a previous page's ``offset``) the lines written since, at most 1 MiB (``truncated``:
        more follows at once). Only whole lines: an unfinished last line comes once it is whole (or the run
        has ended). To follow a live run, ask with the last page's ``offset``. 404 (APIError) while the run
        has no log, saying why."""
        return self._get(f"/runs/{int(run_id)}/logs", tail=tail, offset=offset)

    def judgement_log(
        self, judgement_id: int, *, tail: int | None = None, offset: int | None = None
    ) -> LogPage:
        """A page of the judgement's log (see :meth:`run_log`)."""
        return self._get(f"/judgements/{int(judgement_id)}/logs", tail=tail, offset=offset)

    def download_run_log(self, run_id: int) -> bytes:
        """The run's whole training log (UTF-8 text; invalid bytes replaced)."""
        return self._download(f"/runs/{int(run_id)}/logs", format="text")

    def download_judgement_log(self, judgement_id: int) -> bytes:
        """The judgement's whole log (UTF-8 text; invalid bytes replaced)."""
        return self._download(f"/judgements/{int(judgement_id)}/logs", format="text")
