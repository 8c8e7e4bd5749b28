"""Write docs/CONFIGURATION.md: the server settings (``KLQ_*``, from backend.settings.Settings) and the run
configuration (from klq.config.RunConfig), generated from the code so that the two cannot drift apart.

    python docs/gen_config_reference.py           # rewrite docs/CONFIGURATION.md
    python docs/gen_config_reference.py --check   # exit 1 if the committed file is out of date

tests/test_deploy.py runs the check.
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "CONFIGURATION.md"

# Defaults that depend on the machine or on other settings, as words.
SETTING_DEFAULTS = {
    "data_dir": "`./.klq-data` (in the working directory)",
    "model_roots": "`<data_dir>/models`, `<data_dir>/runs`",
    "dataset_roots": "`<data_dir>/datasets` and the model roots",
    "token_file": "`<data_dir>/api_token`",
    "database_url": "SQLite at `<data_dir>/klq.db`",
    "broker_url": "filesystem broker under `<data_dir>/broker`",
}

# What fields without a description in the code mean, by setting name or dotted run-config field (the
# code's description wins when it has one).
DESCRIPTIONS = {
    "default_queue": "queue of runs and judgements that name none (`gpu` or `cpu`)",
    "auth_required_for_reads": "false: reads (GET) need no token; writes always do",
    "print_initial_token": "print the first admin token to the log when the API creates it",
    "sqlite_busy_timeout_ms": "how long a SQLite writer waits for the lock (milliseconds)",
    "sse_ping_interval": "seconds between keep-alive pings of a live stream",
    "cors_origins": "browser origins allowed to call the API (the dashboard does not need this)",
    "judge_model": "model name for judgements with the `openai` backend that name none",
    "judge_timeout": "seconds per judge request",
    "judge_max_retries": "retries of a failed judge request (429/5xx, with backoff)",
    "name": "display name (default: the config file's stem for `klq train`, `<algorithm>-<time>` on the server)",
    "task.name": "which task: the offline built-in one, TL;DR, Anthropic HH, or a prompts file",
    "gamma": "discount",
    "seed": "seeds sampling, data order and initialisation",
    "model.policy": "the SFT policy, which also initialises the trained one",
    "model.reward": "sequence-classification model with a scalar `score` head",
    "model.gradient_checkpointing": "trade compute for memory in policy and value forward passes",
    "rollout.response_length": "tokens generated per response",
    "rollout.temperature": "sampling temperature of rollouts",
    "train.total_episodes": "rollouts in the whole run (iterations = total_episodes / batch_size)",
    "train.num_epochs": "passes over each batch of rollouts",
    "train.learning_rate": "policy learning rate (AdamW)",
    "train.lr_scheduler": "learning-rate schedule over the run",
    "train.max_grad_norm": "gradient clipping (None: off)",
    "klq.loss": "Q-regression loss",
    "ppo.cliprange": "PPO's policy-ratio clip",
    "ppo.cliprange_value": "PPO's value clip",
    "ppo.vf_coef": "weight of the value loss",
    "ppo.whiten_advantages": "normalise advantages over the batch",
    "task.train_split": "split the training prompts come from",
    "task.eval_split": "split the held-out eval prompts come from",
}

# Environment variables that are not Settings fields.
OTHER_ENV = [
    ("KLQ_WORKER_GPUS", "`klq worker`",
     "GPUs the worker hands out, e.g. `0,1` (one run per GPU; a run with `num_gpus: 2` takes two and runs "
     "under `accelerate launch`); empty: none (a CPU worker); unset: every GPU `nvidia-smi` lists"),
    ("KLQ_API_URL", "`klq.client`, `klq ui`", "the API's base URL (default `http://127.0.0.1:8000`)"),
    ("KLQ_API_TOKEN", "`klq.client`, `klq ui`",
     "API token; default: the file `<KLQ_DATA_DIR>/api_token` the API writes at its first start"),
    ("KLQ_PLUGINS", "API, workers, `klq` CLI",
     "comma-separated Python modules imported at start whose `@register`ed algorithms join the registry "
     "(`klq/algorithms.py`); set it alike for the API and every worker"),
    ("HF_HOME", "transformers, datasets", "Hugging Face cache (models and datasets from the hub)"),
]


def type_name(annotation: Any) -> str:
    """A short, readable name of a field's type: ``int``, ``float | None``, ``klq | ppo``, ``list[str]``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin in (list, tuple, set, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " \\| ".join(str(m.value) for m in annotation)
        if issubclass(annotation, Path):
            return "path"
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "*(required)*"
    else:
        value = info.default
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value) if value else "—"
    if isinstance(value, dict):
        return f"`{value}`" if value else "—"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def constraints(info: FieldInfo) -> str:
    parts = []
    for meta in info.metadata:
        for attr, symbol in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"), ("max_length", "length ≤")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value:g}" if isinstance(value, float) else f"{symbol} {value}")
    return ", ".join(parts)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def meaning(name: str, info: FieldInfo, prefix: str = "") -> str:
    limits = constraints(info)
    text = cell(info.description or DESCRIPTIONS.get(prefix + name, ""))
    return f"{text} ({limits})".strip() if limits else text


def settings_table() -> list[str]:
    from backend.settings import Settings

    lines = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        default = SETTING_DEFAULTS.get(name) or default_text(info)
        lines.append(f"| `KLQ_{name.upper()}` | {type_name(info.annotation)} | {default} | {meaning(name, info)} |")
    return lines


def run_config_rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    from klq.config import _RegisteredAlgorithm, algorithm_names

    rows = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue  # sections are listed after the top-level fields
        if _RegisteredAlgorithm in info.metadata:  # a registered algorithm's name
            kind = " \\| ".join(algorithm_names())
        else:
            kind = type_name(annotation)
        rows.append(f"| `{prefix}{name}` | {kind} | {default_text(info)} | {meaning(name, info, prefix)} |")
    return rows


def algorithm_text() -> str:
    """The `algorithm` field's meaning: the registered algorithms, each with its docstring's first line."""
    from klq.algorithms import ALGORITHMS

    doc = {name: (cls.__doc__ or "").strip().splitlines()[0].rstrip(".") for name, cls in ALGORITHMS.items()}
    return "one of the registered algorithms (`klq/algorithms.py`, plugins via `KLQ_PLUGINS`): " + "; ".join(
        f"`{name}`: {text}" for name, text in doc.items()
    )


def run_config_tables() -> list[str]:
    from klq.algorithms import ALGORITHMS
    from klq.config import RunConfig

    DESCRIPTIONS["algorithm"] = algorithm_text()
    header = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines = ["### Top level", "", *header, *run_config_rows(RunConfig)]
    sections = [(name, info.annotation, "") for name, info in RunConfig.model_fields.items()]
    sections += [  # the registered algorithms' parameter groups
        (name, cls.params, f"Parameters of `algorithm: {name}` ({cls.label}); the other algorithms ignore them.")
        for name, cls in ALGORITHMS.items()
        if cls.params is not None
    ]
    for name, section, intro in sections:
        if isinstance(section, type) and issubclass(section, BaseModel):
            doc = " ".join((section.__doc__ or "").split())
            lines += ["", f"### `{name}`", ""]
            if intro:
                lines += [intro, ""]
            if doc and "Usage docs:" not in doc:
                lines += [doc, ""]
            lines += [*header, *run_config_rows(section, f"{name}.")]
    return lines


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by docs/gen_config_reference.py from backend/settings.py and klq/config.py;",
        "     do not edit by hand: run `python docs/gen_config_reference.py`. -->",
        "",
        "## Server settings (environment)",
        "",
        "Every process of KLQ Lab (API, workers, `klq migrate`, `klq up`) reads these from its environment",
        "(`backend.settings.Settings`, pydantic-settings). List values take a JSON list or a `:`/`,` separated",
        "string. With docker-compose they come from `.env` (see `.env.example`).",
        "",
        *settings_table(),
        "",
        "Other environment variables:",
        "",
        "| variable | read by | meaning |",
        "| --- | --- | --- |",
        *[f"| `{name}` | {who} | {cell(meaning)} |" for name, who, meaning in OTHER_ENV],
        "",
        "## Run configuration",
        "",
        "A run is one `RunConfig` (`klq/config.py`): what `klq train` reads from YAML/JSON, what `POST",
        "/api/v1/runs` takes as `config`, and what the dashboard's launch form edits. Unknown fields are",
        "rejected; errors name the dotted field. Defaults are the KLQ paper's and TRL's PPOTrainer's.",
        "Override any field on the command line with `--set section.field=value`.",
        "",
        *run_config_tables(),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python docs/gen_config_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
