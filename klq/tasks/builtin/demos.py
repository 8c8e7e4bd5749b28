"""The demonstration generator (mixed quality) of the SFT data and the reward model's pairs, and the
corruptions that make contrast pairs (pure Python)."""

from __future__ import annotations

import random

from klq.tasks.builtin.gold import RESPONSE_LENGTH
from klq.tasks.builtin.vocab import (
    ADJECTIVES,
    FITTING,
    GENERIC_POSITIVE,
    NEGATIVE,
    OFF_TOPIC,
    SPECIAL_TOKENS,
    SPECIFIC_ADJECTIVES,
    SUBJECTS,
    VERBS,
    vocabulary,
)


def _pick_adjective(subject: str, q: float, rng: random.Random) -> str:
    u = rng.random()
    p_fit = 0.15 + 0.7 * q
    p_generic = 0.2
    p_misfit = 0.15 * (1 - q)
    if u < p_fit:
        return rng.choice(FITTING[subject])
    if u < p_fit + p_generic:
        return rng.choice(GENERIC_POSITIVE)
    if u < p_fit + p_generic + p_misfit:
        return rng.choice([a for a in SPECIFIC_ADJECTIVES if a not in FITTING[subject]])
    return rng.choice(NEGATIVE)


def _clause(subject: str, q: float, rng: random.Random) -> list[str]:
    u = rng.random()
    if u < 0.45 + 0.5 * q:
        opener = ["the", subject]
    elif u < 0.75 + 0.25 * q:
        opener = ["it"]
    else:
        opener = ["the", rng.choice([s for s in SUBJECTS if s != subject])]
    verb = [] if rng.random() < 0.15 * (1 - q) else [rng.choice(("was", "was", "is"))]
    n_adj = rng.choices((1, 2, 3), weights=(3, 3 + 4 * q, 2 * (1 - q) + 0.3))[0]
    adjs: list[str] = []
    for _ in range(n_adj):
        a = _pick_adjective(subject, q, rng)
        for _retry in range(3):
            if a not in adjs:
                break
            a = _pick_adjective(subject, q, rng)
        adjs.append(a)
    if len(adjs) > 1 and rng.random() < 0.2 * (1 - q):  # repetition
        adjs[-1] = adjs[0]
    phrase: list[str] = []
    for i, a in enumerate(adjs):
        if i:
            mixed = (a in NEGATIVE) != (adjs[i - 1] in NEGATIVE)
            phrase.append("but" if mixed and rng.random() < 0.7 else "and")
        if rng.random() < 0.12:
            phrase.append("very")
        phrase.append(a)
    return opener + verb + phrase


def demonstration(subject: str, quality: float, rng: random.Random) -> tuple[list[str], bool]:
    """One demonstration response to `review the {subject} :` as (words, ends_with_eos).

    `quality` in [0, 1] raises the chance of the subject, fitting adjectives, grammar and a clean end.
    At most RESPONSE_LENGTH tokens including the EOS; longer responses are cut there without an EOS.
    """
    q = min(max(quality, 0.0), 1.0)
    out = _clause(subject, q, rng)
    if rng.random() < 0.2 * (1 - q):  # off-topic digression
        noun = rng.choice(OFF_TOPIC + tuple(s for s in SUBJECTS if s != subject))
        out += ["and", "the", noun, rng.choice(VERBS), _pick_adjective(subject, 0.3, rng)]
    u = rng.random()
    if u < 0.5 + 0.45 * q:
        out.append(".")
    elif u < 0.75 + 0.2 * q:
        pass  # forgets the "."
    else:  # rambles on
        out.append(".")
        out += _clause(subject, q * 0.5, rng) + ["."]
    if len(out) >= RESPONSE_LENGTH:
        return out[:RESPONSE_LENGTH], False
    return out, True


def corrupt(response: list[str], rng: random.Random, subtle: bool = False) -> tuple[list[str], bool]:
    """A damaged copy of a response (words, without EOS) as (words, ends_with_eos): cut short, a word
    repeated, words shuffled, dropped or replaced, an adjective or the subject swapped, the "." lost,
    or a tail appended. `subtle` favours the small edits (a repeated or swapped adjective, another
    subject) that are hardest to tell from good responses. Used for contrast pairs in reward-model
    training; the label still comes from the gold reward."""
    ws = list(response)
    weights = (1, 5, 0, 1, 2, 1, 1, 9, 4) if subtle else (3, 5, 2, 2, 2, 2, 2, 5, 4)
    kind = rng.choices(range(9), weights=weights)[0]
    adjective_at = [j for j, w in enumerate(ws) if w in ADJECTIVES]
    subject_at = [j for j, w in enumerate(ws) if w in SUBJECTS or w == "it"]
    if kind == 0:  # cut short, keeping or dropping the "." (possibly to nothing at all)
        ws = ws[: rng.randrange(0, max(1, len(ws) - 1))]
        if rng.random() < 0.6:
            ws.append(".")
    elif kind == 1 and ws:  # a word repeated: next to itself, joined by "and", or many times
        j = rng.randrange(len(ws))
        how = rng.randrange(3)
        extra = [ws[j]] if how == 0 else ["and", ws[j]] if how == 1 else [ws[j]] * rng.randint(2, 4)
        ws[j + 1 : j + 1] = extra
    elif kind == 2:  # word salad
        rng.shuffle(ws)
    elif kind == 3 and ws:  # a word dropped
        del ws[rng.randrange(len(ws))]
    elif kind == 4 and ws:  # a word replaced by a random one
        ws[rng.randrange(len(ws))] = rng.choice(vocabulary()[len(SPECIAL_TOKENS) :])
    elif kind == 7 and adjective_at:  # an adjective swapped for another positive one, or for a copy
        j = rng.choice(adjective_at)  # of another adjective of the sentence ("hot and hot")
        others = [ws[k] for k in adjective_at if ws[k] != ws[j]]
        if others and rng.random() < 0.5:
            ws[j] = rng.choice(others)
        else:
            ws[j] = rng.choice(SPECIFIC_ADJECTIVES + GENERIC_POSITIVE)
    elif kind == 8 and subject_at:  # the subject swapped (or "it" named)
        ws[subject_at[0] : subject_at[0] + 1] = rng.choice([["the", s] for s in SUBJECTS] + [["it"]])
        if ws[: subject_at[0]] and ws[subject_at[0] - 1] == "the" and ws[subject_at[0]] in ("the", "it"):
            del ws[subject_at[0] - 1]
    elif kind == 5:  # the end lost
        ws = [w for w in ws if w != "."]
    else:  # something appended
        ws += rng.choice(
            [["."], ["and", rng.choice(ADJECTIVES)], [rng.choice(ADJECTIVES), "."], ["it", "was"]]
        )
    if len(ws) >= RESPONSE_LENGTH:
        return ws[:RESPONSE_LENGTH], False
    return ws, rng.random() < 0.9


def demonstration_quality(rng: random.Random) -> float:
    """The quality mix of the SFT demonstrations (tuned so the SFT policy's mean gold is about -0.1)."""
    return rng.random() * 0.4
