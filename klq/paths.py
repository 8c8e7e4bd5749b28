"""Where KLQ Lab keeps its files when nothing else is configured."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The data directory: $KLQ_DATA_DIR, else ./.klq-data (SQLite database, broker folders, runs, assets)."""
    return Path(os.environ.get("KLQ_DATA_DIR") or Path.cwd() / ".klq-data").resolve()


def assets_dir() -> Path:
    """Built-in task assets (tokenizer, SFT policy, reward model, prompts) in HF layout."""
    return data_dir() / "assets"
