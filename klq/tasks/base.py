"""What every task is: the `Task` base class, its `Prompt`s and its splits.

Pure Python (no torch, no datasets): `klq.tasks.builtin`, `klq.tasks.datasets` and the trainer build on it.
"""

from __future__ import annotations

from dataclasses import dataclass

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
