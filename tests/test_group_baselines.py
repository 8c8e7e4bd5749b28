"""RLOO and GRPO building blocks in klq/losses.py against the identities of docs/ALGORITHMS.md
("Completion-level baselines without a value model").

Every expected value is computed here by explicit Python loops over groups, rows and tokens (or by
autograd of single log-probs), never by the function under test. Groups are k adjacent rows. float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from klq import losses as L

F64 = torch.float64
KS = [2, 3, 5]


def rewards(seed: int, k: int, groups: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(groups * k, generator=gen, dtype=F64) + 0.3


def by_group(x: torch.Tensor, k: int) -> list[list[float]]:
    values = x.tolist()
    return [values[g : g + k] for g in range(0, len(values), k)]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def std(xs: list[float]) -> float:
    """Bessel-corrected (torch.std's and TRL's)."""
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def close(actual, expected, **kw):
    torch.testing.assert_close(
        actual, torch.as_tensor(expected, dtype=F64), **{"rtol": 1e-10, "atol": 1e-12, **kw}
    )


# ------------------------------------------------------------------------------------------------- RLOO


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rloo_leave_one_out_identities(seed, k):
    R = rewards(seed, k)
    A = L.rloo_advantages(R, k)
    expected = []
    for group in by_group(R, k):
        for i, r_i in enumerate(group):
            others = [r for j, r in enumerate(group) if j != i]
            expected.append(r_i - sum(others) / (k - 1))  # the definition
    close(A, expected)
    for g, (group, adv) in enumerate(zip(by_group(R, k), by_group(A, k))):
        assert abs(sum(adv)) < 1e-12, f"identity (1): group {g} advantages sum to {sum(adv)}"
        m = mean(group)
        for r_i, a_i in zip(group, adv):  # identity (2)
            assert a_i == pytest.approx(k / (k - 1) * (r_i - m), rel=1e-12, abs=1e-12)


def test_rloo_needs_two_responses_per_prompt_and_whole_groups():
    with pytest.raises(ValueError, match="at least 2 responses per prompt"):
        L.rloo_advantages(torch.zeros(4, dtype=F64), 1)
    with pytest.raises(ValueError, match="not a whole number of groups of 3"):
        L.rloo_advantages(torch.zeros(4, dtype=F64), 3)


def test_rloo_literal_example():
    A = L.rloo_advantages(torch.tensor([1.0, 2.0, 6.0, 0.0, 4.0, 4.0], dtype=F64), 3)
    # group 1: 1 - (2+6)/2 = -3, 2 - 3.5 = -1.5, 6 - 1.5 = 4.5; group 2: 0 - 4 = -4, 4 - 2 = 2, 2
    close(A, [-3.0, -1.5, 4.5, -4.0, 2.0, 2.0])


def test_sequence_rewards_with_kl_vs_loop():
    gen = torch.Generator().manual_seed(3)
    B, T, kl_coef = 4, 6, 0.1
    lengths = [1, 6, 3, 0]
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    scores = torch.randn(B, generator=gen, dtype=F64)
    logp_ref = -torch.rand(B, T, generator=gen, dtype=F64) - 0.1
    logp_old = logp_ref + 0.5 * torch.randn(B, T, generator=gen, dtype=F64)
    logp_old[~mask] = float("nan")  # padding holds anything
    expected = [
        s - kl_coef * sum(logp_old[b, t].item() - logp_ref[b, t].item() for t in range(n))
        for b, (s, n) in enumerate(zip(scores.tolist(), lengths))
    ]
    close(L.sequence_rewards_with_kl(scores, logp_old, logp_ref, mask, kl_coef), expected)


# ------------------------------------------------------------------------------------------------- GRPO


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_group_scaling_identities(seed, k):
    eps = 1e-4
    R = rewards(seed, k)
    A = L.grpo_advantages(R, k, "group", eps)
    expected = [(r - mean(g)) / (std(g) + eps) for g in by_group(R, k) for r in g]
    close(A, expected)
    for group, adv in zip(by_group(R, k), by_group(A, k)):
        assert abs(sum(adv)) < 1e-10  # identity (1)
        s = std(group)
        assert std(adv) == pytest.approx(s / (s + eps), rel=1e-10)  # identity (3): std 1 up to eps
        assert abs(std(adv) - 1) <= eps / s
    # identity (3): a constant added to every reward of a group (a different one per group) changes nothing
    shift = torch.tensor([c for c in (5.0, -3.0, 0.25, 100.0) for _ in range(k)], dtype=F64)
    close(L.grpo_advantages(R + shift, k, "group", eps), A, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k", KS)
def test_grpo_batch_and_none_scaling_vs_loop(k):
    eps = 1e-4
    R = rewards(7, k)
    all_r = R.tolist()
    batch_std = std(all_r)  # TRL: rewards.std() over the whole batch of raw rewards
    close(
        L.grpo_advantages(R, k, "batch", eps),
        [(r - mean(g)) / (batch_std + eps) for g in by_group(R, k) for r in g],
    )
    none = L.grpo_advantages(R, k, "none")
    close(none, [r - mean(g) for g in by_group(R, k) for r in g])
    for scale in ("batch", "none"):  # group-mean centring in every mode
        for adv in by_group(L.grpo_advantages(R, k, scale, eps), k):
            assert abs(sum(adv)) < 1e-10
    # "none" (Dr. GRPO) is shift-invariant per group too; the scale of the rewards is kept
    close(L.grpo_advantages(3.0 * R + 2.0, k, "none"), 3.0 * none, rtol=1e-10, atol=1e-10)


def test_grpo_degenerate_groups_give_zero_advantages():
    """A group whose rewards are all equal, or a group of one, has no signal: A = 0, never nan."""
    R = torch.tensor([1.5, 1.5, 1.5, -2.0, 0.5, 2.0], dtype=F64)
    A = L.grpo_advantages(R, 3, "group")
    assert A[:3].eq(0).all() and torch.isfinite(A).all() and A[3:].abs().min() > 0.1
    for scale in ("group", "batch", "none"):
        assert L.grpo_advantages(R, 1, scale).eq(0).all()
    assert L.grpo_advantages(torch.tensor([4.0], dtype=F64), 1, "batch").eq(0).all()
    with pytest.raises(ValueError, match="unknown scale_rewards 'sequence'"):
        L.grpo_advantages(R, 3, "sequence")


def test_grpo_literal_example():
    A = L.grpo_advantages(torch.tensor([0.0, 1.0, 2.0, 10.0, 10.0, 13.0], dtype=F64), 3, "group", eps=0.0)
    # group 1: mean 1, std 1 -> -1, 0, 1; group 2: mean 11, std sqrt(((-1)^2 + (-1)^2 + 2^2) / 2) = sqrt(3)
    s = math.sqrt(3.0)
    close(A, [-1.0, 0.0, 1.0, -1 / s, -1 / s, 2 / s])


# ---------------------------------------------------------------------------------------------------- k3


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_k3_nonnegative_and_zero_exactly_at_the_reference(dtype):
    gen = torch.Generator().manual_seed(0)
    B, T = 8, 50
    logp_ref = -3.0 * torch.rand(B, T, generator=gen, dtype=F64)
    diff = torch.randn(B, T, generator=gen, dtype=F64) * torch.logspace(
        -3, 1, T, dtype=F64
    )  # 1e-3 .. 10 nats
    logp = logp_ref + diff
    equal = torch.rand(B, T, generator=gen) < 0.3
    logp = torch.where(equal, logp_ref, logp).to(dtype)
    logp_ref = logp_ref.to(dtype)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, -5:] = False
    k3 = L.kl_k3(logp, logp_ref, mask)
    assert k3.dtype == dtype
    expected = [
        [math.exp(r - p) - (r - p) - 1 if m else 0.0 for p, r, m in zip(pr, rr, mr)]
        for pr, rr, mr in zip(logp.double().tolist(), logp_ref.double().tolist(), mask.tolist())
    ]
    torch.testing.assert_close(
        k3.double(),
        torch.tensor(expected, dtype=F64),
        rtol=1e-5 if dtype == torch.float32 else 1e-10,
        atol=1e-7,
    )
    assert (k3 >= 0).all()  # identity (5), in float32 too
    real = mask & ~equal
    assert (k3[real] > 0).all() and k3[equal].eq(0).all()  # = 0 iff logp = logp_ref
    assert k3[~mask].eq(0).all()


def test_k3_gradient_vanishes_at_the_reference():
    logp = torch.tensor([[-1.0, -2.5, -0.3]], dtype=F64, requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    (grad,) = torch.autograd.grad(L.kl_k3(logp, logp.detach(), mask).sum(), logp)
    assert grad.eq(0).all()
    ref = torch.tensor([[-1.5, -2.0, -0.3]], dtype=F64)
    (grad,) = torch.autograd.grad(L.kl_k3(logp, ref, mask).sum(), logp)
    close(grad, [[1 - math.exp(-0.5), 1 - math.exp(0.5), 0.0]])  # d/dlogp (e^d - d - 1) = 1 - e^d


# ------------------------------------------------------------------------------- surrogate, aggregation


def tiny_batch(seed: int, B: int = 6, T: int = 5):
    gen = torch.Generator().manual_seed(seed)
    lengths = [1, T] + [int(torch.randint(1, T + 1, (1,), generator=gen)) for _ in range(B - 2)]
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    logp_old = -torch.rand(B, T, generator=gen, dtype=F64) - 0.2
    logp = logp_old + 0.4 * torch.randn(B, T, generator=gen, dtype=F64)  # rho from about 0.3 to 3
    seq_adv = torch.randn(B, generator=gen, dtype=F64)
    return lengths, mask, logp, logp_old, seq_adv


def brute_surrogate(logp, logp_old, adv, lengths, eps_low, eps_high):
    """-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) per real token; (loss rows, clipped rows)."""
    loss, clipped = [], []
    for b, n in enumerate(lengths):
        lrow, crow = [], []
        for t in range(logp.shape[1]):
            if t >= n:
                lrow.append(0.0)
                crow.append(False)
                continue
            rho = math.exp(logp[b, t].item() - logp_old[b, t].item())
            a = adv[b].item()
            unclipped, clip = rho * a, min(max(rho, 1 - eps_low), 1 + eps_high) * a
            lrow.append(-min(unclipped, clip))
            crow.append(clip < unclipped)
        loss.append(lrow)
        clipped.append(crow)
    return torch.tensor(loss, dtype=F64), torch.tensor(clipped)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps_low,eps_high", [(0.2, 0.2), (0.2, 0.28), (0.1, 0.5)])
def test_clipped_surrogate_vs_loop(seed, eps_low, eps_high):
    lengths, mask, logp, logp_old, adv = tiny_batch(seed)
    per_token, clipped = L.clipped_surrogate(logp, logp_old, adv, mask, eps_low, eps_high)
    exp_loss, exp_clipped = brute_surrogate(logp, logp_old, adv, lengths, eps_low, eps_high)
    close(per_token, exp_loss)
    assert torch.equal(clipped, exp_clipped)
    # (B,) sequence advantages are those of every token of the sequence
    per_token_bt, _ = L.clipped_surrogate(
        logp, logp_old, adv[:, None].expand_as(logp), mask, eps_low, eps_high
    )
    close(per_token_bt, exp_loss)


def test_clipped_surrogate_is_asymmetric():
    """rho = 1.25: inside 1 + 0.28 (clip-higher), clipped at 1 + 0.2; rho = 0.75 with A < 0: clipped at 1 - 0.2."""
    logp_old = torch.zeros(1, 2, dtype=F64)
    logp = torch.log(torch.tensor([[1.25, 0.75]], dtype=F64))
    mask = torch.ones(1, 2, dtype=torch.bool)
    pos, _ = L.clipped_surrogate(
        logp[:, :1], logp_old[:, :1], torch.tensor([2.0], dtype=F64), mask[:, :1], 0.2, 0.28
    )
    close(pos, [[-2.5]])
    pos, clipped = L.clipped_surrogate(
        logp[:, :1], logp_old[:, :1], torch.tensor([2.0], dtype=F64), mask[:, :1], 0.2, 0.2
    )
    close(pos, [[-2.4]])
    assert clipped.all()
    neg, clipped = L.clipped_surrogate(
        logp[:, 1:], logp_old[:, 1:], torch.tensor([-1.0], dtype=F64), mask[:, 1:], 0.2, 0.28
    )
    close(neg, [[0.8]])  # max(0.75, 0.8)
    assert clipped.all()


def brute_aggregate(per_token, lengths, mode, max_len):
    B = len(lengths)
    rows = [[per_token[b, t].item() for t in range(n)] for b, n in enumerate(lengths)]
    if mode == "grpo":
        return sum(sum(r) / len(r) if r else 0.0 for r in rows) / B
    total, count = sum(sum(r) for r in rows), sum(len(r) for r in rows)
    return total / count if mode == "token" else total / (B * max_len)


@pytest.mark.parametrize("mode", L.LOSS_AGGREGATIONS)
def test_aggregate_loss_vs_loop_and_extra_right_padding(mode):
    lengths, mask, logp, _, _ = tiny_batch(4)
    lengths[-1] = 0  # an empty row counts as a sequence with mean 0 (grpo) and adds no tokens
    mask[-1] = False
    per_token = logp.clone()
    per_token[~mask] = float("nan")
    max_len = 9  # the configured response length, wider than this batch's tensors
    got = L.aggregate_loss(per_token, mask, mode, max_len)
    close(got, brute_aggregate(per_token, lengths, mode, max_len))
    # Extra right padding (wider tensors, mask 0 there) changes no aggregation; dr_grpo divides by the
    # configured max_len, not by the tensor's width.
    extra = 4
    wider = torch.cat([per_token, torch.full((per_token.shape[0], extra), 7.0, dtype=F64)], dim=1)
    wider_mask = torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=torch.bool)], dim=1)
    close(L.aggregate_loss(wider, wider_mask, mode, max_len), got)


def test_aggregations_differ_as_documented():
    """One long and one short sequence: grpo weights sequences equally, token weights tokens equally,
    dr_grpo is a plain sum over a constant."""
    per_token = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    close(L.aggregate_loss(per_token, mask, "grpo"), (1.0 + 5.0) / 2)
    close(L.aggregate_loss(per_token, mask, "token"), 9.0 / 5)
    close(L.aggregate_loss(per_token, mask, "dr_grpo", max_len=4), 9.0 / 8)
    close(L.aggregate_loss(per_token, mask, "dr_grpo", max_len=6), 9.0 / 12)
    with pytest.raises(ValueError, match="needs max_len"):
        L.aggregate_loss(per_token, mask, "dr_grpo")
    with pytest.raises(ValueError, match="unknown loss aggregation 'seq'"):
        L.aggregate_loss(per_token, mask, "seq")


# ----------------------------------------------------- identity (4): the first gradient step, by autograd


@pytest.mark.parametrize("mode", L.LOSS_AGGREGATIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_first_step_gradient_is_advantage_weighted_score_function(seed, mode):
    """At theta = theta_old: rho = 1, no clipping, and grad L = -sum_(i,t) w_(i,t) A_i grad log pi(a_t|s_t) with
    the aggregation's weights w (grpo 1/(B len_i), token 1/N, dr_grpo 1/(B max_len)). The k3 term adds no
    gradient there when pi_old = pi_ref (its gradient 1 - pi_ref/pi vanishes)."""
    gen = torch.Generator().manual_seed(seed)
    k, groups, T, V, max_len = 3, 2, 4, 5, 6
    B = k * groups
    logits = torch.randn(B, T, V, generator=gen, dtype=F64).requires_grad_()
    tokens = torch.randint(0, V, (B, T), generator=gen)
    lengths = [1, T, 2, 3, T, 2]
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    A = L.grpo_advantages(torch.randn(B, generator=gen, dtype=F64), k, "group")
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)  # float64 throughout
    logp_old = logp.detach()

    per_token, clipped = L.clipped_surrogate(logp, logp_old, A, mask, 0.2, 0.28)
    assert not clipped.any()
    (grad,) = torch.autograd.grad(L.aggregate_loss(per_token, mask, mode, max_len), logits, retain_graph=True)
    with_kl = per_token + 0.3 * L.kl_k3(logp, logp_old, mask)
    (grad_kl,) = torch.autograd.grad(
        L.aggregate_loss(with_kl, mask, mode, max_len), logits, retain_graph=True
    )

    n_tokens = sum(lengths)
    expected = torch.zeros_like(logits)
    for i, n in enumerate(lengths):
        for t in range(n):
            w = {"grpo": 1 / (B * n), "token": 1 / n_tokens, "dr_grpo": 1 / (B * max_len)}[mode]
            (score,) = torch.autograd.grad(logp[i, t], logits, retain_graph=True)
            expected -= w * A[i].item() * score
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_kl, expected, rtol=1e-10, atol=1e-12)
