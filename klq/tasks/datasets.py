"""Real-data tasks: TL;DR summarisation, single-turn Anthropic-HH dialogue, and a generic prompt file.

`TaskConfig.dataset` names either an HF hub dataset (loaded with `datasets.load_dataset`; needs the
``datasets`` extra: ``pip install 'klq-lab[datasets]'``) or a local file or directory:

- a local ``.jsonl`` / ``.json`` / ``.parquet`` FILE holds every row; the last 5 % of its rows
  (at least one, and none taken away when the file has a single row) are the "eval" split and the rest
  the "train" split, in file order;
- a local DIRECTORY holds one file per split, named after the split with any of those extensions:
  ``{train_split}`` (else ``train``) for "train" and ``{eval_split}`` (else ``validation``, ``eval``,
  ``test``) for "eval"; without an eval file, eval is the last 5 % of the train file as above;
- anything else is an HF dataset id: "train" reads `TaskConfig.train_split`, "eval" reads
  `TaskConfig.eval_split` (falling back to ``test`` when the dataset has no ``validation`` split, as
  Anthropic/hh-rlhf does).

Prompt ids come from the row's ``id`` when it has one (made unique if the dataset repeats an id with
another text; exact duplicates are dropped), else ``"{split}-{index:06d}"`` with the row's index in its
file or hub split. These tasks have no ground truth: `gold_reward` returns None.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klq.tasks.base import Prompt, Task, _check_split

if TYPE_CHECKING:  # pragma: no cover
    from klq.config import TaskConfig

EVAL_FRACTION = 0.05
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
DEFAULT_DATASETS = {"tldr": "trl-lib/tldr", "hh": "Anthropic/hh-rlhf"}
TLDR_TEMPLATE = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
HH_TEMPLATE = "\n\nHuman: {question}\n\nAssistant:"
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


class DatasetError(ValueError):
    """A dataset that exists but cannot be used (wrong columns, unreadable file, unknown split...)."""


# ---------------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------------


def read_local_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json (a list of objects, or JSON lines) or .parquet file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pandas as pd

            frame = pd.read_parquet(path)
            return [_plain(row) for row in frame.to_dict(orient="records")]
        text = path.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError, ImportError) as err:
        raise DatasetError(f"could not read dataset file {str(path)!r}: {err}") from err
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DatasetError(f"dataset file {str(path)!r}: expected one JSON object per row")
    return rows


def _plain(value: Any) -> Any:
    """numpy arrays/scalars from parquet -> lists/python scalars (so message lists look like JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _looks_local(dataset: str) -> bool:
    return (
        dataset.lower().endswith(LOCAL_SUFFIXES)
        or dataset.startswith((".", "/", "~"))
        or "\\" in dataset
        or dataset.count("/") > 1
    )


def _split_file(rows: list[dict[str, Any]], split: str) -> list[tuple[int, dict[str, Any]]]:
    n = len(rows)
    n_eval = 0 if n < 2 else max(1, round(n * EVAL_FRACTION))
    indexed = list(enumerate(rows))
    if n < 2:
        return indexed  # a single row serves both splits
    return indexed[n - n_eval :] if split == "eval" else indexed[: n - n_eval]


def _find_split_file(directory: Path, names: Iterable[str]) -> Path | None:
    for name in dict.fromkeys(names):
        for suffix in LOCAL_SUFFIXES:
            candidate = directory / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def iter_rows(
    dataset: str, split: str, train_split: str, eval_split: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, row) pairs of a split ("train" or "eval") of a local file/directory or an HF dataset."""
    _check_split(split)
    path = Path(dataset).expanduser()
    if path.is_file():
        yield from _split_file(read_local_file(path), split)
        return
    if path.is_dir():
        train_file = _find_split_file(path, [train_split, "train"])
        eval_file = _find_split_file(path, [eval_split, "validation", "eval", "test"])
        if eval_file is not None and eval_file != train_file:
            if split == "eval":
                yield from enumerate(read_local_file(eval_file))
                return
            if train_file is not None:
                yield from enumerate(read_local_file(train_file))
                return
        if train_file is None:
            raise FileNotFoundError(
                f"dataset directory {str(path)!r} has no {train_split!r} (or 'train') file "
                f"with a suffix among {', '.join(LOCAL_SUFFIXES)}"
            )
        yield from _split_file(read_local_file(train_file), split)
        return
    if _looks_local(dataset):
        raise FileNotFoundError(f"dataset file {dataset!r} not found")
    names = [train_split] if split == "train" else list(dict.fromkeys([eval_split, "validation", "test"]))
    yield from enumerate(_load_hub(dataset, names))


def _load_hub(dataset: str, splits: list[str]) -> Iterable[dict[str, Any]]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"loading the HF dataset {dataset!r} needs the `datasets` package: "
            "pip install 'klq-lab[datasets]' (or give a local .jsonl/.parquet file instead)"
        ) from err
    first_error: Exception | None = None
    for name in splits:
        try:
            return datasets.load_dataset(dataset, split=name)
        except Exception as err:  # any loader failure is reported with the dataset's name
            first_error = first_error or err
            if "split" not in str(err).lower():
                break  # not a missing split: no point trying the fallbacks
    raise DatasetError(
        f"could not load HF dataset {dataset!r} (split {splits[0]!r}): {first_error}"
    ) from first_error


# ---------------------------------------------------------------------------------------------------
# Formatting prompts
# ---------------------------------------------------------------------------------------------------


def format_tldr(row: dict[str, Any]) -> str | None:
    """The TL;DR prompt of a row: its `prompt` as is, else the N+ implementation-details format built
    from subreddit/title/post (also looked up under a nested `info` dict)."""
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return prompt
    fields = row if "post" in row else row.get("info") if isinstance(row.get("info"), dict) else None
    if fields is None or not isinstance(fields.get("post"), str):
        return None
    return TLDR_TEMPLATE.format(
        subreddit=str(fields.get("subreddit") or "").strip(),
        title=str(fields.get("title") or "").strip(),
        post=fields["post"].strip(),
    )


def _single_user_turn(messages: list[Any]) -> str | None:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") in ("user", "human")]
    if len(users) != 1 or not isinstance(users[0].get("content"), str):
        return None
    return users[0]["content"].strip() or None


def hh_question(transcript: Any) -> str | None:
    """The human's question of a single-turn HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ..."), or
    of a list of chat messages with exactly one user message; None when there is more than one turn."""
    if isinstance(transcript, list):
        return _single_user_turn(transcript)
    if not isinstance(transcript, str):
        return None
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript.lstrip()
    if text.count(HUMAN) != 1:
        return None
    body = text.split(HUMAN, 1)[1]
    question = body.split(ASSISTANT, 1)[0].strip()
    return question or None


def format_hh(row: dict[str, Any]) -> str | None:
    source = row["prompt"] if "prompt" in row else row.get("chosen")
    question = hh_question(source)
    return HH_TEMPLATE.format(question=question) if question is not None else None


def format_prompt(row: dict[str, Any]) -> str | None:
    prompt = row.get("prompt")
    return prompt if isinstance(prompt, str) and prompt else None


# Columns each task needs, for error messages; and whether a row that cannot be formatted is skipped
# (HH: multi-turn rows are expected and skipped) or is an error (a wrong schema).
_FORMATS = {
    "tldr": (format_tldr, "'prompt', or 'subreddit', 'title' and 'post'", False),
    "hh": (format_hh, "'chosen' or 'prompt' (an HH transcript)", True),
    "prompts": (format_prompt, "'prompt' (a non-empty string)", False),
}


# ---------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------


class DatasetTask(Task):
    """Prompts from a real dataset (TL;DR, HH, or a generic prompt file); no gold reward."""

    def __init__(
        self, name: str, dataset: str, train_split: str = "train", eval_split: str = "validation"
    ) -> None:
        if name not in _FORMATS:
            raise ValueError(f"unknown dataset task {name!r}: expected one of {', '.join(_FORMATS)}")
        self.name = name
        self.dataset = dataset
        self.train_split = train_split
        self.eval_split = eval_split
        self.default_models = dict(DEFAULT_MODELS.get(name, {}))
        self._cache: dict[str, list[Prompt]] = {}

    def prompts(self, split: str) -> list[Prompt]:
        _check_split(split)
        if split not in self._cache:
            self._cache[split] = self._load(split)
        return list(self._cache[split])

    def _load(self, split: str) -> list[Prompt]:
        fmt, needed, skip_bad = _FORMATS[self.name]
        out: list[Prompt] = []
        seen: dict[str, str] = {}
        for index, row in iter_rows(self.dataset, split, self.train_split, self.eval_split):
            text = fmt(row)
            if text is None:
                if skip_bad and any(k in row for k in ("chosen", "prompt")):
                    continue
                raise DatasetError(
                    f"dataset {self.dataset!r} ({split} row {index}) cannot be used for task "
                    f"{self.name!r}: it needs {needed}; the row has {sorted(row)}"
                )
            raw_id = row.get("id")
            pid = str(raw_id) if raw_id is not None and str(raw_id) != "" else f"{split}-{index:06d}"
            if pid in seen:
                if seen[pid] == text:
                    continue  # exact duplicate
                pid = f"{pid}-{index}"
            seen[pid] = text
            out.append(Prompt(pid, text))
        if not out:
            raise DatasetError(
                f"dataset {self.dataset!r} has no usable {split} prompts for task {self.name!r}"
            )
        return out

    def describe(self) -> str:
        what = {
            "tldr": "Reddit TL;DR summarisation (prompts end with 'TL;DR:')",
            "hh": "single-turn Anthropic-HH dialogue (prompts end with 'Assistant:')",
            "prompts": "prompts from a file",
        }[self.name]
        return f"{what}, from {self.dataset}; no gold reward (judge with an LLM)."

    def __repr__(self) -> str:
        return f"DatasetTask(name={self.name!r}, dataset={self.dataset!r})"


# Suggested models (the N+ implementation-details / TRL PPO TL;DR checkpoints).
DEFAULT_MODELS: dict[str, dict[str, str]] = {
    "tldr": {
        "policy": "cleanrl/EleutherAI_pythia-1b-deduped__sft__tldr",
        "reward": "cleanrl/EleutherAI_pythia-1b-deduped__reward__tldr",
    },
}


def make_dataset_task(cfg: TaskConfig) -> DatasetTask:
    dataset = cfg.dataset or DEFAULT_DATASETS.get(cfg.name)
    if not dataset:
        raise ValueError(
            f"task {cfg.name!r} needs task.dataset (an HF dataset id or a local .jsonl/.parquet)"
        )
    return DatasetTask(cfg.name, dataset, train_split=cfg.train_split, eval_split=cfg.eval_split)


__all__ = [
    "DEFAULT_DATASETS",
    "DatasetError",
    "DatasetTask",
    "format_hh",
    "format_tldr",
    "hh_question",
    "iter_rows",
    "make_dataset_task",
    "read_local_file",
]
