"""Training the built-in SFT policy and reward model, and the gold-labelled response pairs that the reward
model and the judge learn from (torch and transformers are imported inside the functions)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from klq.tasks.builtin.demos import corrupt, demonstration, demonstration_quality
from klq.tasks.builtin.gold import PROMPT_TEMPLATE, gold_score, make_prompts, subject_of
from klq.tasks.builtin.sampling import _eval_mode, _pad, _sample_texts, tiny_gpt2_config
from klq.tasks.builtin.vocab import SUBJECTS, _Vocab

SFT_DEMOS = 16384
SFT_STEPS = 1000
SFT_BATCH = 64
SFT_LR = 2e-3
RM_PAIRS = 16384
RM_EVAL_PAIRS = 1024
RM_STEPS = 2000
RM_BATCH = 64  # pairs per step
RM_LR = 1e-3
CALIBRATION_SAMPLES = 2048


def _lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train_sft(vocab: _Vocab, seed: int, log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    import torch
    from transformers import GPT2LMHeadModel

    rng = random.Random(f"klq-builtin-sft-{seed}")
    seqs, prompt_lens = [], []
    for i in range(SFT_DEMOS):
        subject = SUBJECTS[i % len(SUBJECTS)]
        resp, ended = demonstration(subject, demonstration_quality(rng), rng)
        prompt = vocab.encode(PROMPT_TEMPLATE.format(subject=subject).split())
        seqs.append(prompt + vocab.encode(resp) + ([vocab.eos] if ended else []))
        prompt_lens.append(len(prompt))
    ids, mask = _pad(seqs, vocab.pad)
    labels = ids.clone()
    labels[mask == 0] = -100
    for i, n in enumerate(prompt_lens):
        labels[i, :n] = -100  # loss on response tokens (and the EOS) only

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(tiny_gpt2_config(len(vocab.ids), vocab.pad, vocab.bos, vocab.eos))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=SFT_LR, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(SFT_STEPS):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, SFT_STEPS, SFT_LR)
        idx = torch.randint(0, ids.shape[0], (SFT_BATCH,), generator=gen)
        out = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx], use_cache=False)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
        if (step + 1) % 500 == 0:
            log(f"  sft step {step + 1}/{SFT_STEPS}  loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    model.eval()
    return model, {
        "demonstrations": SFT_DEMOS,
        "steps": SFT_STEPS,
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
    }


def _sft_quality(model, vocab: _Vocab, seed: int) -> dict[str, Any]:
    """Mean gold and behaviour rates of SFT samples on the eval prompts (4 samples per prompt)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 3)
    prompts = [p.text for p in make_prompts("eval", seed=seed)] * 4
    samples = _sample_texts(model, vocab, [subject_of(p) or SUBJECTS[0] for p in prompts], gen)
    golds = [gold_score(p, s[1]) for p, s in zip(prompts, samples)]
    best = sum(1 for g in golds if g >= 0.75)
    return {
        "samples": len(golds),
        "mean_gold": sum(golds) / len(golds),
        "frac_gold_at_least_0.75": best / len(golds),
        "frac_eos": sum(1 for s in samples if s[0] and s[0][-1] == vocab.eos) / len(samples),
        "mean_length": sum(len(s[0]) for s in samples) / len(samples),
        "examples": [f"{p} {s[1]}  [gold {g:+.2f}]" for p, s, g in list(zip(prompts, samples, golds))[:8]],
    }


def _rank(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def spearman(x: list[float], y: list[float]) -> float:
    return pearson(_rank(x), _rank(y))


class _PairData:
    """Pairs of responses to one prompt, each response as token ids (prompt + response [+ EOS])."""

    def __init__(self) -> None:
        self.chosen: list[list[int]] = []
        self.rejected: list[list[int]] = []
        self.margin: list[float] = []
        self.kind: list[str] = []

    def add(
        self, prompt: list[int], a: tuple[list[int], float], b: tuple[list[int], float], kind: str
    ) -> None:
        if a[1] == b[1]:
            return  # ties carry no preference
        hi, lo = (a, b) if a[1] > b[1] else (b, a)
        self.chosen.append(prompt + hi[0])
        self.rejected.append(prompt + lo[0])
        self.margin.append(hi[1] - lo[1])
        self.kind.append(kind)


PAIR_KINDS = ("sft-sft", "gen-gen", "sft-gen", "corrupted", "good-good", "good-corrupted")


def _make_pairs(vocab: _Vocab, sft_model, n_pairs: int, rng: random.Random, gen) -> _PairData:
    """Labelled pairs of responses to one prompt, cycling through six sources (PAIR_KINDS): two SFT
    samples; two generator samples of random quality; one of each; an SFT or generator sample against a
    corruption of it (`corrupt`: short, repetitive, garbled, off-subject...); two good generator samples
    (fine distinctions where RL spends its time); and a good generator sample against a corruption of
    it. The corruptions teach the reward model about the responses RL would otherwise exploit."""
    subjects = [SUBJECTS[rng.randrange(len(SUBJECTS))] for _ in range(n_pairs)]
    kinds = [PAIR_KINDS[i % len(PAIR_KINDS)] for i in range(n_pairs)]
    uses_sft = ("sft-sft", "sft-gen", "corrupted")
    need = [i for i in range(n_pairs) if kinds[i] in uses_sft] + [
        i for i in range(n_pairs) if kinds[i] == "sft-sft"
    ]
    drawn = _sample_texts(sft_model, vocab, [subjects[i] for i in need], gen)
    first: dict[int, tuple[list[str], bool]] = {}
    second: dict[int, tuple[list[str], bool]] = {}
    for i, (ids, _text) in zip(need, drawn):
        sample = ([vocab.words[t] for t in ids if t != vocab.eos], bool(ids) and ids[-1] == vocab.eos)
        (second if i in first else first)[i] = sample

    def from_generator(subject: str, low: float = 0.0) -> tuple[list[str], bool]:
        return demonstration(subject, low + (1 - low) * rng.random() ** 0.7, rng)

    data = _PairData()
    for i, subject in enumerate(subjects):
        kind = kinds[i]
        if kind == "sft-sft":
            a, b = first[i], second[i]
        elif kind == "gen-gen":
            a, b = from_generator(subject), from_generator(subject)
        elif kind == "sft-gen":
            a, b = first[i], from_generator(subject)
        elif kind == "corrupted":
            a = first[i] if rng.random() < 0.5 else from_generator(subject)
            b = corrupt(a[0], rng)
        elif kind == "good-good":
            a, b = from_generator(subject, 0.7), from_generator(subject, 0.7)
        else:
            a = from_generator(subject, 0.7)
            b = corrupt(a[0], rng, subtle=True)
        prompt_text = PROMPT_TEMPLATE.format(subject=subject)
        encoded = [
            (vocab.encode(w) + ([vocab.eos] if ended else []), gold_score(prompt_text, " ".join(w)))
            for w, ended in (a, b)
        ]
        data.add(vocab.encode(prompt_text.split()), encoded[0], encoded[1], kind)
    return data


def _rm_scores(model, seqs: list[list[int]], pad_id: int, batch: int = 1024) -> list[float]:
    import torch

    from klq.models import sequence_scores

    scores: list[float] = []
    with _eval_mode(model), torch.no_grad():
        for start in range(0, len(seqs), batch):
            ids, mask = _pad(seqs[start : start + batch], pad_id)
            scores += sequence_scores(model, ids, mask).tolist()
    return scores


def _train_reward(
    vocab: _Vocab, sft_model, seed: int, log: Callable[[str], None]
) -> tuple[Any, dict[str, Any]]:
    import torch
    import torch.nn.functional as F
    from transformers import GPT2ForSequenceClassification

    from klq.models import sequence_scores

    rng = random.Random(f"klq-builtin-rm-{seed}")
    gen = torch.Generator().manual_seed(seed + 1)
    train = _make_pairs(vocab, sft_model, RM_PAIRS, rng, gen)
    held = _make_pairs(vocab, sft_model, RM_EVAL_PAIRS, rng, gen)
    log(f"  reward pairs: {len(train.chosen)} train, {len(held.chosen)} held out")

    torch.manual_seed(seed + 2)
    config = tiny_gpt2_config(len(vocab.ids), vocab.pad, vocab.bos, vocab.eos, num_labels=1)
    model = GPT2ForSequenceClassification(config)
    # Start the backbone from the SFT policy (standard practice; the score head starts small).
    model.transformer.load_state_dict(sft_model.transformer.state_dict())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=RM_LR, weight_decay=0.01)
    n = len(train.chosen)
    losses = []
    for step in range(RM_STEPS):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, RM_STEPS, RM_LR)
        idx = torch.randint(0, n, (RM_BATCH,), generator=gen).tolist()
        ids, mask = _pad([train.chosen[i] for i in idx] + [train.rejected[i] for i in idx], vocab.pad)
        scores = sequence_scores(model, ids, mask)
        loss = -F.logsigmoid(scores[:RM_BATCH] - scores[RM_BATCH:]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 500 == 0:
            log(f"  reward step {step + 1}/{RM_STEPS}  loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    model.eval()

    # Held-out pair accuracy.
    sc = _rm_scores(model, held.chosen, vocab.pad)
    sr = _rm_scores(model, held.rejected, vocab.pad)
    right = [c > r for c, r in zip(sc, sr)]
    wide = [ok for ok, m in zip(right, held.margin) if m >= 0.1]
    metrics: dict[str, Any] = {
        "train_pairs": n,
        "heldout_pairs": len(right),
        "steps": RM_STEPS,
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "pair_accuracy": sum(right) / len(right),
        "pair_accuracy_margin_0.1": sum(wide) / max(1, len(wide)),
        "pair_accuracy_by_kind": {
            k: sum(ok for ok, kk in zip(right, held.kind) if kk == k) / max(1, held.kind.count(k))
            for k in PAIR_KINDS
        },
    }

    # Calibrate: least-squares a*score + b ~= gold on fresh SFT and generator samples, folded into the
    # model (score head scaled by a; ln_f bias shifted so the head adds b), so scores read like gold.
    subjects = [SUBJECTS[rng.randrange(len(SUBJECTS))] for _ in range(CALIBRATION_SAMPLES)]
    sft = _sample_texts(sft_model, vocab, subjects, gen)
    seqs, golds, is_sft = [], [], []
    for i, subject in enumerate(subjects):
        prompt_text = PROMPT_TEMPLATE.format(subject=subject)
        prompt = vocab.encode(prompt_text.split())
        seqs.append(prompt + sft[i][0])
        golds.append(gold_score(prompt_text, sft[i][1]))
        is_sft.append(True)
        resp, ended = demonstration(subject, rng.random(), rng)
        seqs.append(prompt + vocab.encode(resp) + ([vocab.eos] if ended else []))
        golds.append(gold_score(prompt_text, " ".join(resp)))
        is_sft.append(False)
    raw = _rm_scores(model, seqs, vocab.pad)
    mx, my = sum(raw) / len(raw), sum(golds) / len(golds)
    var = sum((x - mx) ** 2 for x in raw)
    a = sum((x - mx) * (y - my) for x, y in zip(raw, golds)) / var if var > 0 else 0.0
    if a <= 0:  # a useless reward model: leave its scores alone rather than flip or flatten them
        log("  warning: reward scores do not correlate with gold; not calibrating")
        a = 1.0
    b = my - a * mx
    with torch.no_grad():
        model.score.weight.mul_(a)
        w = model.score.weight[0]
        model.transformer.ln_f.bias.add_(b * w / (w @ w))
    cal = _rm_scores(model, seqs, vocab.pad)
    sft_scores = [s for s, f in zip(cal, is_sft) if f]
    sft_gold = [g for g, f in zip(golds, is_sft) if f]
    metrics.update(
        {
            "calibration": {"scale": a, "shift": b, "samples": len(seqs)},
            "sft_samples_pearson": pearson(sft_scores, sft_gold),
            "sft_samples_spearman": spearman(sft_scores, sft_gold),
            "all_samples_pearson": pearson(cal, golds),
            "all_samples_spearman": spearman(cal, golds),
            "sft_samples_mean_score": sum(sft_scores) / len(sft_scores),
            "mean_abs_error_vs_gold": sum(abs(s - g) for s, g in zip(cal, golds)) / len(cal),
        }
    )
    return model, metrics
