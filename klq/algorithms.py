"""The algorithms as small strategy objects over the shared on-policy loop, and their registry.

Each algorithm does two things: turn a rollout batch into fixed per-token training targets (no grad),
and compute a minibatch loss from the current policy log-probs and values. Each class also declares what
the rest of KLQ Lab needs to offer it: its ``name`` (the config's ``algorithm``), a display ``label`` and
its parameter group ``params`` (a pydantic model, the config's section ``<name>:``), if any. Registered by
name, the way verl's core_algos registers losses: ``ALGORITHMS`` is the one list of algorithms that the
config, the API (validation, filters, experiment grids, ``GET /algorithms``) and the dashboard read, so
adding one (RLOO, say) is one class.

Algorithms outside this module are plugins: modules named in ``KLQ_PLUGINS`` (comma-separated, importable
names) are imported when this module is, in every process that reads the registry (API server, workers,
CLI), so set it alike for all of them.

Importing this module is cheap (no torch): the API server reads the registry; torch and the math
(klq.losses) load when an algorithm computes.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from klq.config import GRPOParams, KLQParams, PPOParams, RLOOParams

if TYPE_CHECKING:
    from torch import Tensor

    from klq.config import RunConfig
    from klq.rollout import Rollout

ALGORITHMS: dict[str, type[Algorithm]] = {}
PLUGINS_ENV = "KLQ_PLUGINS"
# names: the runs table's algorithm column is 16 characters; config sections must not shadow a field
_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")


def register(name: str):
    """Class decorator: register an Algorithm subclass as ``name`` (lowercase letters and digits, at most
    16, not a RunConfig field). Registering another class under a taken name is an error; the same class
    again (a module imported twice) replaces it."""

    def decorator(cls: type[Algorithm]) -> type[Algorithm]:
        from klq.config import RunConfig

        if not _NAME.match(name):
            raise ValueError(
                f"algorithm name {name!r}: lowercase letters and digits, at most 16, a letter first"
            )
        if name in RunConfig.model_fields:
            raise ValueError(f"algorithm name {name!r} is a RunConfig field")
        taken = ALGORITHMS.get(name)
        if taken is not None and (taken.__module__, taken.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(
                f"algorithm {name!r} is already registered by {taken.__module__}.{taken.__qualname__}"
            )
        if cls.params is not None and not (
            isinstance(cls.params, type) and issubclass(cls.params, BaseModel)
        ):
            raise TypeError(f"algorithm {name!r}: params must be a pydantic model class or None")
        cls.name = name
        if "label" not in cls.__dict__:
            cls.label = name.upper()
        ALGORITHMS[name] = cls
        return cls

    return decorator


def param_groups() -> dict[str, type[BaseModel]]:
    """The config sections of the registered algorithms: name -> parameter model (those that have one)."""
    return {name: cls.params for name, cls in ALGORITHMS.items() if cls.params is not None}


def make_algorithm(cfg: RunConfig) -> Algorithm:
    try:
        return ALGORITHMS[cfg.algorithm](cfg)
    except KeyError:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}; known: {sorted(ALGORITHMS)}") from None


class Algorithm:
    name: ClassVar[str]
    label: ClassVar[str]  # display name (default: the name in capitals)
    params: ClassVar[type[BaseModel] | None] = None  # the parameter group, ``cfg.<name>``
    # False: no value network is built, trained or checkpointed, the rollout has no V_old (values_old None)
    # and ``loss`` gets values None
    uses_value_model: ClassVar[bool] = True
    min_generations: ClassVar[int] = 1  # rollout.num_generations at least this (a config validation error)

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        # The algorithm's own quantities of the batch `targets` last saw, name -> (B, T), or (B,) for one
        # value per response: the tensors it built anyway (kept by reference, no copy), for `token_quantities`.
        self.quantities: dict[str, Tensor] = {}

    def token_quantities(self, batch: Rollout) -> dict[str, Tensor]:
        """Per-token quantities of `batch` for the token records (docs/ALGORITHMS.md "Per-token
        quantities"), name -> (B, T), zero beyond each response: the rollout's logp, logp_ref, k1, k3,
        entropy (where the rollout kept it) and value (V_old, with a value model), and the algorithm's own
        from its last `targets(batch)` call. Elementwise arithmetic on tensors the rollout and `targets`
        already hold: no forward pass."""
        import torch

        from klq import losses

        mask = batch.response_mask
        on = mask.bool()

        def response(x: Tensor) -> Tensor:
            return torch.where(on, x, 0.0)

        out = {
            "logp": batch.logp_old,
            "logp_ref": batch.logp_ref,
            "k1": response(batch.logp_old - batch.logp_ref),
            "k3": losses.kl_k3(batch.logp_old, batch.logp_ref, mask),
        }
        if batch.entropy is not None:
            out["entropy"] = batch.entropy
        if batch.values_old is not None:
            out["value"] = response(batch.values_old)
        for name, q in self.quantities.items():
            out[name] = response(q if q.dim() == 2 else q[:, None].expand_as(mask))
        return out

    def eval_token_quantities(self, batch: Rollout) -> dict[str, Tensor]:
        """`token_quantities` of a batch the training loop did not make targets for (held-out samples):
        `targets` runs on it first (its statistics are over this batch: PPO's whitening, for one), except
        for an algorithm that needs more responses per prompt than the batch has (RLOO and GRPO on eval's
        one response per prompt have no group baseline: the rollout's quantities only)."""
        if batch.num_generations >= self.min_generations:
            self.targets(batch)
        else:
            self.quantities = {}
        return self.token_quantities(batch)

    def slots(self, mask: Tensor) -> Tensor | None:
        """Positions that carry values, value targets and the terminal reward: None = the response tokens
        (`mask`); with `terminal_slot: after_eos` also the slot after EOS (TRL's convention)."""
        from klq import losses

        return losses.after_end_mask(mask).to(mask.dtype) if self.cfg.terminal_slot == "after_eos" else None

    def targets(self, batch: Rollout) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Per-token (B, T) tensors the loss needs (indexed by minibatch later), and batch-level metrics."""
        raise NotImplementedError

    def loss(
        self, logp: Tensor, values: Tensor, mb: dict[str, Tensor], mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Minibatch loss from current log-probs and values (B_mb, T; values None without a value model)
        and the minibatch's targets."""
        raise NotImplementedError


@register("klq")
class KLQ(Algorithm):
    """KL-regularised Q-learning: Q = tau log(pi/pi_ref) + V regressed onto lambda-returns G."""

    label = "KLQ"
    params = KLQParams

    def targets(self, batch: Rollout) -> tuple[dict[str, Tensor], dict[str, float]]:
        from klq import losses

        cfg, p = self.cfg, self.cfg.klq
        mask = batch.response_mask
        slots = self.slots(mask)
        t = losses.klq_targets(
            batch.scores, batch.logp_old, batch.logp_ref, batch.values_old, mask,
            tau=cfg.tau, gamma=cfg.gamma, lam=cfg.lam, alpha=p.alpha, whiten_deltas=p.whiten_deltas, slots=slots,
        )
        metrics = {
            "q/target_avg": losses.masked_mean(t["targets"], mask).item(),
            "q/td_error_avg": losses.masked_mean(t["td_errors"], mask).item(),
            "q/old_action_value_avg": losses.masked_mean(t["q_old"], mask).item(),
        }
        targets = {"targets": t["targets"], "q_old": t["q_old"]}
        self.quantities = {"q": t["q_old"], "delta": t["td_errors"], "target": t["targets"]}
        return (targets if slots is None else {**targets, "slots": slots}), metrics

    def loss(self, logp, values, mb, mask):
        import torch

        from klq import losses

        p = self.cfg.klq
        slots = mb.get("slots")
        if slots is not None:  # the slot after EOS: its Q is V alone (log-ratio 0, as the fork's loss has it)
            logp = torch.where(mask.bool(), logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
            mask = slots
        loss, stats = losses.klq_loss(
            logp, mb["logp_ref"], values, mb["targets"], mask, tau=self.cfg.tau,
            loss_type=p.loss, huber_delta=p.huber_delta, q_old=mb["q_old"], logp_old=mb["logp_old"],
            value_clip=p.value_clip, ratio_clip=p.ratio_clip, clipped_half=p.clipped_loss_half,
        )
        return loss, {
            "loss/q": loss.detach(),
            "q/action_value": stats["q"],
            "q/state_value": losses.masked_mean(values.detach(), mask),
            "q/clipfrac": stats["clipfrac"],
        }


@register("ppo")
class PPO(Algorithm):
    """PPO with a per-token k1 KL penalty in the reward, GAE and whitened advantages (TRL PPOTrainer)."""

    label = "PPO"
    params = PPOParams

    def targets(self, batch: Rollout) -> tuple[dict[str, Tensor], dict[str, float]]:
        import torch

        from klq import losses

        cfg = self.cfg
        mask = batch.response_mask
        slots = self.slots(mask)
        value_mask = mask if slots is None else slots
        rewards = losses.ppo_rewards(batch.scores, batch.logp_old, batch.logp_ref, mask, cfg.kl_coef, slots)
        raw_advantages, returns = losses.gae_advantages(rewards, batch.values_old, value_mask, cfg.gamma, cfg.lam)
        if cfg.ppo.whiten_advantages:
            advantages = losses.masked_whiten(raw_advantages, mask)
        else:
            advantages = torch.where(mask.bool(), raw_advantages, 0.0)  # the policy acts on response tokens only
        self.quantities = {"reward": rewards, "advantage_raw": raw_advantages, "advantage": advantages,
                           "return": returns}
        metrics = {
            "ppo/returns_avg": losses.masked_mean(returns, mask).item(),
            "ppo/advantages_avg": losses.masked_mean(advantages, mask).item(),
        }
        targets = {"advantages": advantages, "returns": returns}
        return (targets if slots is None else {**targets, "slots": slots}), metrics

    def loss(self, logp, values, mb, mask):
        from klq import losses

        p = self.cfg.ppo
        value_mask = mb.get("slots", mask)  # TRL: the value loss also covers the slot after EOS, the policy's not
        pg_loss, pg = losses.ppo_policy_loss(logp, mb["logp_old"], mb["advantages"], mask, p.cliprange)
        vf_loss, vf = losses.ppo_value_loss(values, mb["values_old"], mb["returns"], value_mask, p.cliprange_value)
        return pg_loss + p.vf_coef * vf_loss, {
            "loss/policy": pg_loss.detach(),
            "loss/value": vf_loss.detach(),
            "policy/clipfrac": pg["clipfrac"],
            "val/clipfrac": vf["clipfrac"],
        }


def _group_metrics(scores: Tensor, k: int) -> dict[str, float]:
    """TRL GRPOTrainer's group statistics of the raw scores (B,): mean std within groups, and the fraction
    of groups whose k scores are all equal (advantage 0 for every response: no learning signal)."""
    std = scores.reshape(-1, k).std(1)
    return {"reward_std": std.mean().item(), "frac_reward_zero_std": (std < 1e-6).float().mean().item()}


def _surrogate_stats(per_token_clipped: Tensor, advantages: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Clip fractions over response tokens: all, low (rho < 1 - eps_low with A < 0) and high (rho > 1 + eps_high
    with A > 0). clipped, mask: (B, T); advantages: (B,)."""
    from klq import losses

    negative = (advantages < 0)[:, None].expand_as(per_token_clipped)
    clipped = per_token_clipped.float()
    return {
        "policy/clipfrac": losses.masked_mean(clipped, mask),
        "policy/clipfrac_low": losses.masked_mean(clipped * negative, mask),
        "policy/clipfrac_high": losses.masked_mean(clipped * ~negative, mask),
    }


@register("rloo")
class RLOO(Algorithm):
    """RLOO (TRL RLOOTrainer): KL in the sequence reward, leave-one-out group baseline, no value model.

    A_i = R_i - mean of the other k - 1 responses' R_j, the same for every token of response i; a clipped
    per-token surrogate, mean over all response tokens."""

    label = "RLOO"
    params = RLOOParams
    uses_value_model = False
    min_generations = 2

    def targets(self, batch: Rollout) -> tuple[dict[str, Tensor], dict[str, float]]:
        from klq import losses

        k = batch.num_generations
        rewards = losses.sequence_rewards_with_kl(batch.scores, batch.logp_old, batch.logp_ref,
                                                  batch.response_mask, self.cfg.kl_coef)
        advantages = losses.rloo_advantages(rewards, k)
        self.quantities = {"advantage": advantages}  # (B,): the same on every token of a response
        metrics = {**_group_metrics(batch.scores, k), "rloo/advantages_avg": advantages.mean().item(),
                   "rloo/advantages_abs_avg": advantages.abs().mean().item()}
        return {"advantages": advantages}, metrics

    def loss(self, logp, values, mb, mask):
        from klq import losses

        eps = self.cfg.rloo.cliprange
        per_token, clipped = losses.clipped_surrogate(logp, mb["logp_old"], mb["advantages"], mask, eps, eps)
        loss = losses.aggregate_loss(per_token, mask, "token")
        return loss, {"loss/policy": loss.detach(), **_surrogate_stats(clipped, mb["advantages"], mask)}


@register("grpo")
class GRPO(Algorithm):
    """GRPO (TRL GRPOTrainer): group-normalised advantages, kl_coef * k3 in the loss, no value model.

    A_i = (R_i - mean_group R) / (std + 1e-4) (grpo.scale_rewards), asymmetric clip eps_low/eps_high, the
    per-token loss aggregated as grpo.loss_aggregation says."""

    label = "GRPO"
    params = GRPOParams
    uses_value_model = False
    min_generations = 2

    def targets(self, batch: Rollout) -> tuple[dict[str, Tensor], dict[str, float]]:
        from klq import losses

        k = batch.num_generations
        advantages = losses.grpo_advantages(batch.scores, k, self.cfg.grpo.scale_rewards)
        self.quantities = {"advantage": advantages}  # (B,): the same on every token of a response
        metrics = {**_group_metrics(batch.scores, k), "grpo/advantages_abs_avg": advantages.abs().mean().item()}
        return {"advantages": advantages}, metrics

    def loss(self, logp, values, mb, mask):
        from klq import losses

        p = self.cfg.grpo
        surrogate, clipped = losses.clipped_surrogate(logp, mb["logp_old"], mb["advantages"], mask,
                                                      p.eps_low, p.eps_high)
        k3 = losses.kl_k3(logp, mb["logp_ref"], mask)
        max_len = self.cfg.rollout.response_length
        policy_loss = losses.aggregate_loss(surrogate, mask, p.loss_aggregation, max_len)
        kl = losses.aggregate_loss(k3, mask, p.loss_aggregation, max_len)
        loss = policy_loss + self.cfg.kl_coef * kl  # = aggregate(surrogate + kl_coef * k3): both are linear
        return loss, {
            "loss/policy": policy_loss.detach(),
            "loss/kl": kl.detach(),
            **_surrogate_stats(clipped, mb["advantages"], mask),
        }


def load_plugins(spec: str | None = None) -> list[str]:
    """Import the modules named in ``spec`` (default: env KLQ_PLUGINS; comma-separated) so that their
    algorithms register; returns their names. A module that cannot be imported is an error naming it."""
    names = [n.strip() for n in (os.environ.get(PLUGINS_ENV, "") if spec is None else spec).split(",")]
    for module in filter(None, names):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"{PLUGINS_ENV}: cannot import algorithm plugin {module!r}: {err}") from err
    return [n for n in names if n]


load_plugins()
