"""Model names: ``builtin:*`` names the built-in task's assets, anything else goes to `from_pretrained`.

`klq.models` resolves every model name here; this module imports nothing of the tasks themselves.
"""

from __future__ import annotations

from pathlib import Path

from klq.paths import assets_dir

BUILTIN_MODELS = {"sft": "sft", "reward": "reward", "judge": "judge", "tokenizer": "tokenizer"}
BUILTIN_PREFIX = "builtin:"


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
