"""Shared fixtures.

`builtin_assets` provides the built-in task's assets (tokenizer, SFT policy, reward model, prompts;
about a minute on CPU to build) once per test session, and points $KLQ_DATA_DIR at a per-session data
directory whose ``assets/builtin`` holds them, for the whole session: `builtin:sft` / `builtin:reward`
resolve and `klq.tasks.builtin_assets_dir()` is the returned path (restored at the end of the session).

The build itself goes under the pytest cache (``.pytest_cache/d/klq-builtin-assets/<key>``), keyed by
the builder's source, VERSION and the torch/transformers versions, so a later session with the same
code reuses it; the session's data directory links to it. Set KLQ_TEST_FRESH_ASSETS=1 (or run with
``-p no:cacheprovider``) to build into the session's temporary data directory instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _assets_key() -> str:
    import torch
    import transformers

    from klq.judge import templates
    from klq.tasks import builtin

    digest = hashlib.sha256()
    for source in sorted(Path(builtin.__file__).parent.glob("*.py")):  # the builder's package, module by module
        digest.update(source.read_bytes())
    digest.update(Path(templates.__file__).read_bytes())  # the built-in judge is trained on a template
    digest.update(f"{torch.__version__}|{transformers.__version__}".encode())
    return f"v{builtin.VERSION}-{digest.hexdigest()[:16]}"


@pytest.fixture(scope="session")
def builtin_assets(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """``<session data dir>/assets/builtin``, with $KLQ_DATA_DIR set to that data dir for the session."""
    from klq.tasks import builtin

    data_root = tmp_path_factory.mktemp("klq-data")
    target = data_root / "assets" / "builtin"
    cache = getattr(request.config, "cache", None)
    if cache is None or os.environ.get("KLQ_TEST_FRESH_ASSETS"):
        builtin.ensure_assets(target, log=lambda _msg: None)
    else:
        base = Path(cache.mkdir("klq-builtin-assets"))
        key = _assets_key()
        for stale in base.iterdir():  # assets of older builder versions, unused for a day
            if stale.is_dir() and stale.name != key and time.time() - stale.stat().st_mtime > 86400:
                shutil.rmtree(stale, ignore_errors=True)
        built = builtin.ensure_assets(base / key / "builtin", log=lambda _msg: None)
        target.parent.mkdir(parents=True)
        try:
            target.symlink_to(built, target_is_directory=True)
        except OSError:  # no symlinks here: copy (a few hundred kB)
            shutil.copytree(built, target)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KLQ_DATA_DIR", str(data_root))
        yield target


@pytest.fixture
def builtin_data_dir(builtin_assets: Path) -> Path:
    """The data directory ($KLQ_DATA_DIR) that holds `builtin_assets`."""
    return builtin_assets.parent.parent
