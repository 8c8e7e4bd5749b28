"""Losses and statistics for KLQ, PPO, RLOO and GRPO: small pure functions over tensors.

Shapes: B = rollouts in the batch, T = response positions (the action axis; position t is token a_t of
the response, whose log-prob and value come from the prefix s_t = (x, a_<t)). `mask` is a float or bool
(B, T) tensor that is 1 for real response tokens (up to and including the stop token) and 0 for padding.
Padded positions may hold anything (even inf/nan in logp); every function here gives results that do not
depend on them. Sequence-level functions take (B,) tensors whose rows come in groups of k adjacent
responses to the same prompt (`rollout.num_generations`; B divisible by k). Equations and names follow
docs/ALGORITHMS.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------------------- masked stats


def _zeroed(x: Tensor, mask: Tensor) -> Tensor:
    """x where mask, else 0 (robust to nan/inf in padded positions, unlike x * mask)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x over positions where mask is set. x, mask: (B, T). dim None -> scalar, else reduced."""
    x = _zeroed(x, mask)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over masked positions. x, mask: (B, T) -> scalar (dim None) or (B,) / (T,)."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over masked positions (scalar). Bessel-corrected when unbiased."""
    x = _zeroed(x, mask)  # non-finite padding must not reach the gradient through (x - mean)
    mean = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over masked positions; padded positions come back as 0. x, mask: (B, T)."""
    x = _zeroed(x, mask)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zeroed(whitened, mask)


# ------------------------------------------------------------------------------------ log-probs, entropy


def logprobs_of(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log pi(token) under softmax(logits / temperature). logits: (B, T, V), tokens: (B, T) -> (B, T)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


_CHUNK_BYTES = 2**21  # rows per step of the CPU passes below: about 2 MiB of float32 logits, so they stay in cache


def _row_chunks(rows: int, row_bytes: int, device: torch.device) -> list[slice]:
    """Slices of at most _CHUNK_BYTES of rows on CPU, where a pass over a cache-sized chunk is several times
    faster than one over the whole (N, V) tensor (154 MB at N = 768, V = 50,257) and needs no fresh (N, V)
    buffer (each a new mmap and its page faults); one slice on other devices (one kernel per op)."""
    if device.type != "cpu":
        return [slice(0, rows)]
    step = max(1, _CHUNK_BYTES // row_bytes)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


class _TokenLogprobs(torch.autograd.Function):
    """log pi(token) and the entropy of softmax(logits / temperature), fused for a big vocabulary.

    Forward, over chunks of rows: shifted = (z - max) / tau, weights = exp(shifted), total = sum(weights),
    logp = shifted[token] - log(total), entropy = log(total) - <weights, shifted> / total; only the (N,)
    row statistics are kept, no (N, V) tensor. Backward recomputes the exponentials from the saved logits
    (the same operations, so the same values) and turns them into the gradient d logp / d logits =
    (onehot - p) / tau, chunk by chunk, into one (N, V) buffer: a fresh one, or with `overwrite` the
    float32 logits' own (for callers that never read the logits after backward). On CPU, where each (N, V)
    pass over main memory and each fresh (N, V) allocation (a new mmap and its page faults) costs a good
    part of the LM-head matmul, that is most of the loss-side work."""

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, temperature: float, overwrite: bool):
        vocab = logits.shape[-1]
        z = logits.float().reshape(-1, vocab)  # (N, V): the logits themselves when float32 and contiguous
        token = tokens.reshape(-1, 1)
        rows = z.shape[0]
        peak, total = z.new_empty(rows, 1), z.new_empty(rows, 1)
        logp, entropy = z.new_empty(rows), z.new_empty(rows)
        for chunk in _row_chunks(rows, vocab * z.element_size(), z.device):
            zc = z[chunk]
            pc = torch.amax(zc, -1, keepdim=True)
            shifted = (zc - pc).div_(temperature)  # (z - max) / tau <= 0
            weights = shifted.exp()
            t = weights.sum(-1, keepdim=True)
            log_t = t.log()
            logp[chunk] = (shifted.gather(-1, token[chunk]) - log_t).squeeze(-1)
            # H = -sum p log p = log(total) - sum(weights * shifted) / total, without an (N, V) product tensor
            dot = torch.linalg.vecdot(weights, shifted).unsqueeze(-1)  # (6x faster than a batched matmul)
            entropy[chunk] = (log_t - dot / t).squeeze(-1)
            peak[chunk], total[chunk] = pc, t
        ctx.save_for_backward(z, peak, total, token)
        ctx.temperature = temperature
        # z is this function's own buffer when it is a copy (bf16 or non-contiguous logits), or when allowed
        ctx.own_buffer = overwrite or z.data_ptr() != logits.data_ptr()
        ctx.logits_dtype = logits.dtype
        ctx.logits_shape = logits.shape
        logp, entropy = logp.view(tokens.shape), entropy.view(tokens.shape)
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp: Tensor, _grad_entropy: Tensor):
        z, peak, total, token = ctx.saved_tensors
        tau = ctx.temperature
        g = grad_logp.reshape(-1, 1) / tau
        scale = -g / total
        grad = z if ctx.own_buffer else torch.empty_like(z)
        for chunk in _row_chunks(z.shape[0], z.shape[1] * z.element_size(), z.device):
            # -p * g / tau, p = exp((z - max) / tau) / total: the forward's operations, in place
            torch.sub(z[chunk], peak[chunk], out=grad[chunk]).div_(tau).exp_().mul_(scale[chunk])
        grad.scatter_add_(-1, token, g)
        return grad.view(ctx.logits_shape).to(ctx.logits_dtype), None, None, None


def logprobs_and_entropy(logits: Tensor, tokens: Tensor, temperature: float = 1.0,
                         overwrite_logits: bool = False) -> tuple[Tensor, Tensor]:
    """(logprobs_of(logits, tokens, temperature), entropy_of(logits, temperature)) in one fused pass;
    only the log-probs carry a gradient. logits: (B, T, V), tokens: (B, T) -> ((B, T), (B, T)).

    overwrite_logits: backward may write the gradient into float32 logits' own buffer instead of a new
    (B, T, V) one, so the logits must not be read after backward (klq.models.response_logprobs, which
    never hands them out). An autograd node that saved them would fail on their version counter."""
    return _TokenLogprobs.apply(logits, tokens, temperature, overwrite_logits)


def entropy_of(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / temperature) per position. logits: (B, T, V) -> (B, T)."""
    logits = logits.float() / temperature
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ------------------------------------------------------------------------------- rewards and returns


def terminal_rewards(scores: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence's score at its last response position. scores: (B,), mask: (B, T) -> (B, T)."""
    lengths = mask.long().sum(1)
    rewards = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    has_tokens = lengths > 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_tokens]
    rewards[rows, lengths[has_tokens] - 1] = scores[has_tokens]
    return rewards


def after_end_mask(mask: Tensor) -> Tensor:
    """`mask` plus the one position after each row's last response token, where there is room: TRL's and the
    KLQ fork's "slot after EOS" (their ~padding_mask_plus_one), which holds the terminal reward and the value
    of the state that ends with EOS. A response of full length gets no extra slot. (B, T) -> (B, T) bool."""
    m = mask.bool()
    return m | torch.cat([torch.zeros_like(m[:, :1]), m[:, :-1]], dim=1)


def next_values(values: Tensor, mask: Tensor) -> Tensor:
    """V(s_{t+1}) for each t, with V = 0 after the end of the response. values, mask: (B, T) -> (B, T)."""
    v = _zeroed(values, mask)
    return torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)


def discounted_cumsum(x: Tensor, mask: Tensor, discount: float) -> Tensor:
    """y_t = sum_{k>=t} discount^(k-t) x_k over masked positions (backward recursion y_t = x_t + d*y_{t+1}).

    Computed as one (T, T) matmul instead of a Python loop over tokens. x, mask: (B, T) -> (B, T),
    zero at padded positions.
    """
    T = x.shape[1]
    idx = torch.arange(T, device=x.device)
    power = (idx[None, :] - idx[:, None]).to(torch.float64)  # [t, k] = k - t
    weights = torch.where(power >= 0, discount**power.clamp(min=0), torch.zeros((), dtype=torch.float64))
    y = _zeroed(x, mask).to(torch.float64) @ weights.T.to(x.device)
    return _zeroed(y.to(x.dtype), mask)


def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (PPO).

    rewards, values, mask: (B, T). delta_t = r_t + gamma V(s_{t+1}) - V(s_t);
    A_t = sum_k (gamma lam)^k delta_{t+k}. Returns (advantages, returns = A + V), both (B, T), before any
    whitening, zero at padded positions.
    """
    deltas = _zeroed(rewards, mask) + gamma * next_values(values, mask) - _zeroed(values, mask)
    advantages = discounted_cumsum(deltas, mask, gamma * lam)
    return advantages, _zeroed(advantages + values, mask)


# ------------------------------------------------------------------------------------------------ KLQ


def klq_action_values(logp: Tensor, logp_ref: Tensor, values: Tensor, tau: float) -> Tensor:
    """Q(s_t, a_t) = tau * (log pi(a_t|s_t) - log pi_ref(a_t|s_t)) + V(s_t)  (paper Eq. 13). All (B, T)."""
    return tau * (logp - logp_ref) + values


def klq_targets(
    scores: Tensor,
    logp_old: Tensor,
    logp_ref: Tensor,
    values_old: Tensor,
    mask: Tensor,
    tau: float,
    gamma: float,
    lam: float,
    alpha: float = 1.0,
    whiten_deltas: bool = False,
    slots: Tensor | None = None,
) -> dict[str, Tensor]:
    """KLQ lambda-return targets from rollout-time quantities (no gradient).

    scores: (B,) final rewards R(x, y) (missing-EOS penalty already applied); logp_old, logp_ref,
    values_old, mask: (B, T). KLQ puts no per-token KL penalty into the reward: r_t = R at the end only.
        Q_old_t = tau (logp_old_t - logp_ref_t) + V_old(s_t)
        delta_t = r_t + gamma V_old(s_{t+1}) - Q_old_t
        Delta_t = delta_t + gamma lam Delta_{t+1}     (optionally whitened over the batch)
        G_t     = Q_old_t + alpha Delta_t
    `slots` (B, T): the positions that carry values and targets, R at the last of them; default `mask`.
    With `after_end_mask(mask)` (the fork's convention) the slot after EOS has log-ratio 0, so there
    Q_old = V_old(s_{T_end}), and whitening (over `mask`, the response tokens) leaves its Delta at 0, as
    the fork's masked_fill does. Returns dict of (B, T) tensors: q_old, td_errors (delta), deltas (Delta,
    after whitening), targets (G).
    """
    slots = mask if slots is None else slots
    with torch.no_grad():
        log_ratio = _zeroed(logp_old, mask) - _zeroed(logp_ref, mask)
        q_old = _zeroed(tau * log_ratio + values_old, slots)  # Eq. 13 on rollout-time quantities
        rewards = terminal_rewards(scores, slots)
        td_errors = _zeroed(rewards + gamma * next_values(values_old, slots) - q_old, slots)
        deltas = discounted_cumsum(td_errors, slots, gamma * lam)
        if whiten_deltas:
            deltas = masked_whiten(deltas, mask)
        targets = _zeroed(q_old + alpha * deltas, slots)
    return {"q_old": q_old, "td_errors": td_errors, "deltas": deltas, "targets": targets}


def klq_loss(
    logp: Tensor,
    logp_ref: Tensor,
    values: Tensor,
    targets: Tensor,
    mask: Tensor,
    tau: float,
    loss_type: str = "l2",
    huber_delta: float = 1.0,
    q_old: Tensor | None = None,
    logp_old: Tensor | None = None,
    value_clip: float | None = None,
    ratio_clip: float | None = None,
    clipped_half: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KLQ regression loss 0.5 * masked_mean (Q_theta - G)^2 and its variants.

    logp: (B, T) current policy log-probs (with grad); values: (B, T) current V_theta(s_t) (with grad);
    logp_ref, targets, mask: (B, T). Variants (both pessimistic, like PPO's clipping: the larger loss
    of the clipped and unclipped Q is taken):
      - loss_type "huber": Huber loss with `huber_delta` instead of 0.5 * err^2.
      - value_clip c: Q clipped to q_old +- c (needs q_old).
      - ratio_clip c: log(pi/pi_ref) clipped to log(pi_old/pi_ref) +- c inside Q (needs logp_old).
    clipped_half False: the l2 clipped variants use err^2 (the KLQ fork's), not 0.5 * err^2.
    Returns (scalar loss, stats: q (action value mean), clipfrac).
    """
    half = clipped_half or (value_clip is None and ratio_clip is None)

    # Padding may hold inf/nan: zero it in every input so no 0 * nan reaches a gradient.
    logp, logp_ref, values, targets = (_zeroed(x, mask) for x in (logp, logp_ref, values, targets))

    def pointwise(q: Tensor) -> Tensor:
        err = q - targets
        if loss_type == "l2":
            return 0.5 * err**2 if half else err**2
        if loss_type == "huber":
            return F.huber_loss(q, targets, reduction="none", delta=huber_delta)
        raise ValueError(f"unknown KLQ loss_type {loss_type!r} (expected 'l2' or 'huber')")

    log_ratio_ref = logp - logp_ref
    q = tau * log_ratio_ref + values
    losses = pointwise(q)
    clipped = torch.zeros_like(losses, dtype=torch.bool)
    if ratio_clip is not None:
        if logp_old is None:
            raise ValueError("ratio_clip needs logp_old")
        old = _zeroed(logp_old, mask) - logp_ref
        q_rc = tau * torch.clamp(log_ratio_ref, old - ratio_clip, old + ratio_clip) + values
        losses_rc = pointwise(q_rc)
        clipped |= losses_rc > losses
        losses = torch.maximum(losses, losses_rc)
    if value_clip is not None:
        if q_old is None:
            raise ValueError("value_clip needs q_old")
        q_old = _zeroed(q_old, mask)
        q_vc = torch.clamp(q, q_old - value_clip, q_old + value_clip)
        losses_vc = pointwise(q_vc)
        clipped |= losses_vc > losses
        losses = torch.maximum(losses, losses_vc)
    loss = masked_mean(losses, mask)
    stats = {
        "q": masked_mean(q.detach(), mask),
        "clipfrac": masked_mean(clipped.float(), mask),
    }
    return loss, stats


# ------------------------------------------------------------------------------------------------ PPO


def ppo_rewards(scores: Tensor, logp_old: Tensor, logp_ref: Tensor, mask: Tensor, kl_coef: float,
                slots: Tensor | None = None) -> Tensor:
    """Per-token PPO reward: -kl_coef (logp_old - logp_ref) on the response tokens plus R at the last of
    `slots` (default `mask`; `after_end_mask(mask)`: the slot after EOS, as TRL). scores: (B,); others
    (B, T) -> (B, T), zero at padding."""
    return _zeroed(-kl_coef * (logp_old - logp_ref), mask) + terminal_rewards(scores, mask if slots is None else slots)


def clipped_surrogate(
    logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """Per-token clipped surrogate max(-A rho, -A clip(rho, 1-eps_low, 1+eps_high))
    = -min(rho A, clip(rho) A), rho = exp(logp - logp_old): asymmetric clipping (DAPO's "clip-higher");
    PPO's is eps_low = eps_high.

    logp (with grad), logp_old, mask: (B, T); advantages: (B, T) per token or (B,) one per sequence (every
    token of response i gets A_i). Returns (per-token loss (B, T), clipped (B, T) bool: where the clipped
    term is the larger, i.e. carries no gradient), both zero/False at padding."""
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    advantages = _zeroed(advantages, mask)
    ratio = torch.exp(_zeroed(logp - logp_old, mask))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    return _zeroed(torch.maximum(unclipped, clipped), mask), (clipped > unclipped) & mask.bool()


def ppo_policy_loss(
    logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate: masked_mean max(-A rho, -A clip(rho, 1-eps, 1+eps)), rho = exp(logp - logp_old).

    All inputs (B, T). Returns (loss, stats: clipfrac, approxkl = 0.5 mean (log rho)^2, ratio mean).
    """
    per_token, clipped = clipped_surrogate(logp, logp_old, advantages, mask, cliprange, cliprange)
    log_ratio = _zeroed(logp - logp_old, mask).detach()
    stats = {
        "clipfrac": masked_mean(clipped.float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "ratio": masked_mean(log_ratio.exp(), mask),
    }
    return aggregate_loss(per_token, mask, "token"), stats


def ppo_value_loss(
    values: Tensor, values_old: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """0.5 masked_mean max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2). All (B, T).
    cliprange_value None -> unclipped 0.5 masked_mean (V - R)^2. Returns (loss, stats: clipfrac)."""
    values, values_old, returns = (_zeroed(x, mask) for x in (values, values_old, returns))
    unclipped = (values - returns) ** 2
    if cliprange_value is None:
        return 0.5 * masked_mean(unclipped, mask), {"clipfrac": torch.zeros((), device=values.device)}
    values_clipped = torch.clamp(values, values_old - cliprange_value, values_old + cliprange_value)
    clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, {"clipfrac": masked_mean((clipped > unclipped).float(), mask)}


# ----------------------------------------------------------------------------- RLOO and GRPO (groups)


def _groups(x: Tensor, k: int) -> Tensor:
    """(B,) -> (B/k, k): row g holds the k adjacent responses to prompt g."""
    if k < 1 or x.shape[0] % k:
        raise ValueError(f"batch of {x.shape[0]} responses is not a whole number of groups of {k}")
    return x.reshape(-1, k)


def sequence_rewards_with_kl(
    scores: Tensor, logp_old: Tensor, logp_ref: Tensor, mask: Tensor, kl_coef: float
) -> Tensor:
    """RLOO's sequence reward R_i = R(x, y_i) - kl_coef * sum_t (logp_old_t - logp_ref_t) (KL in the reward).
    scores: (B,); logp_old, logp_ref, mask: (B, T) -> (B,)."""
    return scores - kl_coef * masked_sum(logp_old - logp_ref, mask, dim=1)


def rloo_advantages(seq_rewards: Tensor, k: int) -> Tensor:
    """Leave-one-out advantages A_i = R_i - (1/(k-1)) sum_{j != i} R_j within each group of k adjacent rows
    (= k/(k-1) (R_i - mean_group R)). seq_rewards: (B,) -> (B,). Needs k >= 2 (no baseline otherwise)."""
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 responses per prompt (rollout.num_generations), got {k}")
    grouped = _groups(seq_rewards, k)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).reshape(-1)


def grpo_advantages(scores: Tensor, k: int, scale_rewards: str = "group", eps: float = 1e-4) -> Tensor:
    """GRPO advantages A_i = (R_i - mean_group R) / (std + eps) over groups of k adjacent rows.

    scale_rewards: "group" (std of the group), "batch" (std of all B raw rewards: TRL GRPOTrainer's
    rewards.std(), group mean still subtracted), "none" (Dr. GRPO: centred only). Stds are Bessel-corrected
    (torch.std, as TRL); a single value has std 0 (TRL's convention), so its advantage is 0 / eps = 0.
    scores: (B,) -> (B,). The batch is this process's (TRL gathers all processes' rewards first).
    """
    grouped = _groups(scores, k)
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale_rewards == "none":
        return centred.reshape(-1)
    if scale_rewards == "group":
        std = grouped.std(1, keepdim=True) if k > 1 else torch.zeros_like(grouped)
    elif scale_rewards == "batch":
        std = scores.std() if scores.numel() > 1 else scores.new_zeros(())
    else:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r} (expected 'group', 'batch' or 'none')")
    return (centred / (std + eps)).reshape(-1)


def kl_k3(logp: Tensor, logp_ref: Tensor, mask: Tensor) -> Tensor:
    """Schulman's k3 estimate of KL(pi || pi_ref) per token: exp(d) - d - 1 with d = logp_ref - logp.

    Computed as expm1(d) - d, which is >= 0 in floating point too (and 0 where logp = logp_ref), and whose
    gradient 1 - exp(d) vanishes there. logp, logp_ref, mask: (B, T) -> (B, T), zero at padding."""
    d = _zeroed(logp_ref - logp, mask)
    return _zeroed(torch.expm1(d) - d, mask)


LOSS_AGGREGATIONS = ("grpo", "token", "dr_grpo")


def aggregate_loss(per_token: Tensor, mask: Tensor, mode: str, max_len: int | None = None) -> Tensor:
    """Reduce a per-token loss (B, T) over the response tokens of `mask` (B, T) to a scalar.

    "grpo": mean over each sequence's tokens, then over the B sequences (a sequence with no tokens counts 0);
    "token": sum over all tokens / their number (DAPO; = masked_mean; PPO's reduction);
    "dr_grpo": sum over all tokens / (B * max_len), max_len the configured response length
    (`rollout.response_length`), not the tensor's width: extra right padding changes none of the three.
    """
    if mode == "grpo":
        return masked_mean(per_token, mask, dim=1).mean()
    if mode == "token":
        return masked_mean(per_token, mask)
    if mode == "dr_grpo":
        if max_len is None:
            raise ValueError("loss aggregation 'dr_grpo' needs max_len (the configured response length)")
        return masked_sum(per_token, mask) / (per_token.shape[0] * max_len)
    raise ValueError(f"unknown loss aggregation {mode!r} (expected one of {', '.join(LOSS_AGGREGATIONS)})")
