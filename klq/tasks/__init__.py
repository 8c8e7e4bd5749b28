"""Tasks: where prompts come from, and (when there is one) the ground-truth reward.

A task gives the trainer its prompts (`prompts("train")`, `prompts("eval")`), optionally a gold reward
on decoded text (`gold_reward`, None when the task has no ground truth), and the models it suggests
(`default_models`). Four tasks exist (see `klq.config.TaskConfig`):

- ``builtin``: the offline synthetic food-review domain of `klq.tasks.builtin` (no network, gold reward);
- ``tldr``, ``hh``, ``prompts``: real data from an HF dataset id or a local file (`klq.tasks.datasets`).

Importing this package is cheap: torch, transformers and datasets are imported only where needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from klq.paths import assets_dir

if TYPE_CHECKING:  # pragma: no cover
    from klq.config import RunConfig, TaskConfig

__all__ = [
    "BUILTIN_MODELS",
    "Prompt",
    "Task",
    "builtin_assets_dir",
    "ensure_builtin_assets_if_used",
    "filter_prompts_by_length",
    "load_task",
    "run_model_names",
    "resolve_model_path",
]

SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Prompt:
    id: str  # stable id ("train-000123" or the dataset's own id)
    text: str  # the formatted prompt text exactly as the policy sees it


class Task:
    """Base class of a task. Subclasses set `name` and `default_models` and implement `prompts`."""

    name: str = "task"
    default_models: dict[str, str] = {}  # read-only class default; tasks set their own

    def prompts(self, split: str) -> list[Prompt]:
        """The prompts of `split` ("train" or "eval"), in a deterministic order."""
        raise NotImplementedError

    def gold_reward(self, prompts: list[str], responses: list[str]) -> list[float] | None:
        """Ground-truth reward of each (prompt text, decoded response text); None if the task has none."""
        return None

    def describe(self) -> str:
        """A short paragraph for users about the task."""
        return self.__doc__.strip().splitlines()[0] if self.__doc__ else self.name

    @property
    def has_gold_reward(self) -> bool:
        return type(self).gold_reward is not Task.gold_reward

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


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

BUILTIN_MODELS = {"sft": "sft", "reward": "reward", "judge": "judge", "tokenizer": "tokenizer"}
BUILTIN_PREFIX = "builtin:"


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
    """The model names a run config refers to (policy, reward, reference, value)."""
    return [cfg.model.policy, cfg.model.reward, cfg.model.reference, cfg.model.value]


def builtin_assets_dir() -> Path:
    """Where the built-in task's assets live: `klq.paths.assets_dir()/builtin` (honours $KLQ_DATA_DIR)."""
    return assets_dir() / "builtin"


def resolve_model_path(name: str) -> str:
    """`builtin:sft` / `builtin:reward` / `builtin:judge` / `builtin:tokenizer` -> an absolute directory of the
    built-in assets (`builtin:judge` is a causal LM for `klq judge --judge local_hf`, with its own tokenizer).

    Raises FileNotFoundError (telling the user to run `klq build-assets`) when those assets are missing.
    Any other string (an HF hub id or a local directory) is returned unchanged for `from_pretrained`.
    """
    if not name.startswith(BUILTIN_PREFIX):
        return name
    key = name[len(BUILTIN_PREFIX) :]
    if key not in BUILTIN_MODELS:
        raise ValueError(
            f"unknown built-in model {name!r}: expected one of "
            + ", ".join(BUILTIN_PREFIX + k for k in BUILTIN_MODELS)
        )
    path = builtin_assets_dir() / BUILTIN_MODELS[key]
    marker = "tokenizer_config.json" if key == "tokenizer" else "config.json"
    if not (path / marker).is_file():
        raise FileNotFoundError(
            f"built-in model {name!r} not found at {path}: run `klq build-assets` first "
            "(or call klq.tasks.builtin.ensure_assets()); it builds the offline task's tokenizer, SFT policy, "
            "reward model and judge in about a minute on CPU"
        )
    return str(path.resolve())


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
