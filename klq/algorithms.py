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

from klq.config import KLQParams, PPOParams

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

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

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
        """Minibatch loss from current log-probs and values (B_mb, T) and the minibatch's targets."""
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
        advantages, returns = losses.gae_advantages(rewards, batch.values_old, value_mask, cfg.gamma, cfg.lam)
        if cfg.ppo.whiten_advantages:
            advantages = losses.masked_whiten(advantages, mask)
        else:
            advantages = torch.where(mask.bool(), advantages, 0.0)  # the policy acts on response tokens only
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
