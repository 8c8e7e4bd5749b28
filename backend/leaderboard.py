"""The leaderboard as a pure function over rows: who the players of each judgement are, the comparisons
(one per prompt with a valid combined verdict, or a human vote, as in backend.winrate), and their Bradley-Terry ratings on
the Elo scale (klq.judge.stats.bradley_terry, with its bootstrap intervals).

Players. A judgement compares policy A (a run at ``step_a``, None: its final policy) with policy B (a run,
or, when ``run_b`` is None, run A's reference (SFT) policy). With ``group_by="run"`` each run's policy at
each judged step is a player; with ``group_by="algorithm_tau"`` every run of one (algorithm, kl_coef) is
one player, whatever its seed or step. A reference policy is one player per reference model
(``config.model.reference``, else ``config.model.policy``, which is what the trainer uses): runs that start
from the same SFT model share their reference player. A comparison of a player with itself (two seeds of
one algorithm and tau under ``algorithm_tau``) says nothing about ratings and is left out.

The rating anchor is the reference policy when exactly one takes part (it sits at 1000 and every interval
is relative to it); otherwise the mean rating is 1000. backend.store.leaderboard_rows fetches the rows in one
query.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from klq.judge.stats import VERDICT_SCORE, BradleyTerryRating, bradley_terry

from .models import HUMAN
from .schemas import LeaderboardGroupBy, LeaderboardOut, LeaderboardPlayer, PlayerKind
from .winrate import by_prompt

BT_RESAMPLES = 1000  # bootstrap resamples of the ratings (the library's default)
BT_SEED = 0
BT_CACHE_SIZE = 64  # leaderboards kept per server process (the fit is memoised by its comparisons)


class LeaderboardRow(NamedTuple):
    """One stored verdict with the two policies of its judgement (the columns of store.leaderboard_rows)."""

    judgement_id: int
    prompt_id: str
    order: str
    verdict: str
    run_a: int
    name_a: str
    step_a: int | None
    algorithm_a: str
    kl_coef_a: float | None
    reference_a: str | None  # run A's reference model: config.model.reference, else config.model.policy
    run_b: int | None  # None: run A's reference policy
    name_b: str | None
    step_b: int | None
    algorithm_b: str | None
    kl_coef_b: float | None


@dataclass
class _Player:
    key: str
    label: str
    kind: PlayerKind
    step: int | None = None
    algorithm: str | None = None
    kl_coef: float | None = None
    reference: str | None = None
    run_ids: set[int] = field(default_factory=set)


def _run_player(
    run_id: int,
    name: str | None,
    step: int | None,
    algorithm: str | None,
    kl_coef: float | None,
    group_by: LeaderboardGroupBy,
) -> _Player:
    if group_by == "algorithm_tau":
        tau = "?" if kl_coef is None else f"{kl_coef:g}"
        key = f"algorithm_tau:{algorithm}@{tau}"
        return _Player(key, f"{algorithm} τ={tau}", "algorithm_tau", algorithm=algorithm, kl_coef=kl_coef)
    key = f"run:{run_id}" + ("" if step is None else f"@{step}")
    label = f"#{run_id} {name}" + ("" if step is None else f" @ step {step}")
    return _Player(key, label, "run", step=step, algorithm=algorithm, kl_coef=kl_coef)


def _players(row: LeaderboardRow, group_by: LeaderboardGroupBy) -> tuple[_Player, _Player]:
    a = _run_player(row.run_a, row.name_a, row.step_a, row.algorithm_a, row.kl_coef_a, group_by)
    a.run_ids.add(row.run_a)
    if row.run_b is None:
        model = row.reference_a or "?"
        b = _Player(f"reference:{model}", f"reference {model}", "reference", reference=model)
        b.run_ids.add(row.run_a)
    else:
        b = _run_player(row.run_b, row.name_b, row.step_b, row.algorithm_b, row.kl_coef_b, group_by)
        b.run_ids.add(row.run_b)
    return a, b


def leaderboard(
    rows: Iterable[LeaderboardRow],
    *,
    judge_backend: str,
    judge_model: str | None = None,
    tag: Sequence[str] = (),
    experiment_id: int | None = None,
    group_by: LeaderboardGroupBy = "run",
) -> LeaderboardOut:
    """The leaderboard of these verdict rows (the filters are echoed back, the rows already obey them)."""
    sides: dict[int, tuple[_Player, _Player]] = {}
    verdict_rows = []
    for row in rows:
        if row.judgement_id not in sides:
            sides[row.judgement_id] = _players(row, group_by)
        verdict_rows.append(((row.judgement_id, row.prompt_id), row.order, row.verdict))
    comparisons = []
    players: dict[str, _Player] = {}
    single_order = judge_backend == HUMAN  # human votes: one row per prompt (backend.winrate.by_prompt)
    for (jid, _pid), prompt in sorted(by_prompt(verdict_rows, single_order=single_order).items()):
        score = VERDICT_SCORE.get(prompt.verdict)
        a, b = sides[jid]
        if score is None or a.key == b.key:
            continue
        comparisons.append((jid, a.key, b.key, score))
        for p in (a, b):
            players.setdefault(p.key, p).run_ids.update(p.run_ids)
    references = sorted(k for k, p in players.items() if p.kind == "reference")
    anchor = references[0] if len(references) == 1 else None
    ratings = _ratings(tuple((a, b, s) for _, a, b, s in comparisons), anchor)
    return LeaderboardOut(
        judge_backend=judge_backend,
        judge_model=judge_model,
        tag=list(tag),
        experiment_id=experiment_id,
        group_by=group_by,
        anchor=anchor if ratings else None,
        judgements=len({jid for jid, *_ in comparisons}),
        comparisons=len(comparisons),
        players=[_player_out(players[r.policy], r) for r in ratings],
    )


@lru_cache(maxsize=BT_CACHE_SIZE)
def _ratings(comparisons: tuple[tuple[str, str, float], ...], anchor: str | None) -> list[BradleyTerryRating]:
    if len(comparisons) < 2:
        return []
    return bradley_terry(comparisons, anchor=anchor, n_resamples=BT_RESAMPLES, seed=BT_SEED)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _player_out(p: _Player, r: BradleyTerryRating) -> LeaderboardPlayer:
    return LeaderboardPlayer(
        player=p.key,
        label=p.label,
        kind=p.kind,
        run_ids=sorted(p.run_ids),
        step=p.step,
        algorithm=p.algorithm,
        kl_coef=p.kl_coef,
        reference=p.reference,
        rating=r.rating,
        ci_low=_finite(r.low),
        ci_high=_finite(r.high),
        comparisons=r.comparisons,
        wins=r.wins,
        ties=r.ties,
        losses=r.losses,
    )
