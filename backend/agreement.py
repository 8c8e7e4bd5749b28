"""Agreement of automatic judges with human votes on the same pairs, as a pure function over verdict rows
(backend.store.votes.agreement_inputs fetches them).

A pair is the same when the prompt_id and both responses are: an automatic judgement's prompt (its
combined verdict, once both orders are in: backend.winrate.by_prompt) and a human judgement's vote on a
prompt with the same id and the same two responses. When the human judgement's A is the automatic one's B
(the same runs the other way round) the responses match crossed and the vote is turned (A <-> B). The
statistics are klq.judge.stats.rater_agreement's (percent agreement with its Wilson interval, Cohen's kappa
with a seeded percentile bootstrap), rater 1 the automatic judge, rater 2 the human; memoised by their
labels, as the length diagnostics are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from klq.judge.stats import RaterAgreement, rater_agreement

from .schemas import AgreementOut
from .store import is_human
from .winrate import by_prompt

AGREEMENT_CACHE_SIZE = 1024
_FLIP = {"A": "B", "B": "A"}


def matched_labels(
    automatic_rows: Iterable[Sequence[Any]], human_rows: Iterable[Sequence[Any]]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(automatic labels, human labels) of the pairs both judged, by prompt_id, from verdict rows
    ``(prompt_id, order, verdict, response_a, response_b)`` of one automatic and one human judgement; the
    human labels in the automatic judgement's terms (turned where its responses match crossed)."""
    auto = by_prompt(automatic_rows)
    human = by_prompt(human_rows, single_order=True)
    labels_auto: list[str] = []
    labels_human: list[str] = []
    for pid in sorted(set(auto) & set(human)):
        a, h = auto[pid], human[pid]
        if tuple(h.extra) == tuple(a.extra):
            vote = h.verdict
        elif tuple(h.extra) == tuple(reversed(a.extra)):
            vote = _FLIP.get(h.verdict, h.verdict)
        else:
            continue  # the same prompt, other responses: not the same pair
        labels_auto.append(a.verdict)
        labels_human.append(vote)
    return tuple(labels_auto), tuple(labels_human)


@lru_cache(maxsize=AGREEMENT_CACHE_SIZE)
def _agreement(labels_auto: tuple[str, ...], labels_human: tuple[str, ...]) -> RaterAgreement:
    return rater_agreement(labels_auto, labels_human)


def agreement_rows(
    judgement_id: int,
    judgements: Mapping[int, Any],
    rows: Mapping[int, Sequence[Sequence[Any]]],
    voters: Mapping[int, Sequence[str]],
) -> list[AgreementOut]:
    """The agreement of judgement ``judgement_id`` with each judgement of the other kind in ``judgements``
    (objects with ``id`` and ``judge``; human ones: ``store.is_human``) that shares at
    least one pair with it, by the other judgement's id. ``rows``: verdict rows by judgement id;
    ``voters``: each human judgement's voters."""
    this = judgements[judgement_id]
    this_human = is_human(this)
    out = []
    for other_id in sorted(judgements):
        other = judgements[other_id]
        if other_id == judgement_id or is_human(other) == this_human:
            continue
        auto, human = (other, this) if this_human else (this, other)
        labels_auto, labels_human = matched_labels(rows.get(auto.id, ()), rows.get(human.id, ()))
        if not labels_auto:
            continue
        ra = _agreement(labels_auto, labels_human)
        out.append(
            AgreementOut(
                automatic_judgement=auto.id,
                human_judgement=human.id,
                judge=auto.judge,
                voters=list(voters.get(human.id, ())),
                n=ra.n,
                excluded=ra.excluded,
                agreement=ra.agreement,
                agreement_low=ra.agreement_low,
                agreement_high=ra.agreement_high,
                kappa=ra.kappa,
                kappa_low=ra.kappa_low,
                kappa_high=ra.kappa_high,
                labels=list(ra.labels),
                confusion=ra.confusion,
            )
        )
    return out
