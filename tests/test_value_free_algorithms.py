"""RLOO and GRPO as registered Algorithms: their config (TRL defaults, num_generations >= 2), that they
declare no value model, and that the first-step gradient of `Algorithm.loss` is -A_i grad log pi
aggregated as configured (docs/ALGORITHMS.md, identity (4)), computed here by explicit loops.

The policy is a tiny softmax over a (T, V) parameter table, so grad log pi(a_t) is that of one logit row.
"""

from __future__ import annotations

import pytest
import torch

from klq import algorithms
from klq.config import ConfigError, RunConfig, load_config
from klq.rollout import Rollout

F64 = torch.float64
B, T, V, K = 6, 4, 5, 3  # two groups of three responses
LENGTHS = [4, 2, 3, 1, 4, 3]


def run_config(algorithm: str, **extra) -> RunConfig:
    return RunConfig.model_validate({"algorithm": algorithm, "rollout": {"num_generations": K,
                                     "response_length": T}, "train": {"batch_size": B, "minibatch_size": B,
                                     "micro_batch_size": B}, **extra})


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_needs_two_generations_and_no_value_model(algorithm):
    with pytest.raises(ValueError, match=r"rollout\.num_generations \(1\) must be at least 2"):
        RunConfig(algorithm=algorithm)
    cls = algorithms.ALGORITHMS[algorithm]
    assert cls.uses_value_model is False and cls.min_generations == 2
    assert algorithms.KLQ.uses_value_model and algorithms.PPO.uses_value_model
    cfg = RunConfig(algorithm=algorithm, rollout={"num_generations": 2})
    assert cfg.kl_coef == 0.05


def test_defaults_are_trl_and_load_config_names_the_field(tmp_path):
    cfg = run_config("grpo")
    assert (cfg.grpo.scale_rewards, cfg.grpo.eps_low, cfg.grpo.eps_high, cfg.grpo.loss_aggregation) == (
        "group", 0.2, 0.2, "token")  # GRPOConfig: scale_rewards "group", epsilon 0.2, loss_type "dapo"
    assert cfg.rloo.cliprange == 0.2
    path = tmp_path / "c.yaml"
    path.write_text("algorithm: rloo\n")
    with pytest.raises(ConfigError, match=r"rollout\.num_generations \(1\) must be at least 2 for algorithm 'rloo'"):
        load_config(path)
    with pytest.raises(ValueError, match="grpo.loss_aggregation"):
        run_config("grpo", grpo={"loss_aggregation": "sum"})


def test_builtin_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("rloo", "grpo"):
        cfg = load_config(root / f"builtin-{name}.yaml")
        assert cfg.algorithm == name and cfg.rollout.num_generations >= 2


def batch(seed: int) -> tuple[Rollout, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in LENGTHS], dtype=F64)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    logits_old = torch.randn(T, V, generator=gen, dtype=F64)
    logp_old = torch.where(mask.bool(), logits_old.log_softmax(-1).gather(1, tokens.T).T, 0.0)
    logp_ref = torch.where(mask.bool(), logp_old + 0.3 * torch.randn(B, T, generator=gen, dtype=F64), 0.0)
    zeros = torch.zeros(B, 1, dtype=torch.long)
    rollout = Rollout(
        prompts=[], query_ids=zeros, query_mask=zeros, response_ids=tokens, response_mask=mask,
        logp_old=logp_old, logp_ref=logp_ref, values_old=None, raw_scores=torch.zeros(B, dtype=F64),
        scores=2.0 * torch.randn(B, generator=gen, dtype=F64), ended=torch.ones(B, dtype=torch.bool),
        responses=[""] * B, num_generations=K,
    )  # fmt: skip
    return rollout, logits_old


def grad_of(loss_fn, logits_old: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    table = logits_old.clone().requires_grad_(True)
    logp = torch.where(mask.bool(), table.log_softmax(-1).gather(1, tokens.T).T, 0.0)
    loss_fn(logp).backward()
    return table.grad


@pytest.mark.parametrize(("algorithm", "aggregation"),
                         [("rloo", "token"), ("grpo", "grpo"), ("grpo", "token"), ("grpo", "dr_grpo")])
def test_first_step_gradient_is_minus_advantage_times_grad_log_pi(algorithm, aggregation):
    """At theta = theta_old: grad L = sum_{i,t} w_i,t * (-A_i grad log pi(a_t|s_t)) + kl_coef grad k3, with
    w the aggregation's weights (1/(B n_i), 1/sum n, 1/(B T)); the k3 part checked on its own: at
    logp_ref = logp_old it vanishes, so the gradient is the policy-gradient part alone."""
    extra = {"grpo": {"loss_aggregation": aggregation}} if algorithm == "grpo" else {}
    algo = algorithms.make_algorithm(run_config(algorithm, kl_coef=0.1, **extra))
    rollout, logits_old = batch(seed=3)
    rollout.logp_ref = rollout.logp_old.clone()  # k3 and its gradient are 0 at theta_old
    targets, metrics = algo.targets(rollout)
    assert {"reward_std", "frac_reward_zero_std"} <= set(metrics)
    advantages = targets["advantages"]
    assert advantages.shape == (B,)
    mask, tokens = rollout.response_mask, rollout.response_ids
    mb = {"logp_old": rollout.logp_old, "logp_ref": rollout.logp_ref, **targets}
    got = grad_of(lambda logp: algo.loss(logp, None, mb, mask)[0], logits_old, tokens, mask)

    n = [int(x) for x in mask.sum(1)]
    expected = torch.zeros(T, V, dtype=F64)
    for i in range(B):
        for t in range(n[i]):
            weight = {"grpo": 1 / (B * n[i]), "token": 1 / sum(n), "dr_grpo": 1 / (B * T)}[aggregation]
            table = logits_old.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(table.log_softmax(-1)[t, tokens[i, t]], table)
            expected -= weight * float(advantages[i]) * g
    torch.testing.assert_close(got, expected)


def test_grpo_kl_term_is_kl_coef_times_k3_in_the_loss():
    algo = algorithms.make_algorithm(run_config("grpo", kl_coef=0.1, grpo={"loss_aggregation": "grpo"}))
    rollout, _ = batch(seed=5)
    targets, _ = algo.targets(rollout)
    mask = rollout.response_mask
    mb = {"logp_old": rollout.logp_old, "logp_ref": rollout.logp_ref, **targets}
    loss, stats = algo.loss(rollout.logp_old, None, mb, mask)  # rho = 1: surrogate = -A_i per token
    k3 = [[(torch.exp(d) - d - 1).item() for d in (rollout.logp_ref[i] - rollout.logp_old[i])[: int(mask[i].sum())]]
          for i in range(B)]
    expected = sum(-float(targets["advantages"][i]) + 0.1 * sum(k3[i]) / len(k3[i]) for i in range(B)) / B
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert stats["loss/kl"].item() == pytest.approx(sum(sum(r) / len(r) for r in k3) / B, rel=1e-9)
    assert float(stats["policy/clipfrac"]) == 0.0


def test_clip_fractions_low_and_high():
    algo = algorithms.make_algorithm(run_config("grpo", grpo={"eps_low": 0.1, "eps_high": 0.1}))
    rollout, _ = batch(seed=7)
    targets, _ = algo.targets(rollout)
    mask = rollout.response_mask
    mb = {"logp_old": rollout.logp_old, "logp_ref": rollout.logp_ref, **targets}
    shift = torch.where(targets["advantages"][:, None] > 0, 0.5, -0.5).expand(B, T)  # every token clipped
    _, stats = algo.loss(rollout.logp_old + shift, None, mb, mask)
    positive = sum(n for n, a in zip(LENGTHS, targets["advantages"].tolist(), strict=True) if a > 0) / sum(LENGTHS)
    assert float(stats["policy/clipfrac"]) == pytest.approx(1.0)
    assert float(stats["policy/clipfrac_high"]) == pytest.approx(positive)
    assert float(stats["policy/clipfrac_low"]) == pytest.approx(1.0 - positive)
