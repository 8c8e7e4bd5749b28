"""Independent checks of klq/losses.py against docs/ALGORITHMS.md.

Every expected value here is computed by the test itself: brute-force Python loops over tokens, explicit
formulas written from ALGORITHMS.md, numpy, or literal hand-computed numbers. The function under test is
never used to produce its own reference. float64 everywhere precision matters.

Batches have variable response lengths (always one row of length 1 and one full-length row, sometimes an
empty row), and padded positions hold random junk rather than zeros, so masking mistakes show up.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from klq import losses as L

F64 = torch.float64
SEEDS = [0, 1, 2, 3]
TOL = {"rtol": 1e-10, "atol": 1e-12}


def close(actual, expected, **kw):
    torch.testing.assert_close(actual, expected, **{**TOL, **kw})


def close_frac(actual, value):
    """Fractions (clipfrac) come back as float32; compare in their own dtype."""
    torch.testing.assert_close(actual, torch.tensor(value, dtype=actual.dtype))


def assert_clip_count(clipfrac, n_bind: int, n_round: int, n: int):
    """clipfrac * n must count the tokens where a clip range is exceeded and raises the loss (n_bind).

    n_round (tokens within rounding of the clip edge) is kept for the callers' bookkeeping; the clip is
    computed as torch.clamp(new, old - c, old + c), exact inside the range, so the count must be exact.
    """
    got = round(float(clipfrac) * n)
    assert got == n_bind, (got, n_bind, n_round)


# ------------------------------------------------------------------------------------------ batch data


def make_lengths(gen: torch.Generator, B: int, T: int, zero_row: bool = False) -> list[int]:
    lengths = [1, T] + [int(torch.randint(1, T + 1, (1,), generator=gen)) for _ in range(B - 2)]
    if zero_row:
        lengths[-1] = 0
    return lengths


def mask_of(lengths: list[int], T: int) -> torch.Tensor:
    return torch.tensor([[t < n for t in range(T)] for n in lengths], dtype=torch.bool)


def make_batch(seed: int, B: int = 6, T: int = 7, zero_row: bool = False) -> dict:
    """Random rollout quantities; padded positions hold junk (never zeros)."""
    gen = torch.Generator().manual_seed(seed)

    def rn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen, dtype=F64)

    lengths = make_lengths(gen, B, T, zero_row)
    logp_ref = -rn(B, T).abs() - 0.1
    logp_old = logp_ref + rn(B, T, scale=0.7)
    return {
        "lengths": lengths,
        "mask": mask_of(lengths, T),
        "scores": rn(B),
        "logp_ref": logp_ref,
        "logp_old": logp_old,
        "logp": logp_old + rn(B, T, scale=0.5),
        "values_old": rn(B, T),
        "values": rn(B, T),
        "targets": rn(B, T),
        "q_old": rn(B, T),
        "advantages": rn(B, T),
        "returns": rn(B, T),
        "rewards": rn(B, T),
        "x": rn(B, T, scale=2.0) + 0.5,
        "logits": rn(B, T, 5, scale=2.0),
        "tokens": torch.randint(0, 5, (B, T), generator=gen),
    }


# ------------------------------------------------------------------------- brute-force references


def tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def brute_discounted(x: torch.Tensor, lengths: list[int], d: float) -> torch.Tensor:
    """y_t = sum_{k=t}^{n-1} d^(k-t) x_k, written as the explicit double sum."""
    out = []
    for row, n in zip(x.tolist(), lengths):
        out.append(
            [sum(d ** (k - t) * row[k] for k in range(t, n)) if t < n else 0.0 for t in range(len(row))]
        )
    return tensor(out)


def brute_gae(rewards, values, lengths, gamma, lam):
    """Backward GAE loop per sequence; V after the end = 0. Returns (A, R = A + V), zero at padding."""
    adv, ret = [], []
    for r, v, n in zip(rewards.tolist(), values.tolist(), lengths):
        T = len(r)
        a = [0.0] * T
        running = 0.0
        for t in reversed(range(n)):
            v_next = v[t + 1] if t + 1 < n else 0.0
            delta = r[t] + gamma * v_next - v[t]
            running = delta + gamma * lam * running
            a[t] = running
        adv.append(a)
        ret.append([a[t] + v[t] if t < n else 0.0 for t in range(T)])
    return tensor(adv), tensor(ret)


def brute_terminal(scores, lengths, T):
    return tensor([[s if t == n - 1 else 0.0 for t in range(T)] for s, n in zip(scores.tolist(), lengths)])


def brute_ppo_rewards(scores, logp_old, logp_ref, lengths, kl_coef):
    out = []
    for s, lo, lr, n in zip(scores.tolist(), logp_old.tolist(), logp_ref.tolist(), lengths):
        row = []
        for t in range(len(lo)):
            r = 0.0
            if t < n:
                r = -kl_coef * (lo[t] - lr[t])
                if t == n - 1:
                    r += s
            row.append(r)
        out.append(row)
    return tensor(out)


def brute_q_old(logp_old, logp_ref, values_old, lengths, tau):
    return tensor(
        [
            [tau * (lo[t] - lr[t]) + v[t] if t < n else 0.0 for t in range(len(lo))]
            for lo, lr, v, n in zip(logp_old.tolist(), logp_ref.tolist(), values_old.tolist(), lengths)
        ]
    )


def valid_tokens(mask):
    """(b, t) index pairs of real tokens, in order."""
    return [(b, t) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]


# =========================================================================== 1. GAE / discounted cumsum

GAMMA_LAM = [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0), (0.8, 1.0), (1.0, 1.0), (1.0, 0.0)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma,lam", GAMMA_LAM)
def test_gae_matches_backward_loop(seed, gamma, lam):
    b = make_batch(seed, zero_row=seed % 2 == 0)
    adv, ret = L.gae_advantages(b["rewards"], b["values"], b["mask"], gamma, lam)
    exp_adv, exp_ret = brute_gae(b["rewards"], b["values"], b["lengths"], gamma, lam)
    close(adv, exp_adv)
    close(ret, exp_ret)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("d", [0.0, 0.5, 0.95, 1.0])
def test_discounted_cumsum_matches_explicit_sum(seed, d):
    b = make_batch(seed, zero_row=True)
    close(L.discounted_cumsum(b["x"], b["mask"], d), brute_discounted(b["x"], b["lengths"], d))


def test_discounted_cumsum_float32_keeps_dtype():
    b = make_batch(7)
    x32 = b["x"].float()
    y = L.discounted_cumsum(x32, b["mask"], 0.9)
    assert y.dtype == torch.float32
    close(y.double(), brute_discounted(b["x"], b["lengths"], 0.9), rtol=1e-5, atol=1e-5)


def test_gae_tiny_literal_example():
    # one row of 3 real tokens + 1 pad; gamma = 0.5, lam = 0.5 (gamma*lam = 0.25)
    r = tensor([[0.0, 0.0, 1.0, 9.0]])
    v = tensor([[1.0, 2.0, 4.0, 9.0]])
    m = torch.tensor([[1, 1, 1, 0]], dtype=torch.float64)
    # delta_2 = 1 + 0 - 4 = -3 ; delta_1 = 0 + 0.5*4 - 2 = 0 ; delta_0 = 0 + 0.5*2 - 1 = 0
    # A_2 = -3 ; A_1 = 0 + 0.25*-3 = -0.75 ; A_0 = 0 + 0.25*-0.75 = -0.1875
    adv, ret = L.gae_advantages(r, v, m, 0.5, 0.5)
    close(adv, tensor([[-0.1875, -0.75, -3.0, 0.0]]))
    close(ret, tensor([[0.8125, 1.25, 1.0, 0.0]]))


def test_next_values_vs_loop():
    b = make_batch(3, zero_row=True)
    T = b["mask"].shape[1]
    exp = tensor(
        [
            [v[t + 1] if t + 1 < n else 0.0 for t in range(T)]
            for v, n in zip(b["values"].tolist(), b["lengths"])
        ]
    )
    close(L.next_values(b["values"], b["mask"]), exp)


# ======================================================================== 10. terminal rewards


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("float_mask", [False, True])
def test_terminal_rewards_at_last_valid_position(seed, float_mask):
    b = make_batch(seed, zero_row=True)
    mask = b["mask"].to(F64) if float_mask else b["mask"]
    got = L.terminal_rewards(b["scores"], mask)
    T = mask.shape[1]
    close(got, brute_terminal(b["scores"], b["lengths"], T))
    assert torch.equal(got[-1], torch.zeros(T, dtype=F64))  # the zero-length row
    assert got[0, 0] == b["scores"][0] and (got[0, 1:] == 0).all()  # the length-1 row
    assert got[1, T - 1] == b["scores"][1]  # the full-length row


def test_terminal_rewards_all_rows_empty():
    got = L.terminal_rewards(tensor([1.0, -2.0]), torch.zeros(2, 4, dtype=torch.bool))
    assert torch.equal(got, torch.zeros(2, 4, dtype=F64))


# ================================================================== 2. identity 1: KLQ Delta == PPO GAE


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma,lam", GAMMA_LAM)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("tau", [0.05, 0.4])
def test_identity1_klq_deltas_equal_ppo_gae(seed, gamma, lam, alpha, tau):
    b = make_batch(seed, zero_row=seed == 1)
    lengths, T = b["lengths"], b["mask"].shape[1]
    out = L.klq_targets(
        b["scores"], b["logp_old"], b["logp_ref"], b["values_old"], b["mask"], tau, gamma, lam, alpha
    )
    # PPO side, entirely by hand: per-token k1 KL penalty rewards, then the backward GAE loop.
    ppo_r = brute_ppo_rewards(b["scores"], b["logp_old"], b["logp_ref"], lengths, tau)
    close(L.ppo_rewards(b["scores"], b["logp_old"], b["logp_ref"], b["mask"], tau), ppo_r)
    A, _ = brute_gae(ppo_r, b["values_old"], lengths, gamma, lam)
    q_old = brute_q_old(b["logp_old"], b["logp_ref"], b["values_old"], lengths, tau)
    # KLQ TD error straight from its definition: r_t (terminal only) + gamma V_old(s_{t+1}) - Q_old.
    r = brute_terminal(b["scores"], lengths, T)
    td = tensor(
        [
            [
                r[i, t].item() + gamma * (v[t + 1] if t + 1 < n else 0.0) - q_old[i, t].item()
                if t < n
                else 0.0
                for t in range(T)
            ]
            for i, (v, n) in enumerate(zip(b["values_old"].tolist(), lengths))
        ]
    )
    close(out["q_old"], q_old)
    close(out["td_errors"], td)
    close(out["deltas"], A)
    close(out["targets"], q_old + alpha * A)


# ====================================================================== 5. identity 4: Monte-Carlo return


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_identity4_monte_carlo_kl_regularised_return(seed, tau):
    b = make_batch(seed, zero_row=True)
    out = L.klq_targets(
        b["scores"], b["logp_old"], b["logp_ref"], b["values_old"], b["mask"], tau, 1.0, 1.0, 1.0
    )
    exp = []
    for s, lo, lr, n in zip(
        b["scores"].tolist(), b["logp_old"].tolist(), b["logp_ref"].tolist(), b["lengths"]
    ):
        exp.append(
            [s - tau * sum(lo[k] - lr[k] for k in range(t + 1, n)) if t < n else 0.0 for t in range(len(lo))]
        )
    close(out["targets"], tensor(exp))


# ===================================================================== 3. identity 2: KLQ loss value


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5)])
def test_identity2_klq_loss_value(seed, alpha, gamma, lam):
    tau = 0.3
    b = make_batch(seed)
    lengths = b["lengths"]
    assert not torch.allclose(b["logp"], b["logp_old"])  # theta != theta_old
    tg = L.klq_targets(
        b["scores"], b["logp_old"], b["logp_ref"], b["values_old"], b["mask"], tau, gamma, lam, alpha
    )
    loss, stats = L.klq_loss(b["logp"], b["logp_ref"], b["values"], tg["targets"], b["mask"], tau)
    A, _ = brute_gae(
        brute_ppo_rewards(b["scores"], b["logp_old"], b["logp_ref"], lengths, tau),
        b["values_old"],
        lengths,
        gamma,
        lam,
    )
    lp, lo, lr, v, vo = (b[k].tolist() for k in ("logp", "logp_old", "logp_ref", "values", "values_old"))
    sq, qs, n = 0.0, 0.0, 0
    for i, t in valid_tokens(b["mask"]):
        sq += (tau * (lp[i][t] - lo[i][t]) + v[i][t] - vo[i][t] - alpha * A[i, t].item()) ** 2
        qs += tau * (lp[i][t] - lr[i][t]) + v[i][t]
        n += 1
    close(loss, torch.tensor(0.5 * sq / n, dtype=F64))
    close(stats["q"], torch.tensor(qs / n, dtype=F64))
    close_frac(stats["clipfrac"], 0.0)


# ============================================================ 4. identity 3: autograd equivalence with PPO


class TinyNets:
    """logp = log_softmax(feats @ W + c).gather(token); V = feats @ w + b; all float64 parameters."""

    def __init__(self, seed: int, B: int = 6, T: int = 7, D: int = 4, V: int = 5):
        gen = torch.Generator().manual_seed(1000 + seed)
        self.lengths = make_lengths(gen, B, T)
        self.mask = mask_of(self.lengths, T)
        self.feats = torch.randn(B, T, D, generator=gen, dtype=F64)
        self.tokens = torch.randint(0, V, (B, T), generator=gen)
        self.scores = torch.randn(B, generator=gen, dtype=F64)

        def param(*shape, scale=0.7):
            return (scale * torch.randn(*shape, generator=gen, dtype=F64)).requires_grad_()

        self.pi = [param(D, V), param(V)]
        self.v = [param(D), param(())]
        with torch.no_grad():
            self.logp_ref = self.logp(param(D, V), param(V))
        self.gen = gen

    def logp(self, W, c):
        logits = self.feats @ W + c
        return torch.log_softmax(logits, dim=-1).gather(-1, self.tokens.unsqueeze(-1)).squeeze(-1)

    def value(self, w, b):
        return self.feats @ w + b


def hand_ppo_policy_loss(logp, logp_old, A, mask, eps):
    sel = mask.bool()
    rho = torch.exp(logp[sel] - logp_old[sel])
    return torch.maximum(-A[sel] * rho, -A[sel] * torch.clamp(rho, 1 - eps, 1 + eps)).sum() / sel.sum()


def hand_value_loss_unclipped(v, R, mask):
    sel = mask.bool()
    return 0.5 * ((v[sel] - R[sel]) ** 2).sum() / sel.sum()


def grads(loss, params):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def assert_grads_close(got, exp):
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_identity3a_first_step_klq_is_scaled_ppo(seed, alpha, tau):
    gamma, lam = 1.0, 0.95
    net = TinyNets(seed)
    mask, lengths = net.mask, net.lengths
    with torch.no_grad():
        logp_old = net.logp(*net.pi)
        v_old = net.value(*net.v)
    A, R = brute_gae(
        brute_ppo_rewards(net.scores, logp_old, net.logp_ref, lengths, tau), v_old, lengths, gamma, lam
    )
    G = brute_q_old(logp_old, net.logp_ref, v_old, lengths, tau) + alpha * A

    logp, v = net.logp(*net.pi), net.value(*net.v)  # theta == theta_old
    l_klq, _ = L.klq_loss(logp, net.logp_ref, v, G, mask, tau)
    g_pi, g_v = grads(l_klq, net.pi), grads(l_klq, net.v)

    l_pi = hand_ppo_policy_loss(logp, logp_old, A, mask, 0.2)
    l_v = hand_value_loss_unclipped(v, R, mask)
    exp_pi = [alpha * tau * g for g in grads(l_pi, net.pi)]
    exp_v = [alpha * g for g in grads(l_v, net.v)]
    assert min(float(g.abs().max()) for g in exp_pi + exp_v) > 1e-4  # non-trivial gradients
    assert_grads_close(g_pi, exp_pi)
    assert_grads_close(g_v, exp_v)

    # The same identity through the library's own PPO losses (clip inactive at rho = 1 / V = V_old).
    lib_pi, _ = L.ppo_policy_loss(logp, logp_old, A, mask, 0.2)
    for crv in (None, 0.2):
        lib_v, _ = L.ppo_value_loss(v, v_old, R, mask, crv)
        assert_grads_close(g_pi, [alpha * tau * g for g in grads(lib_pi, net.pi)])
        assert_grads_close(g_v, [alpha * g for g in grads(lib_v, net.v)])

    # And with the targets from klq_targets (no whitening): same Delta = A, so same G.
    tg = L.klq_targets(net.scores, logp_old, net.logp_ref, v_old, mask, tau, gamma, lam, alpha)
    l_klq2, _ = L.klq_loss(logp, net.logp_ref, v, tg["targets"], mask, tau)
    assert_grads_close(grads(l_klq2, net.pi + net.v), list(g_pi) + list(g_v))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_identity3b_policy_gradient_away_from_theta_old(seed, alpha):
    tau, gamma, lam = 0.2, 1.0, 0.9
    net = TinyNets(seed)
    mask, lengths = net.mask, net.lengths
    sel = mask
    with torch.no_grad():  # theta_old: a perturbed copy of the current parameters
        pi_old = [p + 0.4 * torch.randn(p.shape, generator=net.gen, dtype=F64) for p in net.pi]
        v_old_p = [p + 0.4 * torch.randn(p.shape, generator=net.gen, dtype=F64) for p in net.v]
        logp_old = net.logp(*pi_old)
        v_old = net.value(*v_old_p)
    A, _ = brute_gae(
        brute_ppo_rewards(net.scores, logp_old, net.logp_ref, lengths, tau), v_old, lengths, gamma, lam
    )
    G = brute_q_old(logp_old, net.logp_ref, v_old, lengths, tau) + alpha * A

    logp, v = net.logp(*net.pi), net.value(*net.v)
    assert (logp - logp_old)[sel].abs().max() > 0.05  # really away from theta_old
    l_klq, _ = L.klq_loss(logp, net.logp_ref, v, G, mask, tau)
    g_pi, g_v = grads(l_klq, net.pi), grads(l_klq, net.v)

    n = sel.sum()
    log_rho = logp - logp_old
    coef = (tau * log_rho + (v - v_old) - alpha * A).detach()
    surrogate_pi = (tau * coef[sel] * logp[sel]).sum() / n  # grad = tau E[coef * grad log pi]
    assert_grads_close(g_pi, grads(surrogate_pi, net.pi))
    surrogate_v = (coef[sel] * v[sel]).sum() / n  # value part: E[coef * grad V]
    assert_grads_close(g_v, grads(surrogate_v, net.v))
    # The document's decomposition: -alpha tau A log rho + (tau^2/2)(log rho)^2 + value coupling.
    decomposed = (
        -alpha * tau * A[sel] * log_rho[sel]
        + 0.5 * tau**2 * log_rho[sel] ** 2
        + tau * (v - v_old).detach()[sel] * log_rho[sel]
    ).sum() / n
    assert_grads_close(g_pi, grads(decomposed, net.pi))


# ====================================================================== 6. PPO losses against hand formulas


def test_ppo_policy_loss_literal_example():
    # rho = 1.5, 0.5, 1.1 | 0.7, 1.5 (pad); eps = 0.2
    rho = [[1.5, 0.5, 1.1], [0.7, 1.5, 3.0]]
    logp = tensor([[math.log(r) for r in row] for row in rho])
    logp_old = torch.zeros(2, 3, dtype=F64)
    A = tensor([[2.0, -1.0, 3.0], [1.0, -2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    # token losses max(-A rho, -A clip(rho)):
    #  (1.5, +2): max(-3.0, -2.4) = -2.4 clipped   (clip active, positive advantage)
    #  (0.5, -1): max( 0.5,  0.8) =  0.8 clipped   (clip active, negative advantage)
    #  (1.1, +3): max(-3.3, -3.3) = -3.3
    #  (0.7, +1): max(-0.7, -0.8) = -0.7           (outside range but the pessimistic side: unclipped)
    #  (1.5, -2): max( 3.0,  2.4) =  3.0           (same)
    # mean = -2.6 / 5 = -0.52 ; clipfrac = 2/5 ; ratio mean = 5.3/5 = 1.06
    # approxkl = 0.5 * (2 ln(1.5)^2 + ln(0.5)^2 + ln(1.1)^2 + ln(0.7)^2) / 5
    #          = 0.5 * (2 * 0.1644019539 + 0.4804530139 + 0.0090840304 + 0.1272170700) / 5 = 0.0945557968
    loss, stats = L.ppo_policy_loss(logp, logp_old, A, mask, 0.2)
    close(loss, torch.tensor(-0.52, dtype=F64))
    close_frac(stats["clipfrac"], 0.4)
    close(stats["ratio"], torch.tensor(1.06, dtype=F64))
    close(stats["approxkl"], torch.tensor(0.0945557968, dtype=F64), atol=1e-10, rtol=0)


def test_ppo_value_loss_literal_example():
    v_old = tensor([[0.0, 0.0, 1.0, 1.0, 7.0]])
    v = tensor([[1.0, 1.0, 0.5, 1.1, -7.0]])
    R = tensor([[0.5, 2.0, -1.0, 3.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    # eps_v = 0.2: clipped V = 0.2, 0.2, 0.8, 1.1
    # unclipped sq: 0.25, 1.0, 2.25, 3.61 ; clipped sq: 0.09, 3.24, 3.24, 3.61
    # clipped loss = 0.5 * (0.25 + 3.24 + 3.24 + 3.61) / 4 = 1.2925, clipfrac = 2/4
    loss, stats = L.ppo_value_loss(v, v_old, R, mask, 0.2)
    close(loss, torch.tensor(1.2925, dtype=F64))
    close_frac(stats["clipfrac"], 0.5)
    # unclipped = 0.5 * (0.25 + 1 + 2.25 + 3.61) / 4 = 0.88875
    loss_u, _ = L.ppo_value_loss(v, v_old, R, mask, None)
    close(loss_u, torch.tensor(0.88875, dtype=F64))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_ppo_policy_loss_random_vs_loop(seed, eps):
    b = make_batch(seed, zero_row=seed == 2)
    logp = b["logp"].clone().requires_grad_()
    loss, stats = L.ppo_policy_loss(logp, b["logp_old"], b["advantages"], b["mask"], eps)
    (g,) = torch.autograd.grad(loss, logp)
    lp, lo, A = b["logp"].tolist(), b["logp_old"].tolist(), b["advantages"].tolist()
    tok = valid_tokens(b["mask"])
    n = len(tok)
    tot = nclip = kl = ratio = 0.0
    exp_g = torch.zeros_like(g)
    seen_pos = seen_neg = False
    for i, t in tok:
        rho = math.exp(lp[i][t] - lo[i][t])
        a = A[i][t]
        u, c = -a * rho, -a * min(max(rho, 1 - eps), 1 + eps)
        tot += max(u, c)
        nclip += c > u
        seen_pos |= c > u and a > 0
        seen_neg |= c > u and a < 0
        kl += 0.5 * (lp[i][t] - lo[i][t]) ** 2
        ratio += rho
        # d/dlogp: -a rho when the unclipped branch is taken or rho is inside the range; 0 when clipped
        if 1 - eps <= rho <= 1 + eps or u >= c:
            exp_g[i, t] = -a * rho / n
    assert seen_pos and seen_neg  # the data exercises the clip on both advantage signs
    close(loss, torch.tensor(tot / n, dtype=F64))
    close_frac(stats["clipfrac"], nclip / n)
    close(stats["approxkl"], torch.tensor(kl / n, dtype=F64))
    close(stats["ratio"], torch.tensor(ratio / n, dtype=F64))
    close(g, exp_g)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("crv", [None, 0.2, 0.5])
def test_ppo_value_loss_random_vs_loop(seed, crv):
    b = make_batch(seed, zero_row=seed == 3)
    v = b["values"].clone().requires_grad_()
    loss, stats = L.ppo_value_loss(v, b["values_old"], b["returns"], b["mask"], crv)
    (g,) = torch.autograd.grad(loss, v)
    vv, vo, R = b["values"].tolist(), b["values_old"].tolist(), b["returns"].tolist()
    tok = valid_tokens(b["mask"])
    n = len(tok)
    tot = nclip = nround = 0
    exp_g = torch.zeros_like(g)
    for i, t in tok:
        u = (vv[i][t] - R[i][t]) ** 2
        if crv is None:
            tot += 0.5 * u
            exp_g[i, t] = (vv[i][t] - R[i][t]) / n
            continue
        vc = vo[i][t] + min(max(vv[i][t] - vo[i][t], -crv), crv)
        c = (vc - R[i][t]) ** 2
        tot += 0.5 * max(u, c)
        nclip += abs(vv[i][t] - vo[i][t]) > crv and c > u  # the clip range is exceeded and binds
        nround += abs(vv[i][t] - vo[i][t]) <= crv and vo[i][t] + (vv[i][t] - vo[i][t]) != vv[i][t]
        if abs(vv[i][t] - vo[i][t]) <= crv or u >= c:
            exp_g[i, t] = (vv[i][t] - R[i][t]) / n
    if crv == 0.2:
        assert 0 < nclip < n  # some tokens clipped, some not
    close(loss, torch.tensor(tot / n, dtype=F64))
    if crv is None:
        close_frac(stats["clipfrac"], 0.0)
    else:
        assert_clip_count(stats["clipfrac"], nclip, nround, n)
    close(g, exp_g)


# ======================================================================== 7. KLQ loss variants


def hand_klq_token_loss(e, loss_type, d):
    if loss_type == "l2":
        return 0.5 * e * e
    return 0.5 * e * e if abs(e) < d else d * (abs(e) - 0.5 * d)


CLIP_CONFIGS = {"none": (None, None), "value": (0.1, None), "ratio": (None, 0.3), "both": (0.1, 0.3)}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_type", ["l2", "huber"])
@pytest.mark.parametrize("clip", list(CLIP_CONFIGS))
def test_klq_loss_variants_vs_hand(seed, loss_type, clip):
    """Pessimistic variants: the max of the unclipped loss and each clipped loss (docstring of klq_loss)."""
    tau, hd = 0.5, 0.4
    vc, rc = CLIP_CONFIGS[clip]
    b = make_batch(seed, zero_row=seed == 0)
    mask = b["mask"]
    q_old = brute_q_old(b["logp_old"], b["logp_ref"], b["values_old"], b["lengths"], tau)
    targets = q_old + 0.8 * b["advantages"]
    logp = b["logp"].clone().requires_grad_()
    values = (b["values_old"] + 0.3 * b["values"]).requires_grad_()
    loss, stats = L.klq_loss(
        logp, b["logp_ref"], values, targets, mask, tau, loss_type=loss_type, huber_delta=hd,
        q_old=q_old, logp_old=b["logp_old"], value_clip=vc, ratio_clip=rc,
    )  # fmt: skip
    lp, lo, lr, v, g_, qo = (
        x.tolist() for x in (b["logp"], b["logp_old"], b["logp_ref"], values.detach(), targets, q_old)
    )
    tok = valid_tokens(mask)
    tot = qsum = 0.0
    nclip = nround = 0
    for i, t in tok:
        q = tau * (lp[i][t] - lr[i][t]) + v[i][t]
        base = hand_klq_token_loss(q - g_[i][t], loss_type, hd)
        # binds: a clip range is exceeded AND raises this token's loss; rounds: see assert_clip_count
        worst, binds, rounds = base, False, False
        if rc is not None:
            old = lo[i][t] - lr[i][t]
            clipped_log_ratio = min(max(lp[i][t] - lr[i][t], old - rc), old + rc)
            l_rc = hand_klq_token_loss(tau * clipped_log_ratio + v[i][t] - g_[i][t], loss_type, hd)
            worst = max(worst, l_rc)
            binds |= abs(lp[i][t] - lo[i][t]) > rc and l_rc > base
            lr_ = lp[i][t] - lr[i][t]
            rounds |= abs(lp[i][t] - lo[i][t]) <= rc and old + (lr_ - old) != lr_
        if vc is not None:
            q_vc = qo[i][t] + min(max(q - qo[i][t], -vc), vc)
            l_vc = hand_klq_token_loss(q_vc - g_[i][t], loss_type, hd)
            worst = max(worst, l_vc)
            binds |= abs(q - qo[i][t]) > vc and l_vc > base
            rounds |= abs(q - qo[i][t]) <= vc and qo[i][t] + (q - qo[i][t]) != q
        tot += worst
        nclip += binds
        nround += rounds and not binds
        qsum += q
    n = len(tok)
    close(loss, torch.tensor(tot / n, dtype=F64))
    close(stats["q"], torch.tensor(qsum / n, dtype=F64))
    assert_clip_count(stats["clipfrac"], nclip, nround, n)
    if clip != "none":
        assert 0 < nclip < n  # the data exercises both regimes
    if loss_type == "huber":
        errs = [abs(tau * (lp[i][t] - lr[i][t]) + v[i][t] - g_[i][t]) for i, t in tok]
        assert min(errs) < hd < max(errs)  # both Huber branches used

    # gradients against an independent vectorised re-implementation over the selected tokens
    sel = mask
    lp_s, v_s, lr_s, g_s = logp[sel], values[sel], b["logp_ref"][sel], targets[sel]

    def pw(q):
        e = q - g_s
        if loss_type == "l2":
            return 0.5 * e**2
        return torch.where(e.abs() < hd, 0.5 * e**2, hd * (e.abs() - 0.5 * hd))

    q = tau * (lp_s - lr_s) + v_s
    hand = pw(q)
    if rc is not None:
        old = (b["logp_old"] - b["logp_ref"])[sel]
        hand = torch.maximum(hand, pw(tau * torch.clamp(lp_s - lr_s, old - rc, old + rc) + v_s))
    if vc is not None:
        qo_s = q_old[sel]
        hand = torch.maximum(hand, pw(qo_s + torch.clamp(q - qo_s, -vc, vc)))
    hand_loss = hand.sum() / n
    assert_grads_close(grads(loss, [logp, values]), grads(hand_loss, [logp, values]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_type", ["l2", "huber"])
def test_klq_loss_inactive_clip_equals_plain(seed, loss_type):
    tau = 0.3
    b = make_batch(seed)
    mask = b["mask"]
    q_old = brute_q_old(b["logp_old"], b["logp_ref"], b["values_old"], b["lengths"], tau)
    targets = q_old + b["advantages"]

    def run(logp0, v0, **kw):
        logp, values = logp0.clone().requires_grad_(), v0.clone().requires_grad_()
        loss, stats = L.klq_loss(logp, b["logp_ref"], values, targets, mask, tau, loss_type=loss_type, **kw)
        return loss, stats, torch.autograd.grad(loss, [logp, values])

    clip_kw = {"q_old": q_old, "logp_old": b["logp_old"]}
    # (a) at theta = theta_old (Q = Q_old): every clip is inactive
    plain = run(b["logp_old"], b["values_old"])
    for kw in ({"value_clip": 0.1}, {"ratio_clip": 0.1}, {"value_clip": 0.1, "ratio_clip": 0.1}):
        got = run(b["logp_old"], b["values_old"], **clip_kw, **kw)
        close(got[0], plain[0])
        assert float(got[1]["clipfrac"]) == 0.0
        assert_grads_close(got[2], plain[2])
    # (b) away from theta_old but with clip ranges too wide to bind
    plain = run(b["logp"], b["values"])
    got = run(b["logp"], b["values"], **clip_kw, value_clip=1e6, ratio_clip=1e6)
    close(got[0], plain[0])
    assert_grads_close(got[2], plain[2])
    # (clipfrac here should be 0 too, but see test_klq_clipfrac_ignores_rounding)


def test_klq_loss_literal_example():
    # tau = 0.5, one row, 2 real tokens + pad.
    # token 0: logp - ref = -1, V = 2 -> Q = 1.5, G = 0.5 -> err 1 -> l2 0.5, huber(d=0.5) 0.5*(1-0.25) = 0.375
    # token 1: logp - ref = 2, V = -1 -> Q = 0, G = 3 -> err -3 -> l2 4.5, huber 0.5*(3-0.25) = 1.375
    logp = tensor([[-1.0, 0.0, 5.0]])
    ref = tensor([[0.0, -2.0, 1.0]])
    V = tensor([[2.0, -1.0, 9.0]])
    G = tensor([[0.5, 3.0, -9.0]])
    m = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    loss, stats = L.klq_loss(logp, ref, V, G, m, 0.5)
    close(loss, torch.tensor(2.5, dtype=F64))
    close(stats["q"], torch.tensor(0.75, dtype=F64))
    loss_h, _ = L.klq_loss(logp, ref, V, G, m, 0.5, loss_type="huber", huber_delta=0.5)
    close(loss_h, torch.tensor(0.875, dtype=F64))
    # value clip c = 0.5 around Q_old = [1.0, 1.0]: Q_vc = [1.5, 0.5] -> err [1, -2.5] -> l2 [0.5, 3.125]
    # max with unclipped [0.5, 4.5] -> [0.5, 4.5]: clipping makes no token worse -> same loss, clipfrac 0
    q_old = tensor([[1.0, 1.0, 0.0]])
    loss_v, stats_v = L.klq_loss(logp, ref, V, G, m, 0.5, q_old=q_old, value_clip=0.5)
    close(loss_v, torch.tensor(2.5, dtype=F64))
    assert float(stats_v["clipfrac"]) == 0.0
    # Q_old = [2.5, -1.0]: Q_vc = [2.0, -0.5] -> err [1.5, -3.5] -> l2 [1.125, 6.125], both worse -> 3.625
    q_old = tensor([[2.5, -1.0, 0.0]])
    loss_v, stats_v = L.klq_loss(logp, ref, V, G, m, 0.5, q_old=q_old, value_clip=0.5)
    close(loss_v, torch.tensor(3.625, dtype=F64))
    close_frac(stats_v["clipfrac"], 1.0)
    # ratio clip c = 0.5 around logp_old - ref = [0, 0]: clipped log ratio [-0.5, 0.5] -> Q_rc = [1.75, -0.75]
    # err [1.25, -3.75] -> l2 [0.78125, 7.03125]; both worse -> (0.78125 + 7.03125)/2 = 3.90625
    loss_r, stats_r = L.klq_loss(logp, ref, V, G, m, 0.5, logp_old=ref.clone(), ratio_clip=0.5)
    close(loss_r, torch.tensor(3.90625, dtype=F64))
    close_frac(stats_r["clipfrac"], 1.0)


def test_klq_loss_argument_errors():
    b = make_batch(0)
    args = (b["logp"], b["logp_ref"], b["values"], b["targets"], b["mask"], 0.1)
    with pytest.raises(ValueError):
        L.klq_loss(*args, loss_type="l1")
    with pytest.raises(ValueError):
        L.klq_loss(*args, value_clip=0.1)
    with pytest.raises(ValueError):
        L.klq_loss(*args, ratio_clip=0.1)


ONE = torch.ones(1, 1, dtype=torch.bool)


def test_ppo_value_clipfrac_ignores_rounding():
    # |V - V_old| = 0.6 < c = 1: the clip is not exceeded, so nothing is clipped.
    _, stats = L.ppo_value_loss(tensor([[-0.9]]), tensor([[-0.3]]), tensor([[-0.9]]), ONE, 1.0)
    assert float(stats["clipfrac"]) == 0.0  # got 1.0


@pytest.mark.parametrize("variant", ["value_clip", "ratio_clip"])
def test_klq_clipfrac_ignores_rounding(variant):
    # tau = 1, logp_ref = 0, V = 0: Q = logp = -0.9; Q_old = logp_old = -0.3; |Q - Q_old| = 0.6 < c = 1.
    zero = torch.zeros(1, 1, dtype=F64)
    kw = {"q_old": tensor([[-0.3]])} if variant == "value_clip" else {"logp_old": tensor([[-0.3]])}
    _, stats = L.klq_loss(tensor([[-0.9]]), zero, zero, tensor([[-0.9]]), ONE, 1.0, **kw, **{variant: 1.0})
    assert float(stats["clipfrac"]) == 0.0  # got 1.0


# ======================================================================== 9. masked statistics


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("float_mask", [False, True])
def test_masked_stats_vs_numpy(seed, float_mask):
    b = make_batch(seed, zero_row=True)
    mask = b["mask"].to(F64) if float_mask else b["mask"]
    x = b["x"]
    xn, mn = x.numpy(), b["mask"].numpy()
    sel = xn[mn]
    close(L.masked_sum(x, mask), torch.tensor(sel.sum(), dtype=F64))
    close(L.masked_mean(x, mask), torch.tensor(sel.mean(), dtype=F64))
    close(L.masked_var(x, mask), torch.tensor(sel.var(ddof=1), dtype=F64))
    close(L.masked_var(x, mask, unbiased=False), torch.tensor(sel.var(ddof=0), dtype=F64))
    rows = [xn[i][mn[i]].mean() if mn[i].any() else 0.0 for i in range(xn.shape[0])]
    cols = [xn[:, j][mn[:, j]].mean() if mn[:, j].any() else 0.0 for j in range(xn.shape[1])]
    close(L.masked_mean(x, mask, dim=1), tensor(rows))
    close(L.masked_mean(x, mask, dim=0), tensor(cols))
    close(L.masked_sum(x, mask, dim=1), tensor([xn[i][mn[i]].sum() for i in range(xn.shape[0])]))
    for shift in (True, False):
        exp = np.zeros_like(xn)
        exp[mn] = (sel - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8) + (0.0 if shift else sel.mean())
        close(L.masked_whiten(x, mask, shift_mean=shift), torch.from_numpy(exp))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_whiten_deltas_zero_mean_unit_variance(seed, alpha):
    tau, gamma, lam = 0.1, 1.0, 0.95
    b = make_batch(seed, zero_row=True)
    mask = b["mask"]
    out = L.klq_targets(
        b["scores"],
        b["logp_old"],
        b["logp_ref"],
        b["values_old"],
        mask,
        tau,
        gamma,
        lam,
        alpha,
        whiten_deltas=True,
    )
    d = out["deltas"].numpy()[mask.numpy()]
    assert abs(d.mean()) < 1e-12
    assert abs(d.std(ddof=1) - 1.0) < 1e-6
    assert torch.equal(out["deltas"][~mask], torch.zeros(int((~mask).sum()), dtype=F64))
    # equals the numpy-whitened brute-force GAE advantage, and G = Q_old + alpha * whitened Delta
    A, _ = brute_gae(
        brute_ppo_rewards(b["scores"], b["logp_old"], b["logp_ref"], b["lengths"], tau),
        b["values_old"],
        b["lengths"],
        gamma,
        lam,
    )
    a = A.numpy()[mask.numpy()]
    exp = np.zeros(mask.shape)
    exp[mask.numpy()] = (a - a.mean()) / a.std(ddof=1)
    close(out["deltas"], torch.from_numpy(exp), rtol=1e-7, atol=1e-8)
    q_old = brute_q_old(b["logp_old"], b["logp_ref"], b["values_old"], b["lengths"], tau)
    close(out["targets"], q_old + alpha * torch.from_numpy(exp), rtol=1e-7, atol=1e-8)
    close(out["q_old"], q_old)


# =================================================================== log-probs and entropy (per position)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_entropy_vs_loop(temperature):
    b = make_batch(5)
    logits, tokens = b["logits"], b["tokens"]
    lp = L.logprobs_of(logits, tokens, temperature)
    ent = L.entropy_of(logits, temperature)
    B, T, V = logits.shape
    exp_lp, exp_ent = torch.zeros(B, T, dtype=F64), torch.zeros(B, T, dtype=F64)
    for i in range(B):
        for t in range(T):
            z = [float(v) / temperature for v in logits[i, t]]
            lse = math.log(sum(math.exp(v) for v in z))
            exp_lp[i, t] = z[int(tokens[i, t])] - lse
            exp_ent[i, t] = -sum(math.exp(v - lse) * (v - lse) for v in z)
    # note: these functions compute in float32 (logits.float()), even for float64 input
    close(lp.double(), exp_lp, rtol=1e-5, atol=1e-5)
    close(ent.double(), exp_ent, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_logprobs_and_entropy_match_separate_ones_with_gradient(temperature):
    """The fused function the trainer uses: same log-probs and entropy as logprobs_of / entropy_of, the
    same gradient of the log-probs, and an entropy without gradient."""
    torch.manual_seed(0)
    logits = (torch.randn(3, 6, 257) * 4).requires_grad_()
    tokens = torch.randint(0, 257, (3, 6))
    weights = torch.randn(3, 6)
    lp, ent = L.logprobs_and_entropy(logits, tokens, temperature)
    (grad,) = torch.autograd.grad((lp * weights).sum(), logits)
    ref_lp = L.logprobs_of(logits, tokens, temperature)
    (ref_grad,) = torch.autograd.grad((ref_lp * weights).sum(), logits)
    close(lp, ref_lp.detach(), rtol=1e-5, atol=1e-5)
    close(ent, L.entropy_of(logits.detach(), temperature), rtol=1e-5, atol=1e-5)
    close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    assert not ent.requires_grad


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 4, 100])
def test_fused_logprobs_and_entropy_chunked_and_in_place(chunk_rows, overwrite, monkeypatch):
    """Rows processed in chunks (CPU; here 1, 4 or all 18 rows at a time) give the values and gradient of
    the unfused functions; overwrite_logits=False leaves the logits intact, True leaves the gradient in them
    (what klq.models.response_logprobs allows, as it never hands the logits out)."""
    monkeypatch.setattr(L, "_CHUNK_BYTES", chunk_rows * 257 * 4)
    torch.manual_seed(1)
    base = torch.randn(3, 6, 257) * 4
    weights = torch.randn(3, 6)
    tokens = torch.randint(0, 257, (3, 6))
    leaf = base.clone().requires_grad_()
    logits = leaf * 1.0  # an intermediate, as the LM head's output is
    lp, ent = L.logprobs_and_entropy(logits, tokens, 0.7, overwrite_logits=overwrite)
    (grad,) = torch.autograd.grad((lp * weights).sum(), leaf)
    ref = base.clone().requires_grad_()
    ref_lp = L.logprobs_of(ref, tokens, 0.7)
    (ref_grad,) = torch.autograd.grad((ref_lp * weights).sum(), ref)
    close(lp, ref_lp.detach(), rtol=1e-5, atol=1e-5)
    close(ent, L.entropy_of(base, 0.7), rtol=1e-5, atol=1e-5)
    close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    if overwrite:
        close(logits.detach(), grad, rtol=0, atol=0)
    else:
        close(logits.detach(), base, rtol=0, atol=0)


def test_fused_logprobs_and_entropy_of_bfloat16_logits():
    """bf16 logits (a GPU's autocast LM head): computed in float32, gradient back in bf16, logits intact."""
    torch.manual_seed(2)
    logits = (torch.randn(2, 5, 300) * 3).bfloat16().requires_grad_()
    tokens = torch.randint(0, 300, (2, 5))
    before = logits.detach().clone()
    lp, ent = L.logprobs_and_entropy(logits, tokens, 0.7, overwrite_logits=True)
    (grad,) = torch.autograd.grad(lp.sum(), logits)
    (ref_grad,) = torch.autograd.grad(L.logprobs_of(logits, tokens, 0.7).sum(), logits)
    assert lp.dtype == torch.float32 and grad.dtype == torch.bfloat16
    close(lp, L.logprobs_of(logits.detach(), tokens, 0.7), rtol=1e-5, atol=1e-5)
    close(ent, L.entropy_of(logits.detach(), 0.7), rtol=1e-5, atol=1e-5)
    close(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-3)
    assert torch.equal(logits.detach(), before)


def test_klq_action_values_formula():
    b = make_batch(2)
    got = L.klq_action_values(b["logp"], b["logp_ref"], b["values"], 0.3)
    lp, lr, v = b["logp"].tolist(), b["logp_ref"].tolist(), b["values"].tolist()
    exp = [[0.3 * (lp[i][t] - lr[i][t]) + v[i][t] for t in range(len(lp[0]))] for i in range(len(lp))]
    close(got, tensor(exp))


# =========================================================================== 8. padding invariance
#
# Each case: (function of the input dict -> dict of outputs, differentiable input names, masked outputs?).
# "masked" outputs are fully defined (zeros or reductions) and are compared in full; per-position functions
# without a mask are compared at real positions only.

TAU = 0.2


def _klq_loss_case(**kw):
    def f(d):
        loss, stats = L.klq_loss(
            d["logp"], d["logp_ref"], d["values"], d["targets"], d["mask"], TAU,
            q_old=d["q_old"], logp_old=d["logp_old"], **kw,
        )  # fmt: skip
        return {"loss": loss, **stats}

    return f


def _targets_case(whiten):
    def f(d):
        return L.klq_targets(
            d["scores"], d["logp_old"], d["logp_ref"], d["values_old"], d["mask"], TAU, 0.97, 0.9, 0.7,
            whiten_deltas=whiten,
        )  # fmt: skip

    return f


def _gae_case(d):
    a, r = L.gae_advantages(d["rewards"], d["values"], d["mask"], 0.97, 0.9)
    return {"adv": a, "ret": r}


def _policy_case(d):
    loss, stats = L.ppo_policy_loss(d["logp"], d["logp_old"], d["advantages"], d["mask"], 0.2)
    return {"loss": loss, **stats}


def _value_case(crv):
    def f(d):
        loss, stats = L.ppo_value_loss(d["values"], d["values_old"], d["returns"], d["mask"], crv)
        return {"loss": loss, **stats}

    return f


PAD_CASES = {
    "masked_sum": (
        lambda d: {
            "all": L.masked_sum(d["x"], d["mask"]),
            "d0": L.masked_sum(d["x"], d["mask"], 0),
            "d1": L.masked_sum(d["x"], d["mask"], 1),
        },
        ["x"],
        True,
    ),
    "masked_mean": (
        lambda d: {
            "all": L.masked_mean(d["x"], d["mask"]),
            "d0": L.masked_mean(d["x"], d["mask"], 0),
            "d1": L.masked_mean(d["x"], d["mask"], 1),
        },
        ["x"],
        True,
    ),
    "masked_var": (
        lambda d: {
            "u": L.masked_var(d["x"], d["mask"]),
            "b": L.masked_var(d["x"], d["mask"], unbiased=False),
        },
        ["x"],
        True,
    ),
    "masked_whiten": (
        lambda d: {"s": L.masked_whiten(d["x"], d["mask"]), "n": L.masked_whiten(d["x"], d["mask"], False)},
        ["x"],
        True,
    ),
    "terminal_rewards": (lambda d: {"r": L.terminal_rewards(d["scores"], d["mask"])}, ["scores"], True),
    "next_values": (lambda d: {"v": L.next_values(d["values"], d["mask"])}, ["values"], True),
    "discounted_cumsum": (lambda d: {"y": L.discounted_cumsum(d["x"], d["mask"], 0.9)}, ["x"], True),
    "gae_advantages": (_gae_case, ["rewards", "values"], True),
    "klq_targets": (_targets_case(False), [], True),
    "klq_targets_whiten": (_targets_case(True), [], True),
    "klq_loss_l2": (_klq_loss_case(), ["logp", "values"], True),
    "klq_loss_huber": (_klq_loss_case(loss_type="huber", huber_delta=0.3), ["logp", "values"], True),
    "klq_loss_value_clip": (_klq_loss_case(value_clip=0.1), ["logp", "values"], True),
    "klq_loss_ratio_clip": (_klq_loss_case(ratio_clip=0.1), ["logp", "values"], True),
    "klq_loss_both_clips": (_klq_loss_case(value_clip=0.1, ratio_clip=0.1), ["logp", "values"], True),
    "ppo_rewards": (
        lambda d: {"r": L.ppo_rewards(d["scores"], d["logp_old"], d["logp_ref"], d["mask"], TAU)},
        ["logp_old", "scores"],
        True,
    ),
    "ppo_policy_loss": (_policy_case, ["logp"], True),
    "clipped_surrogate_token_adv": (
        lambda d: dict(
            zip(
                ("l", "c"),
                L.clipped_surrogate(d["logp"], d["logp_old"], d["advantages"], d["mask"], 0.2, 0.28),
            )
        ),
        ["logp"],
        True,
    ),
    "clipped_surrogate_seq_adv": (
        lambda d: dict(
            zip(("l", "c"), L.clipped_surrogate(d["logp"], d["logp_old"], d["scores"], d["mask"], 0.1, 0.3))
        ),
        ["logp"],
        True,
    ),
    "kl_k3": (lambda d: {"k3": L.kl_k3(d["logp"], d["logp_ref"], d["mask"])}, ["logp"], True),
    "aggregate_loss": (
        lambda d: {m: L.aggregate_loss(d["x"], d["mask"], m, max_len=9) for m in L.LOSS_AGGREGATIONS},
        ["x"],
        True,
    ),
    "sequence_rewards_with_kl": (
        lambda d: {
            "r": L.sequence_rewards_with_kl(d["scores"], d["logp_old"], d["logp_ref"], d["mask"], TAU)
        },
        ["logp_old", "scores"],
        True,
    ),
    "ppo_value_loss_clipped": (_value_case(0.2), ["values"], True),
    "ppo_value_loss_unclipped": (_value_case(None), ["values"], True),
    "klq_action_values": (
        lambda d: {"q": L.klq_action_values(d["logp"], d["logp_ref"], d["values"], TAU)},
        ["logp", "values"],
        False,
    ),
    "logprobs_of": (lambda d: {"lp": L.logprobs_of(d["logits"], d["tokens"])}, ["logits"], False),
    "entropy_of": (lambda d: {"h": L.entropy_of(d["logits"])}, ["logits"], False),
}

PAD_TENSORS = [
    "logp", "logp_old", "logp_ref", "values", "values_old", "targets", "q_old",
    "advantages", "returns", "rewards", "x", "logits",
]  # fmt: skip



def _perturb(batch, kind, gen):
    d = dict(batch)
    pad = ~batch["mask"]
    for k in PAD_TENSORS:
        if k not in batch:
            continue
        y = batch[k].clone()
        shape = y[pad].shape
        if kind == "random":
            y[pad] = 100.0 * torch.randn(shape, generator=gen, dtype=F64)
        else:
            y[pad] = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}[kind]
        d[k] = y
    tok = batch["tokens"].clone()
    tok[pad] = torch.randint(0, 5, tok[pad].shape, generator=gen)
    d["tokens"] = tok
    return d


def _run_case(fn, diff, d):
    d = dict(d)
    for k in diff:
        d[k] = d[k].clone().requires_grad_()
    outs = fn(d)
    wgen = torch.Generator().manual_seed(99)
    scalar = torch.zeros((), dtype=F64)
    for o in outs.values():
        if o.requires_grad:
            w = torch.rand(o.shape, generator=wgen, dtype=F64) + 0.5
            o = torch.where(d["mask"], o, 0.0) if o.shape == d["mask"].shape else o
            scalar = scalar + (o * w).sum()
    gs = torch.autograd.grad(scalar, [d[k] for k in diff], allow_unused=True) if diff else []
    gs = [torch.zeros_like(d[k]) if g is None else g for k, g in zip(diff, gs)]
    return {k: o.detach() for k, o in outs.items()}, dict(zip(diff, gs))


def _pad_params():
    out = []
    for name in PAD_CASES:
        for kind in ["random", "nan", "+inf", "-inf"]:
            marks = []
            out.append(pytest.param(name, kind, marks=marks, id=f"{name}-{kind}"))
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name,kind", _pad_params())
def test_padding_invariance(name, kind, seed):
    fn, diff, masked = PAD_CASES[name]
    batch = make_batch(seed, zero_row=True)
    mask = batch["mask"]
    out0, g0 = _run_case(fn, diff, batch)
    out1, g1 = _run_case(fn, diff, _perturb(batch, kind, torch.Generator().manual_seed(seed + 17)))
    for k in out0:
        a, b = (out0[k], out1[k]) if masked or out0[k].dim() == 0 else (out0[k][mask], out1[k][mask])
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"output {k!r} depends on padding")
    for k in diff:
        if g0[k].shape[:2] == mask.shape:
            torch.testing.assert_close(
                g1[k][mask], g0[k][mask], rtol=0, atol=0, msg=f"grad {k!r} at real tokens"
            )
            if kind == "random":  # finite junk: no gradient may flow into padded positions
                assert (g1[k][~mask] == 0).all() and (g0[k][~mask] == 0).all(), f"grad {k!r} at padding"
        else:
            torch.testing.assert_close(g1[k], g0[k], rtol=0, atol=0, msg=f"grad {k!r}")


@pytest.mark.parametrize("name", [n for n, (_, _, m) in PAD_CASES.items() if m and n != "terminal_rewards"])
def test_bool_and_float_masks_agree(name):
    fn, diff, _ = PAD_CASES[name]
    batch = make_batch(4, zero_row=True)
    fb = dict(batch, mask=batch["mask"].to(F64))
    out_b, g_b = _run_case(fn, diff, batch)
    # _run_case weights with torch.where(mask, ...), which needs a bool mask; run the float-mask call directly
    out_f = {k: v.detach() for k, v in fn(fb).items()}
    for k in out_b:
        torch.testing.assert_close(out_f[k].to(out_b[k].dtype), out_b[k], rtol=0, atol=0)


# ---------------------------------------------------------- padding and gradients w.r.t. upstream parameters
#
# In training, logp and V come from networks evaluated at EVERY position (padding included), while the
# rollout-time inputs (logp_old, logp_ref, targets, q_old, values_old, returns, advantages) are buffers whose
# padded slots may hold anything (the module docstring: "even inf/nan"). The parameter gradients must then be
# the clean ones.



def _param_cases():
    out = []
    for name in [
        "klq_loss_l2", "klq_loss_huber", "klq_loss_value_clip", "klq_loss_ratio_clip", "klq_loss_both_clips",
        "ppo_policy_loss", "ppo_value_loss_clipped", "ppo_value_loss_unclipped",
    ]:  # fmt: skip
        for kind in ["nan", "+inf"]:
            marks = []
            out.append(pytest.param(name, kind, marks=marks, id=f"{name}-{kind}"))
    return out


@pytest.mark.parametrize("name,kind", _param_cases())
def test_padding_invariance_of_parameter_gradients(name, kind):
    fn, _, _ = PAD_CASES[name]
    net = TinyNets(11)
    T = net.mask.shape[1]
    batch = make_batch(11, B=net.mask.shape[0], T=T)
    batch["mask"] = net.mask  # the nets' lengths
    batch.pop("logp")
    batch.pop("values")
    pert = _perturb(batch, kind, torch.Generator().manual_seed(5))

    def param_grads(d):
        d = dict(d, logp=net.logp(*net.pi), values=net.value(*net.v))
        outs = fn(d)
        return torch.autograd.grad(outs["loss"], net.pi + net.v, allow_unused=True)

    clean, dirty = param_grads(batch), param_grads(pert)
    for c, g in zip(clean, dirty):
        if c is None:
            assert g is None
            continue
        assert torch.isfinite(c).all()
        torch.testing.assert_close(g, c, rtol=0, atol=0)
