"""Checks on user input beyond the pydantic models: where models and datasets may come from, and values
that the JSON/SQL layers cannot store. Pure functions (no FastAPI), each problem as (field, message).

Model references in a run config (``model.policy``, ``model.reference``, ``model.reward``,
``model.value``) may be:

* ``builtin:<name>``, the built-in task's assets;
* an absolute local path that, with symlinks resolved, lies inside one of ``KLQ_MODEL_ROOTS``;
* a Hugging Face hub id (``org/name``), only if the operator sets ``KLQ_ALLOW_HUB_MODELS=true``.

Relative paths, ``..`` segments, URLs and control characters are refused. ``task.dataset`` follows the
same rules with ``KLQ_DATASET_ROOTS`` and ``KLQ_ALLOW_HUB_DATASETS``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from klq.config import RunConfig

from .settings import Settings

MODEL_FIELDS = ("policy", "reference", "reward", "value")
MAX_JSON_INT = 2**53 - 1  # what JSON clients (JavaScript) can represent exactly

_BUILTIN = re.compile(r"^builtin:[a-z0-9][a-z0-9_-]{0,63}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored as text (NUL bytes, unpaired surrogates), or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no unpaired surrogates)"
    return None


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def reference_problem(
    value: str, *, roots: Sequence[Path], allow_hub: bool, kind: str, hub_setting: str
) -> str | None:
    """Why ``value`` is not an acceptable model/dataset reference on this server, or None."""
    if value.startswith("builtin:"):
        return None if _BUILTIN.match(value) else f"{value!r} is not a valid builtin name (builtin:<name>)"
    if any(ord(c) < 32 for c in value) or text_problem(value):
        return "must not contain control characters"
    if "://" in value:
        return "URLs are not allowed; use a local path under the allowed roots" + (
            " or a hub id" if allow_hub else ""
        )
    roots_text = ", ".join(str(r) for r in roots) or "(none configured)"
    looks_like_path = value.startswith(("/", "~", ".", "\\")) or "\\" in value or value.count("/") > 1
    if not looks_like_path and _HUB_ID.match(value) and ".." not in value:
        if allow_hub:
            return None
        return (
            f"Hugging Face hub ids are not allowed on this server ({hub_setting}=false); "
            f"use builtin:<name> or an absolute path under the {kind} roots: {roots_text}"
        )
    if ".." in Path(value).parts or ".." in value.replace("\\", "/").split("/"):
        return f"path traversal ('..') is not allowed in {kind} paths"
    expanded = os.path.expanduser(value)
    if not os.path.isabs(expanded):
        return f"relative paths are not allowed; give an absolute path under the {kind} roots: {roots_text}"
    resolved = Path(os.path.realpath(expanded))
    if not _inside(resolved, roots):
        return f"{value} is outside the allowed {kind} roots ({roots_text})"
    return None


def _walk(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*path, k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _walk(v, (*path, i))
    else:
        yield path, value


def value_problems(data: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """Values that JSON or SQL cannot hold: NaN/inf floats, integers beyond 2**53, bad text."""
    problems = []
    for loc, value in _walk(data, prefix):
        if isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append((loc, "must be a finite number"))
        elif isinstance(value, int) and abs(value) > MAX_JSON_INT:
            problems.append((loc, f"must be at most {MAX_JSON_INT} in absolute value"))
        elif isinstance(value, str) and (msg := text_problem(value)):
            problems.append((loc, msg))
    return problems


def config_problems(cfg: RunConfig, settings: Settings) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems with a validated RunConfig on this server, as (location inside the config, message)."""
    problems = value_problems(cfg.model_dump())
    models = [(("model", name), getattr(cfg.model, name)) for name in MODEL_FIELDS]
    if cfg.eval_judge.backend in ("local_hf", "reward_model"):  # a model the worker loads, as the run's own
        models.append((("eval_judge", "model"), cfg.eval_judge.model))
    for loc, ref in models:
        if ref is None:
            continue
        msg = reference_problem(
            ref,
            roots=settings.model_roots,
            allow_hub=settings.allow_hub_models,
            kind="model",
            hub_setting="KLQ_ALLOW_HUB_MODELS",
        )
        if msg:
            problems.append((loc, msg))
    if cfg.task.dataset is not None:
        msg = reference_problem(
            cfg.task.dataset,
            roots=settings.dataset_roots,
            allow_hub=settings.allow_hub_datasets,
            kind="dataset",
            hub_setting="KLQ_ALLOW_HUB_DATASETS",
        )
        if msg:
            problems.append((("task", "dataset"), msg))
    return problems
