"""Rollouts: sample responses with a KV cache, truncate them, and score them, each forward pass once.

Per batch: one incremental generation pass of the policy (its temperature-scaled log-probs are kept from
sampling time, so the policy is not run again), one no-grad pass of the reference for log pi_ref, one of
the value network for V_old (none when the models have no value network: RLOO, GRPO), one of the reward
model for R.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from klq.config import RolloutConfig
from klq.losses import after_end_mask, masked_sum
from klq.models import Models, position_ids_from, response_logprobs, sequence_scores
from klq.tasks import Prompt


@dataclass
class Rollout:
    """One batch of B rollouts. P = padded prompt length, T = response_length. Rows come in groups of
    `num_generations` (k) adjacent responses to the same prompt: row i belongs to group i // k."""

    prompts: list[Prompt]  # (B,) one per row: each prompt repeated k times, adjacent
    query_ids: Tensor  # (B, P) left-padded
    query_mask: Tensor  # (B, P)
    response_ids: Tensor  # (B, T) pad after the stop token
    response_mask: Tensor  # (B, T) float, 1 up to and including the stop token
    logp_old: Tensor  # (B, T) log pi_old(a_t | s_t) at sampling temperature
    logp_ref: Tensor  # (B, T)
    values_old: Tensor | None  # (B, T) V_old(s_t); None without a value network (RLOO, GRPO)
    raw_scores: Tensor  # (B,) reward-model score
    scores: Tensor  # (B,) after the missing-EOS penalty: the R the algorithms use
    ended: Tensor  # (B,) bool: response stopped at EOS or a stop sequence
    responses: list[str]  # decoded, without the stop sequence that ended them
    stopped_by: list[str] = field(default_factory=list)  # per row: "eos", the stop sequence, or "length"
    gold_scores: Tensor | None = None  # (B,) the task's ground-truth reward where it has one
    extras: dict[str, Tensor] = field(default_factory=dict)
    num_generations: int = 1  # k: responses per prompt
    entropy: Tensor | None = None  # (B, T) the policy's entropy at s_t at sampling time (with_entropy), 0 after the end

    @property
    def group_ids(self) -> Tensor:
        """(B,) long: the group (prompt) index of each row, 0 .. B/k - 1."""
        return torch.arange(len(self), device=self.query_ids.device) // self.num_generations

    @property
    def input_ids(self) -> Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        return torch.cat([self.query_mask, self.response_mask.long()], dim=1)

    @property
    def kl(self) -> Tensor:
        """(B,) summed sampled k1 estimate of KL(pi_old || pi_ref) over each response."""
        return masked_sum(self.logp_old - self.logp_ref, self.response_mask, dim=1)

    def __len__(self) -> int:
        return self.query_ids.shape[0]


def _filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Top-k / nucleus filtering of (B, V) logits (already temperature-scaled)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


_BLOCK = 256  # vocabulary entries per block of the two-level inverse-CDF search in _sample_token


def _sample_token(scaled: Tensor, top_k: int, top_p: float,
                  with_entropy: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """One token per row of temperature-scaled (B, V) logits, and its log-prob under softmax(scaled).

    Inverse-CDF sampling with one uniform number per row: the same categorical distribution as
    torch.multinomial, which draws V exponential variates per row (that dominated CPU generation at a
    50k vocabulary). Two levels, so that no sequential scan runs over the whole vocabulary: a vectorised
    sum per block of 256 entries, a float64 cumulative sum over the ~200 block sums to pick the block, and
    one over the chosen block to pick the token. Entries that top-k / top-p removed have weight 0 and are
    never drawn (strictly-greater search, and the residual is kept below the chosen block's total).
    Returns (token (B,), its log-prob (B,), the entropy of softmax(scaled) (B,) if with_entropy else None:
    logsumexp - E[scaled], from the same exp pass).
    """
    B, V = scaled.shape
    peak = scaled.max(-1, keepdim=True).values
    unnorm = (scaled - peak).exp()
    total = unnorm.sum(-1)
    lse = peak.squeeze(-1) + total.log()  # logsumexp(scaled), from the same exp pass
    weights = unnorm if top_k <= 0 and top_p >= 1.0 else (_filter_logits(scaled, top_k, top_p) - peak).exp()
    full = V // _BLOCK * _BLOCK
    sums = weights[:, :full].reshape(B, -1, _BLOCK).sum(-1)
    if full < V:
        sums = torch.cat([sums, weights[:, full:].sum(-1, keepdim=True)], dim=1)
    block_cdf = sums.double().cumsum(-1)
    target = torch.rand(B, 1, dtype=torch.float64, device=scaled.device) * block_cdf[:, -1:]
    block = torch.searchsorted(block_cdf, target, right=True).clamp(max=block_cdf.shape[1] - 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    columns = block * _BLOCK + torch.arange(_BLOCK, device=scaled.device)  # (B, BLOCK)
    inside = columns < V
    in_block = torch.where(inside, weights.gather(1, columns.clamp(max=V - 1)), 0.0).double().cumsum(-1)
    residual = torch.minimum(target - before, in_block[:, -1:] * (1 - 1e-12))
    offset = torch.searchsorted(in_block, residual, right=True).clamp(max=_BLOCK - 1)
    token = (block * _BLOCK + offset).squeeze(-1)
    logp = scaled.gather(-1, token[:, None]).squeeze(-1) - lse
    # H = logsumexp - E[scaled]; in place on `unnorm` (not needed any more): a (B, V) temporary here cost
    # as much as the whole draw on a loaded CPU
    entropy = lse - unnorm.mul_(scaled).sum(-1) / total if with_entropy else None
    return token, logp, entropy


@torch.no_grad()
def sample(
    policy: torch.nn.Module,
    query_ids: Tensor,
    query_mask: Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    greedy: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Autoregressive sampling with the model's KV cache.

    query_ids, query_mask: (B, P) left-padded. Returns (response_ids (B, T), logprobs (B, T)), T =
    max_new_tokens: tokens after a row's EOS are pad, their log-probs 0. Log-probs are of the chosen token
    under softmax(logits / temperature), the distribution training recomputes (greedy picks its argmax).
    ``with_entropy``: a third (B, T) tensor, the entropy of softmax(logits / temperature) at each step
    (0 after EOS), from the logits sampling has anyway (the token view's entropy, no extra forward).
    """
    batch = query_ids.shape[0]
    device = query_ids.device
    mask = query_mask.long()
    # The prefill needs the logits of the last prompt position only (not P x V of them).
    out = policy(input_ids=query_ids, attention_mask=mask, position_ids=position_ids_from(mask), use_cache=True,
                 logits_to_keep=1)
    cache, logits = out.cache, out.logits[:, -1].float()
    next_position = mask.sum(-1, keepdim=True)
    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    entropies = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device) if with_entropy else None
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        scaled = logits / temperature
        if greedy:
            token = scaled.argmax(-1)
            logp = scaled.gather(-1, token[:, None]).squeeze(-1) - torch.logsumexp(scaled, -1)
            entropy = _entropy(scaled) if entropies is not None else None
        else:
            token, logp, entropy = _sample_token(scaled, top_k, top_p, with_entropy=entropies is not None)
        tokens[:, t] = torch.where(finished, pad_token_id, token)
        logprobs[:, t] = torch.where(finished, 0.0, logp)
        if entropies is not None:
            entropies[:, t] = torch.where(finished, 0.0, entropy)
        finished |= token == eos_token_id
        if bool(finished.all()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        out = policy(
            input_ids=tokens[:, t : t + 1], attention_mask=mask, position_ids=next_position, cache=cache, use_cache=True
        )
        cache, logits = out.cache, out.logits[:, -1].float()
        next_position = next_position + 1
    return (tokens, logprobs) if entropies is None else (tokens, logprobs, entropies)


def _entropy(scaled: Tensor) -> Tensor:
    """Entropy of softmax(scaled) per row. (B, V) -> (B,)."""
    logp = torch.log_softmax(scaled, dim=-1)
    return -(logp.exp() * logp).sum(-1)


EOS, LENGTH = "eos", "length"  # Rollout.stopped_by values besides a stop sequence's own text


@dataclass
class Truncation:
    """Responses cut at their end. B rows, T = response_length."""

    ids: Tensor  # (B, T) pad after the end
    mask: Tensor  # (B, T) float: 1 up to and including the EOS token or the stop sequence's last token
    ended: Tensor  # (B,) bool: at EOS or a stop sequence
    stopped_by: list[str]  # "eos", the stop sequence that ended it, or "length"
    texts: list[str]  # decoded responses (special tokens skipped) without the stop sequence
    scored_ids: list[list[int] | None]  # stop-sequence rows: token ids of `texts` for scoring; else None


def _first_token_match(ids: list[int], stop_ids: list[int]) -> int | None:
    k = len(stop_ids)
    return next((i for i in range(len(ids) - k + 1) if k and ids[i : i + k] == stop_ids), None)


def _first_text_match(ids: list[int], tokenizer, stops: list[str]) -> int | None:
    """The smallest prefix length whose decoded text contains a stop sequence, None if the row has none
    (binary search: containment only grows with the prefix)."""
    def contains(n: int) -> bool:
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        return any(stop in text for stop in stops)

    if not contains(len(ids)):
        return None
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if contains(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _cut_before_stop(ids: list[int], end: int, tokenizer, stops: list[str]) -> tuple[str, str, list[int]]:
    """(stop sequence, text before it, ids of that text) for a row whose first `end` tokens complete a stop
    sequence in their text. Tokens that lie wholly before the stop sequence are kept as sampled; the piece of
    a token that the stop sequence starts inside of is re-tokenised."""
    text = tokenizer.decode(ids[:end], skip_special_tokens=True)
    at, stop = min((text.find(s), s) for s in stops if s in text)
    kept = text[:at]
    for m in range(end - 1, 0, -1):
        head = tokenizer.decode(ids[:m], skip_special_tokens=True)
        if kept.startswith(head):
            tail = kept[len(head):]
            return stop, kept, ids[:m] + (tokenizer.encode(tail, add_special_tokens=False) if tail else [])
    return stop, kept, tokenizer.encode(kept, add_special_tokens=False)


def cut_responses(
    response_ids: Tensor, eos_token_id: int, pad_token_id: int, tokenizer, stop_sequences: list[str]
) -> Truncation:
    """Cut each response after its first EOS, or after the token that completes a stop sequence.

    A stop sequence is found on token ids (its own tokenisation, as the KLQ fork matches it) and on the
    decoded text (for where the tokenizer splits it differently in context); the earlier end wins. Its tokens
    stay in the trajectory (mask), like EOS, so the policy learns to stop; the text that is scored, judged
    and stored ends before it.
    """
    B, T = response_ids.shape
    is_eos = response_ids == eos_token_id
    ended = is_eos.any(1)
    lengths = torch.where(ended, is_eos.float().argmax(1) + 1, torch.full_like(ended, T, dtype=torch.long))
    stopped_by = [EOS if e else LENGTH for e in ended.tolist()]
    scored_ids: list[list[int] | None] = [None] * B
    cut_texts: dict[int, str] = {}
    stop_ids = [tokenizer.encode(s, add_special_tokens=False) for s in stop_sequences]
    for row in range(B) if stop_sequences else ():
        ids = response_ids[row, : int(lengths[row])].tolist()
        by_tokens = [(i + len(s_ids), i, stop) for stop, s_ids in zip(stop_sequences, stop_ids, strict=True)
                     if (i := _first_token_match(ids, s_ids)) is not None]
        by_text = _first_text_match(ids, tokenizer, stop_sequences)
        token_end, token_start, token_stop = min(by_tokens) if by_tokens else (T + 1, None, None)
        if by_text is None and not by_tokens:
            continue
        if by_text is None or token_end <= by_text:  # the stop sequence's own tokens: cut exactly before them
            end, stop, kept_ids = token_end, token_stop, ids[:token_start]
            kept = tokenizer.decode(kept_ids, skip_special_tokens=True)
        else:
            end = by_text
            stop, kept, kept_ids = _cut_before_stop(ids, end, tokenizer, stop_sequences)
        lengths[row], ended[row], stopped_by[row] = end, True, stop
        scored_ids[row], cut_texts[row] = kept_ids, kept
    mask = torch.arange(T, device=response_ids.device)[None, :] < lengths[:, None]
    ids = response_ids.masked_fill(~mask, pad_token_id)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    for row, kept in cut_texts.items():
        texts[row] = kept
    return Truncation(ids, mask.float(), ended, stopped_by, texts, scored_ids)


def truncate_responses(
    response_ids: Tensor, eos_token_id: int, pad_token_id: int, tokenizer, stop_sequences: list[str]
) -> tuple[Tensor, Tensor, Tensor]:
    """`cut_responses` as (ids with pad after the end, mask (B, T) float, ended (B,) bool)."""
    cut = cut_responses(response_ids, eos_token_id, pad_token_id, tokenizer, stop_sequences)
    return cut.ids, cut.mask, cut.ended


def _reward_inputs(models: Models, query_ids: Tensor, query_mask: Tensor, cut: Truncation, rows: slice,
                   texts: list[str]) -> tuple[Tensor, Tensor]:
    """Reward-model inputs for `rows`: the policy's ids when both share a tokenizer, else prompt + response
    re-tokenised. A response that ended on a stop sequence is scored without it."""
    ids = torch.cat([query_ids[rows], cut.ids[rows]], dim=1)
    mask = torch.cat([query_mask[rows], cut.mask[rows].long()], dim=1)
    if not models.same_tokenizer:
        enc = models.reward_tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return enc["input_ids"].to(ids.device), enc["attention_mask"].to(ids.device)
    scored = cut.scored_ids[rows]
    if all(s is None for s in scored):
        return ids, mask
    responses = [cut.ids[row, : int(cut.mask[row].sum())].tolist() if s is None else s
                 for row, s in zip(range(*rows.indices(len(cut.scored_ids))), scored, strict=True)]
    width = max(1, max(len(r) for r in responses))
    pad = models.tokenizer.pad_token_id
    response_ids = torch.tensor([r + [pad] * (width - len(r)) for r in responses], device=ids.device)
    response_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses], device=ids.device)
    return (torch.cat([query_ids[rows], response_ids], dim=1),
            torch.cat([query_mask[rows].long(), response_mask.to(query_mask.dtype)], dim=1))


@torch.no_grad()
def generate_and_score(
    models: Models,
    policy: torch.nn.Module,
    prompts: list[Prompt],
    cfg: RolloutConfig,
    device: torch.device,
    max_prompt_length: int,
    forward_batch_size: int,
    gold_reward: Callable[[list[str], list[str]], list[float] | None] | None = None,
    greedy: bool = False,
    generation_batch_size: int = 64,
    num_generations: int = 1,
    with_entropy: bool = False,
) -> Rollout:
    """Sample `num_generations` responses for each of `prompts` (B = len(prompts) * num_generations rows,
    the responses to a prompt adjacent) and compute everything the algorithms need, in chunks of
    `forward_batch_size` rows for the no-grad scoring passes. Sampling takes max(forward_batch_size,
    generation_batch_size) rows at a time (64: TRL's local_rollout_forward_batch_size): a decode step
    costs about the same for 16 rows as for 64 (it reads every weight once either way), so fewer,
    wider chunks mean fewer decode steps per batch. ``with_entropy``: also the sampling-time entropy per
    token (Rollout.entropy), for the token records."""
    prompts = [p for p in prompts for _ in range(num_generations)]
    tok = models.tokenizer
    enc = tok([p.text for p in prompts], return_tensors="pt", padding=True, truncation=True,
              max_length=max_prompt_length)
    query_ids, query_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    T = cfg.response_length
    was_training = policy.training
    policy.eval()
    chunks = []
    sample_rows = max(forward_batch_size, generation_batch_size)
    for start in range(0, len(prompts), sample_rows):
        rows = slice(start, start + sample_rows)
        chunks.append(sample(policy, query_ids[rows], query_mask[rows], T, tok.eos_token_id, tok.pad_token_id,
                             cfg.temperature, greedy, cfg.top_k, cfg.top_p, with_entropy=with_entropy))
    policy.train(was_training)
    response_ids = torch.cat([c[0] for c in chunks])
    logp_old = torch.cat([c[1] for c in chunks])
    entropy = torch.cat([c[2] for c in chunks]) if with_entropy else None
    cut = cut_responses(response_ids, tok.eos_token_id, tok.pad_token_id, tok, cfg.stop_sequences)
    response_ids, response_mask, ended, responses = cut.ids, cut.mask, cut.ended, cut.texts
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask, response_mask.long()], dim=1)
    texts = [p.text + r for p, r in zip(prompts, responses, strict=True)]

    logp_ref, values_old, raw_scores = [], [], []
    for start in range(0, len(prompts), forward_batch_size):
        rows = slice(start, start + forward_batch_size)
        ids, am = input_ids[rows], attention_mask[rows]
        logp_ref.append(response_logprobs(models.reference, ids, am, response_ids[rows], cfg.temperature)[0])
        if models.value is not None:
            values_old.append(models.value(ids, am, T))
        r_ids, r_mask = _reward_inputs(models, query_ids, query_mask, cut, rows, texts[rows])
        raw_scores.append(sequence_scores(models.reward, r_ids, r_mask))
    raw = torch.cat(raw_scores)
    scores = raw.clone()
    if cfg.missing_eos_penalty is not None:
        # No EOS: cut by length, or (penalize_stop_sequences, the fork's way) by a stop sequence.
        spared = [by == EOS or (by != LENGTH and not cfg.penalize_stop_sequences) for by in cut.stopped_by]
        scores = torch.where(torch.tensor(spared, device=scores.device), scores, scores - cfg.missing_eos_penalty)
    gold = gold_reward([p.text for p in prompts], responses) if gold_reward else None
    return Rollout(
        prompts=prompts,
        query_ids=query_ids,
        query_mask=query_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        logp_old=torch.where(response_mask.bool(), logp_old, 0.0),
        logp_ref=torch.where(response_mask.bool(), torch.cat(logp_ref), 0.0),
        # V_old is kept one slot past the end too: the value of the state that ends with EOS, which the
        # terminal_slot "after_eos" convention trains (the default masks it away).
        values_old=torch.where(after_end_mask(response_mask), torch.cat(values_old), 0.0)
        if models.value is not None else None,
        raw_scores=raw,
        scores=scores,
        ended=ended,
        responses=responses,
        stopped_by=cut.stopped_by,
        gold_scores=None if gold is None else torch.tensor(gold, dtype=torch.float32, device=device),
        num_generations=num_generations,
        entropy=None if entropy is None else torch.where(response_mask.bool(), entropy, 0.0),
    )
