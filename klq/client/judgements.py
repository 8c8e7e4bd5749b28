"""Judgements: queue them (or `judge` and wait), list, read, wait for, their verdicts, cancel and delete;
human voting sessions (start one, the next blind ballot, vote, close) and the agreement of automatic judges
with the votes; the leaderboard of the judged policies."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from klq.api_types import Agreement, Ballot, Judgement, JudgementPage, Leaderboard, Verdict, VerdictPage, Vote
from klq.client.base import ClientBase, _opt_list
from klq.client.errors import JudgementFailedError


class JudgementsAPI(ClientBase):
    """The judgements' endpoints of `klq.client.Client`."""

    def create_judgement(
        self,
        run_a: int,
        run_b: int | None = None,
        *,
        step_a: int | None = None,
        step_b: int | None = None,
        num_prompts: int = 64,
        judge: Mapping[str, Any] | None = None,
        seed: int = 0,
        queue: str | None = None,
    ) -> Judgement:
        """Queue a pairwise judgement of run A's policy against run B's (None: A's reference/SFT policy).
        ``judge``: e.g. ``{"backend": "gold"}`` or ``{"backend": "openai", "model": "gpt-4o-mini"}``."""
        body: dict[str, Any] = {
            "run_a": int(run_a),
            "num_prompts": int(num_prompts),
            "seed": int(seed),
            "judge": dict(judge or {"backend": "gold"}),
        }
        for key, value in (("run_b", run_b), ("step_a", step_a), ("step_b", step_b), ("queue", queue)):
            if value is not None:
                body[key] = value
        return self._post("/judgements", body)

    def list_judgements(
        self,
        *,
        run_id: int | None = None,
        status: Iterable[str] | None = None,
        include_length: bool = False,
        limit: int = 50,
        offset: int = 0,
    ) -> JudgementPage:
        """A page of judgements, newest first; ``include_length``: each one's ``result.length`` (the length
        diagnostics, a bootstrap per judgement on the server: about a second each the first time)."""
        return self._get(
            "/judgements",
            run_id=run_id,
            status=_opt_list(status),
            include_length="true" if include_length else None,
            limit=limit,
            offset=offset,
        )

    def get_judgement(
        self,
        judgement_id: int,
        *,
        include_verdicts: bool = True,
        include_length: bool = True,
        include_agreement: bool = True,
        limit: int = 100,
        offset: int = 0,
    ) -> Judgement:
        """A judgement with its win-rate, its length diagnostics (``result.length``: mean response lengths in
        words, the length-controlled win-rate with its bootstrap interval, the win-rate by length-difference
        bucket; unless ``include_length=False``), its agreement with human votes (``agreement``, see
        `judgement_agreement`; unless ``include_agreement=False``) and a page of verdicts (unless
        ``include_verdicts=False``)."""
        return self._get(
            f"/judgements/{int(judgement_id)}",
            include_verdicts="true" if include_verdicts else "false",
            include_length="true" if include_length else "false",
            include_agreement="true" if include_agreement else "false",
            limit=limit,
            offset=offset,
        )

    def wait_for_judgement(
        self,
        judgement_id: int,
        *,
        timeout: float = 3600.0,
        poll_interval: float = 2.0,
        raise_on_failure: bool = True,
        include_verdicts: bool = False,
    ) -> Judgement:
        """Poll a judgement until it is finished and return it (``result``: win-rate with its Wilson
        interval and its length diagnostics). :class:`JudgementFailedError` if it failed;
        :class:`WaitTimeout` after ``timeout``."""
        judgement = self._wait(
            lambda: self.get_judgement(
                judgement_id, include_verdicts=False, include_length=False, include_agreement=False
            ),
            f"judgement {judgement_id}",
            timeout,
            poll_interval,
            None,
        )
        if judgement["status"] == "failed" and raise_on_failure:
            raise JudgementFailedError(judgement)
        return self.get_judgement(judgement_id, include_verdicts=include_verdicts, limit=1000)

    def judge(
        self,
        run_a: int,
        run_b: int | None = None,
        *,
        step_a: int | None = None,
        step_b: int | None = None,
        num_prompts: int = 64,
        judge: Mapping[str, Any] | None = None,
        seed: int = 0,
        queue: str | None = None,
        wait: bool = True,
        timeout: float = 3600.0,
        poll_interval: float = 2.0,
    ) -> Judgement:
        """Start a pairwise judgement of run A's policy against run B's (None: A's SFT/reference policy)
        and, with ``wait`` (default), wait for its result. ``judge``: the judge spec, default the task's
        gold reward ``{"backend": "gold"}``; e.g. ``{"backend": "openai", "model": "gpt-4o-mini"}``."""
        created = self.create_judgement(
            run_a,
            run_b,
            step_a=step_a,
            step_b=step_b,
            num_prompts=num_prompts,
            judge=judge,
            seed=seed,
            queue=queue,
        )
        if not wait:
            return created
        return self.wait_for_judgement(created["id"], timeout=timeout, poll_interval=poll_interval)

    def list_verdicts(self, judgement_id: int, *, limit: int = 100, offset: int = 0) -> VerdictPage:
        return self._get(f"/judgements/{int(judgement_id)}/verdicts", limit=limit, offset=offset)

    def iter_verdicts(self, judgement_id: int, *, page_size: int = 500) -> Iterator[Verdict]:
        offset = 0
        while True:
            page = self.list_verdicts(judgement_id, limit=page_size, offset=offset)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def leaderboard(
        self,
        judge_backend: str = "gold",
        *,
        judge_model: str | None = None,
        tag: str | Iterable[str] | None = None,
        experiment_id: int | None = None,
        group_by: str = "run",
    ) -> Leaderboard:
        """Bradley-Terry ratings (Elo scale, 95% bootstrap intervals) of every policy judged by this judge
        backend (and ``judge_model``), best first: each run (``group_by="algorithm_tau"``: each algorithm at
        each tau, seeds pooled) and the reference (SFT) policies; only judgements between runs having all of
        ``tag`` / of ``experiment_id`` if given."""
        return self._get(
            "/leaderboard",
            judge_backend=judge_backend,
            judge_model=judge_model,
            tag=_opt_list(tag),
            experiment_id=experiment_id,
            group_by=group_by,
        )

    def create_human_judgement(
        self,
        *,
        source_judgement: int | None = None,
        run_a: int | None = None,
        run_b: int | None = None,
        step_a: int | None = None,
        step_b: int | None = None,
        prompt_ids: Sequence[str] | None = None,
        num_prompts: int | None = None,
        seed: int = 0,
    ) -> Judgement:
        """Start a blind voting session (a judgement with judge backend ``human``, running at once, no
        worker): over the pairs of the automatic judgement ``source_judgement`` (so its agreement with the
        votes is measured on the same pairs), or over ``run_a``'s and ``run_b``'s stored eval samples at
        ``step_a``/``step_b`` (default: each run's latest) aligned on prompt id. Optionally only
        ``prompt_ids``, and at most ``num_prompts`` pairs drawn with ``seed`` (default: every pair)."""
        body: dict[str, Any] = {"judge": {"backend": "human"}, "seed": int(seed)}
        for key, value in (
            ("source_judgement", source_judgement),
            ("run_a", run_a),
            ("run_b", run_b),
            ("step_a", step_a),
            ("step_b", step_b),
            ("num_prompts", num_prompts),
        ):
            if value is not None:
                body[key] = int(value)
        if prompt_ids is not None:
            body["prompt_ids"] = [str(p) for p in prompt_ids]
        return self._post("/judgements", body)

    def next_ballot(self, judgement_id: int) -> Ballot:
        """The next pair of a human judgement that nobody has voted on, blind (``pair``: prompt_id, position,
        prompt, ``left`` and ``right`` responses; None once every pair is voted or the session is closed).
        The same pair, on the same sides, until it is voted."""
        return self._get(f"/judgements/{int(judgement_id)}/ballot/next")

    def vote(self, judgement_id: int, prompt_id: str, choice: str, *, comment: str | None = None) -> Vote:
        """Vote on a pair of a human judgement: ``choice`` "left", "right" or "tie" (by screen side, as the
        ballot showed them), with an optional comment; the voter is this client's token. Returns the
        reveal: which run was ``left`` and ``right``, the vote as a policy verdict, the session's progress.
        A pair takes one vote: a second is an `APIError` with status 409."""
        body: dict[str, Any] = {"prompt_id": str(prompt_id), "choice": choice}
        if comment:
            body["comment"] = comment
        return self._post(f"/judgements/{int(judgement_id)}/votes", body)

    def close_judgement(self, judgement_id: int) -> Judgement:
        """End a human judgement's voting before every pair is voted: it succeeds with the votes it has."""
        return self._post(f"/judgements/{int(judgement_id)}/close")

    def judgement_agreement(self, judgement_id: int) -> list[Agreement]:
        """The agreement of an automatic judgement with each human judgement of the same two policies (or of
        a human judgement with each automatic one) on the pairs they share: percent agreement with its
        Wilson interval, Cohen's kappa with its bootstrap interval, the confusion matrix (rows: the
        automatic judge's A/B/tie, columns: the human's)."""
        got = self.get_judgement(judgement_id, include_verdicts=False, include_length=False)
        return list(got.get("agreement") or [])

    def cancel_judgement(self, judgement_id: int) -> Judgement:
        return self._post(f"/judgements/{int(judgement_id)}/cancel")

    def delete_judgement(self, judgement_id: int, *, force: bool = False) -> None:
        self._request(
            "DELETE", f"/judgements/{int(judgement_id)}", params={"force": "true"} if force else None
        )
