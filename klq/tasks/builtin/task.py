"""`BuiltinTask`: the built-in task as a `klq.tasks.Task` (prompts from its assets, the gold reward)."""

from __future__ import annotations

import json
from pathlib import Path

from klq.tasks.base import Prompt, Task, _check_split
from klq.tasks.builtin.gold import describe, gold_reward
from klq.tasks.model_names import builtin_assets_dir


class BuiltinTask(Task):
    """Built-in offline task: one-sentence food reviews with a known gold reward."""

    name = "builtin"
    default_models = {"policy": "builtin:sft", "reward": "builtin:reward"}

    def __init__(self, assets_dir: Path | str | None = None) -> None:
        self._dir = Path(assets_dir) if assets_dir is not None else None
        self._cache: dict[str, list[Prompt]] = {}

    @property
    def assets_dir(self) -> Path:
        return self._dir if self._dir is not None else builtin_assets_dir()

    def prompts(self, split: str) -> list[Prompt]:
        _check_split(split)
        if split not in self._cache:
            path = self.assets_dir / "prompts" / f"{split}.jsonl"
            if not path.is_file():
                raise FileNotFoundError(
                    f"built-in task prompts not found at {path}: run `klq build-assets` first "
                    "(or call klq.tasks.builtin.ensure_assets())"
                )
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self._cache[split] = [Prompt(str(r["id"]), r["prompt"]) for r in rows]
        return list(self._cache[split])

    def gold_reward(self, prompts: list[str], responses: list[str]) -> list[float]:
        return gold_reward(prompts, responses)

    def describe(self) -> str:
        return describe()
