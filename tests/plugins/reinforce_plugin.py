"""A plugin algorithm for the tests (tests/frontend/test_frontend_algorithm_plugin.py): REINFORCE with a
batch-mean baseline on the sequence reward and a value head regressed onto that reward. One class, no
edit anywhere else: loaded by name through KLQ_PLUGINS=reinforce_plugin (this folder on PYTHONPATH)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from klq import losses
from klq.algorithms import Algorithm, register


class ReinforceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    baseline: Literal["mean", "none"] = Field("mean", description="subtract the batch's mean reward")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")


@register("reinforce")
class Reinforce(Algorithm):
    """REINFORCE: -A log pi on every response token, A = R - mean(R) (the test plugin)."""

    label = "Reinforce"
    params = ReinforceParams

    def targets(self, batch):
        """advantages (B, T): the sequence's R minus the baseline on its response tokens; returns (B, T):
        R on them."""
        mask = batch.response_mask
        scores = batch.scores
        baseline = (
            scores.mean() if self.cfg.reinforce.baseline == "mean" else torch.zeros((), dtype=scores.dtype)
        )
        advantages = (scores - baseline)[:, None] * mask
        returns = scores[:, None] * mask
        return {"advantages": advantages, "returns": returns}, {"reinforce/baseline": float(baseline)}

    def loss(self, logp, values, mb, mask):
        pg_loss = -losses.masked_mean(mb["advantages"] * logp, mask)
        vf_loss = 0.5 * losses.masked_mean((values - mb["returns"]) ** 2, mask)
        return pg_loss + self.cfg.reinforce.vf_coef * vf_loss, {
            "loss/policy": pg_loss.detach(),
            "loss/value": vf_loss.detach(),
        }
