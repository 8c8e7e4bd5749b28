"""The built-in judge (`builtin:judge`): its template, vocabulary and tokenizer, and its training (torch
and transformers are imported inside the functions)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from klq.tasks.builtin.gold import PROMPT_LENGTH
from klq.tasks.builtin.sampling import _eval_mode, _pad, tiny_gpt2_config
from klq.tasks.builtin.training import PAIR_KINDS, _lr_at, _make_pairs, _PairData
from klq.tasks.builtin.vocab import _Vocab, _word_level_tokenizer, vocabulary

if TYPE_CHECKING:  # pragma: no cover
    import torch

JUDGE_ANSWERS = ("A", "B")
JUDGE_POSITIONS = 128  # the generic template is 68 tokens; with the prompt and two responses at most 96
JUDGE_PAIRS = 8192
JUDGE_EVAL_PAIRS = 1024
JUDGE_STEPS = 900
JUDGE_BATCH = 16  # pairs per step, each shown in both orders
JUDGE_LR = 3e-3


def judge_template() -> str:
    """The judge template `klq judge --judge local_hf` uses for this task by default (the generic one:
    `klq.judge.templates.template_for_task("builtin")`); the built-in judge is trained on exactly it."""
    from klq.judge.templates import resolve_template, template_for_task

    return resolve_template(template_for_task("builtin"))


def _judge_template_digest() -> str:
    import hashlib

    return hashlib.sha256(judge_template().encode()).hexdigest()[:16]


def judge_vocabulary() -> list[str]:
    """The judge's tokens: the task's `vocabulary()` first (same ids), then the words and punctuation of
    `judge_template()` as the tokenizer splits them, case kept (so "A" and "B" are single tokens)."""
    from tokenizers import pre_tokenizers

    from klq.judge.templates import format_prompt

    words = vocabulary()
    text = format_prompt(judge_template(), " ", " ", " ")
    for w, _span in pre_tokenizers.Whitespace().pre_tokenize_str(text):
        if w not in words:
            words.append(w)
    for answer in JUDGE_ANSWERS:
        if answer not in words:
            words.append(answer)
    return words


def build_judge_tokenizer():
    """The judge's word-level tokenizer (`judge_vocabulary()`): like `build_tokenizer` but case-preserving,
    since its answers are the capital letters "A" and "B"."""
    return _word_level_tokenizer(
        judge_vocabulary(), lowercase=False, padding_side="left", max_length=JUDGE_POSITIONS
    )


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, n_head, d // n_head).transpose(1, 2)


def _judge_next_logits(
    model, prefix: torch.Tensor, rest: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Next-token logits of a `GPT2LMHeadModel` after ``prefix + rest[i, :lengths[i]]`` for each row of the
    right-padded `rest`: the same function as the model's own forward at that position (checked against it
    after training), but the constant template `prefix` runs once per batch and the last block only at the
    answer position, which makes the judge's training about three times cheaper."""
    import torch
    import torch.nn.functional as F

    tr, n_head = model.transformer, model.config.n_head
    batch, n = rest.shape
    p = prefix.shape[0]
    pos = torch.arange(p + n)
    hp = tr.wte(prefix)[None] + tr.wpe(pos[:p])[None]
    hr = tr.wte(rest) + tr.wpe(pos[p:])[None]

    def kv(block, x):
        return (_heads(t, n_head) for t in block.attn.c_attn(x).split(x.shape[-1], dim=2))

    def merged(k_p, k_r):
        return torch.cat([k_p.expand(batch, -1, -1, -1), k_r], dim=2)

    causal = torch.ones(n, p + n, dtype=torch.bool).tril(diagonal=p)
    for block in list(tr.h)[:-1]:
        qp, kp, vp = kv(block, block.ln_1(hp))
        qr, kr, vr = kv(block, block.ln_1(hr))
        ap = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
        ar = F.scaled_dot_product_attention(qr, merged(kp, kr), merged(vp, vr), attn_mask=causal)
        hp = hp + block.attn.c_proj(ap.transpose(1, 2).reshape(1, p, -1))
        hr = hr + block.attn.c_proj(ar.transpose(1, 2).reshape(batch, n, -1))
        hp = hp + block.mlp(block.ln_2(hp))
        hr = hr + block.mlp(block.ln_2(hr))
    block = tr.h[-1]
    last = lengths - 1
    rows = torch.arange(batch)
    xr = block.ln_1(hr)
    _, kp, vp = kv(block, block.ln_1(hp))
    _, kr, vr = kv(block, xr)
    q = next(kv(block, xr[rows, last][:, None]))
    visible = (pos[None, :] <= (p + last)[:, None])[:, None, None, :]
    a = F.scaled_dot_product_attention(q, merged(kp, kr), merged(vp, vr), attn_mask=visible)
    h = hr[rows, last][:, None] + block.attn.c_proj(a.transpose(1, 2).reshape(batch, 1, -1))
    h = h + block.mlp(block.ln_2(h))
    return model.lm_head(tr.ln_f(h[:, 0]))


def _judge_model_logits(model, seqs: list[list[int]], pad_id: int, batch: int = 256) -> torch.Tensor:
    """Next-token logits after each sequence through the model's own forward (as `LocalHFJudge` runs it)."""
    import torch

    out = []
    with _eval_mode(model), torch.no_grad():
        for start in range(0, len(seqs), batch):
            chunk = seqs[start : start + batch]
            ids, mask = _pad(chunk, pad_id)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            out.append(logits[torch.arange(len(chunk)), mask.sum(1) - 1])
    return torch.cat(out)


def _train_judge(
    vocab: _Vocab, sft_model, seed: int, log: Callable[[str], None]
) -> tuple[Any, Any, dict[str, Any]]:
    """The built-in judge: a tiny causal LM trained to answer "A" or "B" after `judge_template()` filled
    with a prompt and two responses, as the gold reward prefers. Pairs come from `_make_pairs` (the reward
    model's generator, own draw); each is shown in both orders (position-balanced); the loss is on the
    answer token only. Uses its own seeded generators and restores torch's global RNG, so building it
    leaves the other assets unchanged."""
    import torch
    import torch.nn.functional as F
    from transformers import GPT2LMHeadModel

    from klq.judge.templates import format_prompt, template_for_task

    template = judge_template()
    tokenizer = build_judge_tokenizer()
    answer_a, answer_b = (tokenizer.convert_tokens_to_ids(a) for a in JUDGE_ANSWERS)
    rng = random.Random(f"klq-builtin-judge-{seed}")
    gen = torch.Generator().manual_seed(seed + 4)
    train = _make_pairs(vocab, sft_model, JUDGE_PAIRS, rng, gen)
    held = _make_pairs(vocab, sft_model, JUDGE_EVAL_PAIRS, rng, gen)
    log(f"  judge pairs: {len(train.chosen)} train, {len(held.chosen)} held out")

    def encode(data: _PairData) -> list[list[int]]:
        """Judge prompts, two per pair: the preferred response shown first (answer "A"), then second ("B")."""
        texts = []
        for chosen, rejected in zip(data.chosen, data.rejected):
            prompt = vocab.text(chosen[:PROMPT_LENGTH])
            good, bad = vocab.text(chosen[PROMPT_LENGTH:]), vocab.text(rejected[PROMPT_LENGTH:])
            texts += [format_prompt(template, prompt, good, bad), format_prompt(template, prompt, bad, good)]
        return tokenizer(texts)["input_ids"]

    train_seqs, held_seqs = encode(train), encode(held)
    prefix = tokenizer(template.split("{prompt}")[0])["input_ids"]
    longest = max(len(s) for s in train_seqs + held_seqs)
    if longest > JUDGE_POSITIONS or any(s[: len(prefix)] != prefix for s in train_seqs):
        raise RuntimeError(f"judge prompts do not fit the judge ({longest} tokens) or the template prefix")
    p = len(prefix)
    prefix_ids = torch.tensor(prefix)
    targets = torch.tensor([answer_a, answer_b] * JUDGE_BATCH)

    config = tiny_gpt2_config(len(tokenizer), vocab.pad, vocab.bos, vocab.eos, n_positions=JUDGE_POSITIONS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 5)
        model = GPT2LMHeadModel(config)
    with torch.no_grad():  # the task's words start from the SFT policy's embeddings (same ids)
        shared = sft_model.transformer.wte.weight.shape[0]
        model.transformer.wte.weight[:shared] = sft_model.transformer.wte.weight
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=JUDGE_LR, weight_decay=0.01)
    n = len(train.chosen)
    losses = []
    for step in range(JUDGE_STEPS):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, JUDGE_STEPS, JUDGE_LR)
        idx = torch.randint(0, n, (JUDGE_BATCH,), generator=gen).tolist()
        rest, mask = _pad([train_seqs[2 * i + k][p:] for i in idx for k in (0, 1)], vocab.pad)
        logits = _judge_next_logits(model, prefix_ids, rest, mask.sum(1))
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 250 == 0:
            log(f"  judge step {step + 1}/{JUDGE_STEPS}  loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    model.eval()
    model.generation_config.update(bos_token_id=vocab.bos, eos_token_id=vocab.eos, pad_token_id=vocab.pad)

    # Held-out verdicts through the model's own forward (the fast training path must agree with it).
    logits = _judge_model_logits(model, held_seqs, vocab.pad)
    with torch.no_grad():
        rest, mask = _pad([s[p:] for s in held_seqs[:64]], vocab.pad)
        fast = _judge_next_logits(model, prefix_ids, rest, mask.sum(1))
    drift = float((fast - logits[:64]).abs().max())
    if drift > 1e-3:
        raise RuntimeError(f"the judge's training forward disagrees with the model's own by {drift}")
    says_a = (logits[:, answer_a] > logits[:, answer_b]).view(-1, 2).tolist()
    right = [(first, not second) for first, second in says_a]  # the preferred response is A, then B
    both = [r[0] and r[1] for r in right]
    correct = [ok for r in right for ok in r]
    wide = [ok for r, m in zip(right, held.margin) if m >= 0.1 for ok in r]
    metrics: dict[str, Any] = {
        "template": template_for_task("builtin"),
        "template_sha256": _judge_template_digest(),
        "vocab_size": len(tokenizer),
        "train_pairs": n,
        "heldout_pairs": len(right),
        "steps": JUDGE_STEPS,
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "heldout_accuracy": sum(correct) / len(correct),
        "heldout_accuracy_margin_0.1": sum(wide) / max(1, len(wide)),
        "agreement_with_gold": sum(both) / len(both),
        "position_consistency": sum(r[0] == r[1] for r in right) / len(right),
        "first_position_rate": sum(a for row in says_a for a in row) / (2 * len(says_a)),
        "heldout_accuracy_by_kind": {
            k: sum(sum(r) for r, kk in zip(right, held.kind) if kk == k) / max(1, 2 * held.kind.count(k))
            for k in PAIR_KINDS
        },
    }
    return model, tokenizer, metrics
