"""The built-in task's prompts, lengths and recommended settings, and its gold reward on decoded text
(pure Python)."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from klq.tasks.base import Prompt, _check_split
from klq.tasks.builtin.vocab import (
    ADJECTIVES,
    BOS,
    CONNECTORS,
    EOS,
    FITTING,
    GENERIC_POSITIVE,
    NEGATIVE,
    OFF_TOPIC,
    PAD,
    SPECIFIC_ADJECTIVES,
    SUBJECTS,
    UNK,
    VERBS,
)

PROMPT_TEMPLATE = "review the {subject} :"
PROMPT_LENGTH = 4  # tokens
RESPONSE_LENGTH = 12  # max new tokens, EOS included
RECOMMENDED_ROLLOUT = {
    "response_length": RESPONSE_LENGTH,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "eval_temperature": 0.0,
}
# A starting point for training on this task: the settings of the calibration in
# docs/ALGORITHMS.md (2-layer 64-dim GPT-2, 4-token prompts, 12-token responses; about 15 s on
# 2 CPU cores). Not re-tuned here: the trainer's own tuning on these assets supersedes them.
RECOMMENDED_TRAIN = {
    "batch_size": 64,
    "minibatch_size": 16,
    "micro_batch_size": 16,
    "num_epochs": 4,
    "learning_rate": 3e-4,
    "max_grad_norm": 1.0,
    "total_episodes": 64 * 30,
}
RECOMMENDED_KL_COEF = 0.05
TRAIN_PROMPTS = 2048
EVAL_PROMPTS = 256


def recommended_overrides() -> dict[str, Any]:
    """RECOMMENDED_ROLLOUT / RECOMMENDED_TRAIN / RECOMMENDED_KL_COEF as dotted keys for
    `RunConfig.with_overrides`."""
    out: dict[str, Any] = {"kl_coef": RECOMMENDED_KL_COEF}
    out.update({f"rollout.{k}": v for k, v in RECOMMENDED_ROLLOUT.items()})
    out.update({f"train.{k}": v for k, v in RECOMMENDED_TRAIN.items()})
    return out


# ---------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------

_SPLIT_SEED = {"train": 1, "eval": 2}


def make_prompts(split: str, n: int | None = None, seed: int = 0) -> list[Prompt]:
    """Deterministic prompts of a split: a balanced, shuffled draw of subjects (train and eval are
    independent draws; the prompt space is only 8 texts, so "held out" means separate ids and draws)."""
    _check_split(split)
    n = n if n is not None else (TRAIN_PROMPTS if split == "train" else EVAL_PROMPTS)
    rng = random.Random(f"klq-builtin-prompts-{seed}-{_SPLIT_SEED[split]}")
    subjects = [SUBJECTS[i % len(SUBJECTS)] for i in range(n)]
    rng.shuffle(subjects)
    return [Prompt(f"{split}-{i:06d}", PROMPT_TEMPLATE.format(subject=s)) for i, s in enumerate(subjects)]


# ---------------------------------------------------------------------------------------------------
# Gold reward
# ---------------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"<[a-z]+>|[a-z]+|[^\sa-z]")

W_CLEAN_END = 0.15  # the sentence ends with "." and nothing follows
W_NO_END = -0.2  # no "." at all
W_RAMBLE = -0.1  # per word after the first "." (up to 5)
W_SUBJECT = 0.15  # names the prompt's subject
W_OTHER_SUBJECT = -0.2  # per other subject named (up to 2)
W_OFF_TOPIC = -0.15  # per off-topic noun (up to 2)
W_GRAMMAR = 0.2  # "the <subject>|it  was|is  [very] ADJ ((and|but) [very] ADJ)*"
W_FITTING = 0.25  # per distinct adjective that fits the subject
W_GENERIC = 0.15  # per distinct generic positive adjective
POSITIVE_CAP = 0.5  # at most this much adjective credit (two good adjectives)
W_MISFIT = -0.05  # positive adjective that does not fit the subject
W_NEGATIVE = -0.3  # per distinct negative adjective
W_NO_ADJECTIVE = -0.3  # no adjective at all: says nothing
W_REPEAT = -0.25  # per repeated word ("the" excepted; up to 4)
MAX_SENTENCE = 8  # words before the "."; each extra word costs W_LONG
W_LONG = -0.05


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation of `text`; special tokens dropped, everything after an <eos> cut."""
    out = []
    for w in _WORD_RE.findall(text.lower()):
        if w == EOS:
            break
        if w in (PAD, BOS, UNK):
            continue
        out.append(w)
    return out


def subject_of(prompt: str) -> str | None:
    """The subject a prompt asks about (the last subject word in it), or None."""
    found = [w for w in words(prompt) if w in SUBJECTS]
    return found[-1] if found else None


def _grammatical(sentence: list[str]) -> bool:
    i = 0
    if sentence[:1] == ["it"]:
        i = 1
    elif len(sentence) >= 2 and sentence[0] == "the" and sentence[1] in SUBJECTS:
        i = 2
    else:
        return False
    if i >= len(sentence) or sentence[i] not in VERBS:
        return False
    i += 1
    while True:
        if i < len(sentence) and sentence[i] == "very":
            i += 1
        if i >= len(sentence) or sentence[i] not in ADJECTIVES:
            return False
        i += 1
        if i == len(sentence):
            return True
        if sentence[i] not in CONNECTORS:
            return False
        i += 1


def gold_breakdown(prompt: str, response: str) -> dict[str, float]:
    """The gold reward's components for one response (their sum, clipped to [-1, 1], is the reward)."""
    subject = subject_of(prompt)
    toks = words(response)
    if not toks:
        return {"empty": -1.0}
    parts: dict[str, float] = {}
    if "." in toks:
        cut = toks.index(".")
        sentence, tail = toks[:cut], toks[cut + 1 :]
        if tail:
            parts["ramble"] = W_RAMBLE * min(len(tail), 5)
        else:
            parts["clean_end"] = W_CLEAN_END
    else:
        sentence, tail = toks, []
        parts["no_end"] = W_NO_END
    if subject is not None and subject in sentence:
        parts["subject"] = W_SUBJECT
    others = {w for w in toks if w in SUBJECTS and w != subject}
    if others:
        parts["other_subject"] = W_OTHER_SUBJECT * min(len(others), 2)
    off = {w for w in toks if w in OFF_TOPIC}
    if off:
        parts["off_topic"] = W_OFF_TOPIC * min(len(off), 2)
    if _grammatical(sentence):
        parts["grammar"] = W_GRAMMAR
    adjs = [w for w in dict.fromkeys(sentence + tail) if w in ADJECTIVES]
    fitting = FITTING.get(subject or "", ())
    positive = sum(
        W_FITTING if a in fitting else W_GENERIC for a in adjs if a in fitting or a in GENERIC_POSITIVE
    )
    if positive:
        parts["positive"] = min(positive, POSITIVE_CAP)
    misfit = sum(1 for a in adjs if a in SPECIFIC_ADJECTIVES and a not in fitting)
    if misfit:
        parts["misfit"] = W_MISFIT * misfit
    negative = sum(1 for a in adjs if a in NEGATIVE)
    if negative:
        parts["negative"] = W_NEGATIVE * negative
    if not adjs:
        parts["no_adjective"] = W_NO_ADJECTIVE
    counted = [w for w in toks if w != "the"]
    repeats = len(counted) - len(set(counted))
    if repeats:
        parts["repetition"] = W_REPEAT * min(repeats, 4)
    if len(sentence) > MAX_SENTENCE:
        parts["long"] = W_LONG * (len(sentence) - MAX_SENTENCE)
    return parts


def gold_score(prompt: str, response: str) -> float:
    """Gold reward of one (prompt text, decoded response text), in [-1, 1]."""
    total = sum(gold_breakdown(prompt, response).values())
    return round(max(-1.0, min(1.0, total)), 6)


def gold_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Gold rewards of decoded responses (text, with or without a trailing <eos>/<pad>s) to prompts."""
    if len(prompts) != len(responses):
        raise ValueError(f"gold_reward: {len(prompts)} prompts but {len(responses)} responses")
    return [gold_score(p, r) for p, r in zip(prompts, responses)]


def describe() -> str:
    """What the built-in task's gold reward prefers, for users."""
    return (
        "Built-in task (offline, synthetic): the policy writes a one-sentence review of a food, "
        "prompted with e.g. 'review the pizza :'. The gold reward (range -1..+1) prefers a well-formed "
        "sentence such as 'the pizza was hot and crispy .' that names the subject, praises it with "
        "adjectives that fit it (hot/crispy/cheesy pizza, strong/smooth coffee, sweet/moist cake, "
        "fresh/crunchy salad, ...; generic praise like 'good' earns less), and stops with '.' and the "
        "end-of-sequence token. It penalises negative words (cold, bland, soggy, ...), other subjects and "
        "off-topic nouns (car, movie, ...), repeated words, missing the final '.', rambling after it, and "
        "saying nothing (no adjective). The best responses score 1.0; the SFT policy starts near -0.1. "
        "The reward model is trained on pairs ranked by this gold reward, so the gold score shows how "
        "well RL optimises the true objective rather than the learned proxy."
    )
