"""Tasks: where prompts come from, and (when there is one) the ground-truth reward.

A task gives the trainer its prompts (`prompts("train")`, `prompts("eval")`), optionally a gold reward
on decoded text (`gold_reward`, None when the task has no ground truth), and the models it suggests
(`default_models`). Four tasks exist (see `klq.config.TaskConfig`):

- ``builtin``: the offline synthetic food-review domain of `klq.tasks.builtin` (no network, gold reward);
- ``tldr``, ``hh``, ``prompts``: real data from an HF dataset id or a local file (`klq.tasks.datasets`).

What a task is (`Task`, `Prompt`, the splits) lives in `klq.tasks.base`, model names (``builtin:*`` and
their resolution) in `klq.tasks.model_names`; both are re-exported here. Importing this package is cheap:
torch, transformers and datasets are imported only where needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from klq.tasks.base import SPLITS, Prompt, Task
from klq.tasks.model_names import BUILTIN_MODELS, BUILTIN_PREFIX, builtin_assets_dir, resolve_model_path

if TYPE_CHECKING:  # pragma: no cover
    from klq.config import RunConfig, TaskConfig

__all__ = [
    "BUILTIN_MODELS",
    "BUILTIN_PREFIX",
    "SPLITS",
    "Prompt",
    "Task",
    "builtin_assets_dir",
    "ensure_builtin_assets_if_used",
    "filter_prompts_by_length",
    "load_task",
    "run_model_names",
    "resolve_model_path",
]


def load_task(cfg: TaskConfig) -> Task:
    """The task a `TaskConfig` names. Loading is lazy: data is read on the first `prompts()` call."""
    if cfg.name == "builtin":
        from klq.tasks.builtin import BuiltinTask

        return BuiltinTask()
    if cfg.name in ("tldr", "hh", "prompts"):
        from klq.tasks.datasets import make_dataset_task

        return make_dataset_task(cfg)
    raise ValueError(f"unknown task {cfg.name!r}: expected builtin, tldr, hh or prompts")


# ---------------------------------------------------------------------------------------------------
# Model names
# ---------------------------------------------------------------------------------------------------


def ensure_builtin_assets_if_used(
    task_name: str, model_names: Iterable[str | None], log: Callable[[str], None] = print
) -> None:
    """Build (once) the built-in task's assets if the task is the built-in one or any model name is
    ``builtin:*``: the one such check, for ``klq train``, ``klq judge`` and the worker's runs and
    judgements. Imports the asset builder (torch) only when it is needed."""
    if task_name == "builtin" or any((n or "").startswith(BUILTIN_PREFIX) for n in model_names):
        from klq.tasks.builtin import ensure_assets

        ensure_assets(log=log)


def run_model_names(cfg: RunConfig) -> list[str | None]:
    """The model names a run config refers to (policy, reward, reference, value, the eval judge's)."""
    return [cfg.model.policy, cfg.model.reward, cfg.model.reference, cfg.model.value, cfg.eval_judge.model]


# ---------------------------------------------------------------------------------------------------
# Helpers shared by trainers
# ---------------------------------------------------------------------------------------------------


def filter_prompts_by_length(prompts: list[Prompt], tokenizer, max_length: int) -> list[Prompt]:
    """Drop prompts longer than `max_length` tokens under `tokenizer` (TaskConfig.max_prompt_length)."""
    if not prompts:
        return []
    lengths = [
        len(ids) for ids in tokenizer([p.text for p in prompts], add_special_tokens=False)["input_ids"]
    ]
    return [p for p, n in zip(prompts, lengths) if n <= max_length]
