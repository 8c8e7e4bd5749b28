"""The win-rate against the reference during training (the run config's `eval_judge`).

At an eval the trainer has the policy's responses to the held-out prompts. `WinRateVsReference` judges
them against the reference (SFT) policy's responses to the same prompts with a `klq.judge` backend, in
both presentation orders (`klq.judge.core.run_judgement`: the protocol of `klq judge` and of the worker's
judgements), and turns the summary into eval metrics: `eval/win_rate_vs_ref` (policy over reference, ties
counting half) with its Wilson interval, and the verdict counts.

Once per run: the judge is built (`make_judge`: a local model or reward model is loaded here, not at every
eval), and the reference's responses are generated and written to the run directory (`REFERENCE_FILE`),
so that a resumed run judges against the very same responses without generating them again. The file
records how they were decoded (`reference_key`); a file made with other settings or prompts is replaced.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from klq.config import TEMPLATE_JUDGES, RunConfig
from klq.judge.backends import JudgeAPIError, make_judge
from klq.judge.core import Comparison, Judge, run_judgement
from klq.judge.stats import JudgementSummary
from klq.judge.templates import resolve_template, template_for_task
from klq.tasks import Prompt, Task

log = logging.getLogger(__name__)

REFERENCE_FILE = "eval_reference.json"
WIN_RATE_KEY = "eval/win_rate_vs_ref"
CI_LOW_KEY = f"{WIN_RATE_KEY}_ci_low"
CI_HIGH_KEY = f"{WIN_RATE_KEY}_ci_high"
COUNT_KEYS = {  # metric key -> JudgementSummary field (policy = A, reference = B)
    "eval/judge_wins": "wins_a",
    "eval/judge_losses": "wins_b",
    "eval/judge_ties": "ties",
    "eval/judge_invalid": "invalid",
}
CONSISTENCY_KEY = "eval/judge_position_consistency"


def judge_spec(cfg: RunConfig, device: str) -> dict[str, Any]:
    """The `klq.judge.backends` spec of ``cfg.eval_judge``: model judges run on the run's device in its
    dtype; a reward_model judge that names no model is the run's reward model."""
    j = cfg.eval_judge
    spec: dict[str, Any] = {"backend": j.backend}
    if j.backend == "reward_model":
        spec["model"] = j.model or cfg.model.reward
    elif j.model:
        spec["model"] = j.model
    if j.backend in ("local_hf", "reward_model"):
        spec.update(device=device, dtype=cfg.model.dtype)
    if j.margin is not None:
        spec["margin"] = j.margin
    return spec


def reference_key(cfg: RunConfig) -> dict[str, Any]:
    """What the reference's eval responses depend on besides the prompts: the model and eval's decoding."""
    rc = cfg.rollout
    return {
        "reference": cfg.model.reference or cfg.model.policy,
        "tokenizer": cfg.model.policy,
        "dtype": cfg.model.dtype,
        "eval_temperature": rc.eval_temperature,
        "top_k": rc.top_k,
        "top_p": rc.top_p,
        "response_length": rc.response_length,
        "stop_sequences": list(rc.stop_sequences),
        "max_prompt_length": cfg.task.max_prompt_length,
        "seed": cfg.seed,
    }


def cached_reference_responses(
    out_dir: str | Path, key: Mapping[str, Any], prompts: Sequence[Prompt], generate: Callable[[], list[str]]
) -> list[str]:
    """The reference's responses to `prompts`: read from the run directory's `REFERENCE_FILE` when it was
    made with the same `key` for the same prompts, else `generate()`d and written there (atomically)."""
    path = Path(out_dir) / REFERENCE_FILE
    wanted = [[p.id, p.text] for p in prompts]
    if path.is_file():
        held = json.loads(path.read_text())
        if held.get("key") == dict(key) and [[r["prompt_id"], r["prompt"]] for r in held["responses"]] == wanted:
            return [r["response"] for r in held["responses"]]
        log.warning("%s was made with other settings or prompts: generating the reference's responses again", path)
    responses = generate()
    if len(responses) != len(prompts):
        raise RuntimeError(f"{len(responses)} reference responses for {len(prompts)} prompts")
    rows = [{"prompt_id": p.id, "prompt": p.text, "response": r} for p, r in zip(prompts, responses)]
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"key": dict(key), "responses": rows}, indent=1))
    tmp.replace(path)
    return responses


def summary_metrics(summary: JudgementSummary) -> dict[str, float]:
    """Eval metrics of a judgement of the policy (A) against the reference (B): the win-rate and its
    interval when any verdict is valid, the counts always, position consistency when it was checked."""
    out = {key: float(getattr(summary, name)) for key, name in COUNT_KEYS.items()}
    if summary.win_rate is not None:
        out.update({WIN_RATE_KEY: summary.win_rate, CI_LOW_KEY: summary.ci_low, CI_HIGH_KEY: summary.ci_high})
    if summary.position_consistency is not None:
        out[CONSISTENCY_KEY] = summary.position_consistency
    return {k: v for k, v in out.items() if math.isfinite(v)}


class WinRateVsReference:
    """The judge of one run and the reference's responses to its eval prompts, both made once."""

    def __init__(self, cfg: RunConfig, judge: Judge, template: str | None, prompts: Sequence[Prompt],
                 reference: Sequence[str]) -> None:
        self.cfg, self.judge, self.template = cfg, judge, template
        self.prompts, self.reference = list(prompts), list(reference)

    @classmethod
    def for_run(cls, cfg: RunConfig, task: Task, prompts: Sequence[Prompt], out_dir: str | Path, device: str,
                generate_reference: Callable[[], list[str]], settings: Any = None) -> WinRateVsReference:
        """Build ``cfg.eval_judge``'s judge (`settings`: the OpenAI-compatible endpoint's, None = the
        environment) and its template, then read or generate the reference's responses. A judge that cannot
        be built is a `ValueError` naming the config field."""
        j = cfg.eval_judge
        template = None
        if j.backend in TEMPLATE_JUDGES:
            try:
                template = resolve_template(j.template or template_for_task(cfg.task.name))
            except ValueError as err:
                raise ValueError(f"eval_judge.template: {err}") from err
        spec = judge_spec(cfg, device)
        try:
            judge = make_judge(spec, settings, task=task if j.backend == "gold" else None)
        except (ValueError, OSError) as err:
            named = f" {spec['model']!r}" if spec.get("model") else ""
            raise ValueError(f"eval_judge: the {j.backend} judge{named} could not be built: {err}") from err
        reference = cached_reference_responses(out_dir, reference_key(cfg), prompts, generate_reference)
        return cls(cfg, judge, template, prompts, reference)

    def due(self, iteration: int) -> bool:
        """Whether the eval at `iteration` is judged: every `every`-th eval (evals come every eval_interval
        iterations), and the last iteration's."""
        evals_so_far = -(-iteration // self.cfg.eval_interval)  # the eval at the end may come off-interval
        return evals_so_far % self.cfg.eval_judge.every == 0 or iteration == self.cfg.train.num_iterations

    def metrics(self, responses: Sequence[str]) -> dict[str, float]:
        """Judge the policy's `responses` to the eval prompts against the reference's; an endpoint that fails
        for good (after its retries) costs this eval its win-rate, not the run."""
        comparisons = [Comparison(p.id, p.text, policy, ref)
                       for p, policy, ref in zip(self.prompts, responses, self.reference, strict=True)]
        try:
            result = run_judgement(comparisons, self.judge, self.template, seed=self.cfg.seed, ci_method="wilson")
        except JudgeAPIError as err:
            log.warning("eval judge failed, no win-rate at this eval: %s", err)
            return {}
        return summary_metrics(result.summary)

    def close(self) -> None:
        close = getattr(self.judge, "close", None)
        if close is not None:
            close()
