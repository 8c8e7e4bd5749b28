"""The held-out samples of runs: pages, steps, comparisons across runs, exports, lists and DataFrames."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

from klq.api_types import Sample, SampleComparison, SamplePage, SampleStep
from klq.client.base import ClientBase, _opt_list

if TYPE_CHECKING:
    import pandas as pd


class SamplesAPI(ClientBase):
    """The samples' endpoints of `klq.client.Client`."""

    def list_samples(
        self, run_id: int, *, step: int | None = None, limit: int = 50, offset: int = 0
    ) -> SamplePage:
        return self._get(f"/runs/{int(run_id)}/samples", step=step, limit=limit, offset=offset)

    def sample_steps(self, run_id: int) -> list[SampleStep]:
        return self._get(f"/runs/{int(run_id)}/samples/steps")

    def compare_samples(
        self,
        run_ids: Sequence[int],
        steps: Sequence[int] | int | None = None,
        *,
        mode: Literal["intersection", "union"] = "intersection",
        limit: int = 50,
        offset: int = 0,
    ) -> SampleComparison:
        """Samples of 2-10 runs aligned on prompt id; ``steps``: one for all runs, one per run, or None
        (each run's latest sample step)."""
        step = [steps] if isinstance(steps, int) else _opt_list(steps)
        return self._get(
            "/samples/compare",
            run_id=[int(r) for r in run_ids],
            step=step,
            mode=mode,
            limit=limit,
            offset=offset,
        )

    def export_samples(
        self, run_id: int, *, format: Literal["jsonl", "csv"] = "jsonl", step: int | None = None
    ) -> bytes:
        return self._download(f"/runs/{int(run_id)}/samples/export", format=format, step=step)

    def iter_samples(self, run_id: int, *, step: int | None = None, page_size: int = 500) -> Iterator[Sample]:
        """Every sample of a run (``step``: only that eval step), fetched page by page."""
        offset = 0
        while True:
            page = self.list_samples(run_id, step=step, limit=page_size, offset=offset)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def samples(
        self, run_id: int, step: int | Literal["latest", "all"] = "latest", *, as_frame: bool = False
    ) -> list[Sample] | pd.DataFrame:
        """A run's held-out samples (prompt, response, reward-model score, gold score, KL): those of
        ``step`` (an eval step), of the latest eval step (default; [] before the first), or ``"all"``.
        ``as_frame=True``: a DataFrame with one row per sample."""
        if step == "latest":
            steps = self.sample_steps(run_id)
            items: list[Sample] = (
                list(self.iter_samples(run_id, step=max(s["step"] for s in steps))) if steps else []
            )
        elif step == "all":
            items = list(self.iter_samples(run_id))
        else:
            items = list(self.iter_samples(run_id, step=int(step)))
        if not as_frame:
            return items
        import pandas as pd

        cols = [
            "id",
            "run_id",
            "step",
            "prompt_id",
            "prompt",
            "response",
            "score",
            "gold_score",
            "kl",
            "extra",
        ]
        return pd.DataFrame(items, columns=cols)
