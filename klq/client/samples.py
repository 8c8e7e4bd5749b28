"""The held-out samples of runs: pages, steps, comparisons across runs, exports, lists and DataFrames."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from klq.api_types import Sample, SampleComparison, SamplePage, SampleStep, SampleTokens
from klq.client.base import ClientBase, _opt_list

if TYPE_CHECKING:
    import pandas as pd


SampleKind = Literal["eval", "train"]
# GET /runs/{id}/samples' sort keys (a '-' first: descending) and bounds (min_x <= x <= max_x)
SAMPLE_SORT_KEYS = ("score", "gold", "kl", "length", "rm_gold_gap", "step", "prompt_id")
SAMPLE_FILTERS = (
    "min_score",
    "max_score",
    "min_gold",
    "max_gold",
    "min_kl",
    "max_kl",
    "min_length",
    "max_length",
)
# per-token quantities centred on 0 (a diverging colour scale); the others are sequential
DIVERGING_QUANTITIES = frozenset({"k1", "k3", "delta", "advantage", "advantage_raw", "reward"})


def _filter_params(filters: Mapping[str, float] | None) -> dict[str, float]:
    """``filters`` as query parameters; an unknown name is a ValueError naming it (before any request)."""
    unknown = sorted(set(filters or {}) - set(SAMPLE_FILTERS))
    if unknown:
        raise ValueError(f"unknown sample filter {unknown[0]!r}; known: {', '.join(SAMPLE_FILTERS)}")
    return {k: v for k, v in (filters or {}).items() if v is not None}


class SamplesAPI(ClientBase):
    """The samples' endpoints of `klq.client.Client`."""

    def list_samples(
        self,
        run_id: int,
        *,
        step: int | None = None,
        kind: SampleKind = "eval",
        sort: str | None = None,
        filters: Mapping[str, float] | None = None,
        limit: int = 50,
        offset: int = 0,
        **bounds: float,
    ) -> SamplePage:
        """A page of a run's samples: held-out ones (``kind="eval"``) or recorded training rollouts
        (``"train"``), filtered and sorted on the server. ``sort``: one of SAMPLE_SORT_KEYS, '-' first for
        descending (top/bottom k = sort + limit). Bounds: ``filters={"min_score": 0.5}`` or the same as
        keywords (``min_score=0.5``), names in SAMPLE_FILTERS."""
        return self._get(
            f"/runs/{int(run_id)}/samples",
            step=step,
            kind=kind,
            sort=sort,
            limit=limit,
            offset=offset,
            **_filter_params({**(filters or {}), **bounds}),
        )

    def sample_tokens(self, sample_id: int) -> SampleTokens:
        """A sample's response token by token: token_ids, tokens (text pieces) and quantities (name -> one
        value per token, None where not finite). NotFound if the sample has no token record."""
        return self._get(f"/samples/{int(sample_id)}/tokens")

    def samples_tokens(self, sample_ids: Sequence[int]) -> list[SampleTokens]:
        """The token records of several samples in one request (at most 100), in the order given; samples
        without a token record are left out (each record has its ``sample_id``)."""
        return self._get("/samples/tokens", sample_id=[int(i) for i in sample_ids])

    def prompt_samples(self, run_id: int, prompt_id: str, *, kind: SampleKind = "eval") -> list[Sample]:
        """One prompt's samples across all steps of a run, by step."""
        return self._get(f"/runs/{int(run_id)}/prompts/{quote(str(prompt_id), safe='')}/samples", kind=kind)

    def sample_steps(self, run_id: int) -> list[SampleStep]:
        return self._get(f"/runs/{int(run_id)}/samples/steps")

    def compare_samples(
        self,
        run_ids: Sequence[int],
        steps: Sequence[int] | int | None = None,
        *,
        mode: Literal["intersection", "union"] = "intersection",
        sort: str = "prompt_id",
        limit: int = 50,
        offset: int = 0,
    ) -> SampleComparison:
        """Samples of 2-10 runs aligned on prompt id; ``steps``: one for all runs, one per run, or None
        (each run's latest sample step). ``sort``: prompt_id, or score_spread, gold_spread, kl_spread,
        length_spread (a prompt's largest minus smallest value over the runs; '-' first: where they disagree
        most first)."""
        step = [steps] if isinstance(steps, int) else _opt_list(steps)
        return self._get(
            "/samples/compare",
            run_id=[int(r) for r in run_ids],
            step=step,
            mode=mode,
            sort=sort,
            limit=limit,
            offset=offset,
        )

    def export_samples(
        self, run_id: int, *, format: Literal["jsonl", "csv"] = "jsonl", step: int | None = None
    ) -> bytes:
        return self._download(f"/runs/{int(run_id)}/samples/export", format=format, step=step)

    def iter_samples(
        self,
        run_id: int,
        *,
        step: int | None = None,
        kind: SampleKind = "eval",
        sort: str | None = None,
        filters: Mapping[str, float] | None = None,
        page_size: int = 500,
    ) -> Iterator[Sample]:
        """Every sample of a run (``step``: only that step; ``kind``, ``sort``, ``filters`` as in
        ``list_samples``), fetched page by page."""
        offset = 0
        while True:
            page = self.list_samples(
                run_id, step=step, kind=kind, sort=sort, filters=filters, limit=page_size, offset=offset
            )
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def samples(
        self,
        run_id: int,
        step: int | Literal["latest", "all"] = "latest",
        *,
        kind: SampleKind = "eval",
        sort: str | None = None,
        filter: Mapping[str, float] | None = None,  # noqa: A002 (the contract's name)
        as_frame: bool = False,
    ) -> list[Sample] | pd.DataFrame:
        """A run's samples (prompt, response, reward-model score, gold score, KL, length): those of
        ``step``, of the latest eval step (default; [] before the first; for ``kind="train"``: the
        latest step with recorded training rollouts), or ``"all"``. ``kind``, ``sort`` and ``filter``
        (bounds such as ``{"min_kl": 2}``) as in ``list_samples``. ``as_frame=True``: a DataFrame with
        one row per sample."""
        options = {"kind": kind, "sort": sort, "filters": filter}
        if step == "latest":
            if kind == "eval":
                steps = [s["step"] for s in self.sample_steps(run_id)]
            else:
                last = self.list_samples(run_id, kind=kind, sort="-step", limit=1)["items"]
                steps = [last[0]["step"]] if last else []
            items: list[Sample] = list(self.iter_samples(run_id, step=max(steps), **options)) if steps else []
        elif step == "all":
            items = list(self.iter_samples(run_id, **options))
        else:
            items = list(self.iter_samples(run_id, step=int(step), **options))
        if not as_frame:
            return items
        import pandas as pd

        cols = [
            "id",
            "run_id",
            "step",
            "kind",
            "sample_index",
            "prompt_id",
            "prompt",
            "response",
            "response_length",
            "score",
            "gold_score",
            "kl",
            "extra",
            "has_tokens",
        ]
        return pd.DataFrame(items, columns=cols)
