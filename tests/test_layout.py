"""The packages' dependency direction (docs/ARCHITECTURE.md): klqlab -> worker -> backend -> klq, frontend
on the client side of klq only. The contracts are import-linter's, in pyproject.toml ([tool.importlinter]);
`lint-imports` checks them statically (nothing is imported), here in a process of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the test extras: pip install -e '.[test]'")

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("klq", "backend", "worker", "frontend", "klqlab")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the packages and pyproject.toml under ``root``: run with ``root`` as the working
    directory and first on the path, so that it reads that tree, not an installed copy."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    code = "import sys\nfrom importlinter.cli import lint_imports_command\nsys.argv[1:] = ['--no-cache', '--no-logo']\n"
    code += "lint_imports_command()\n"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_every_import_follows_the_dependency_direction() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """The packages' sources and pyproject.toml, copied: a wrong-way import is added to a copy."""
    root = tmp_path_factory.mktemp("layout")
    for name in PACKAGES:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize(
    ("module", "line", "complaint"),
    [
        ("klq/paths.py", "import backend.settings", "klq is not allowed to import backend"),
        ("klq/trainer.py", "from worker import tasks", "klq is not allowed to import worker"),
        ("klq/config.py", "import frontend.logic", "klq is not allowed to import frontend"),
        ("klq/rollout.py", "import sqlalchemy", "klq is not allowed to import sqlalchemy"),
        (
            "backend/dispatch.py",
            "from worker.celery_app import app",
            "backend is not allowed to import worker",
        ),
        ("backend/store.py", "import klqlab.up", "backend is not allowed to import klqlab"),
        ("worker/runner.py", "import frontend.client", "worker is not allowed to import frontend"),
        ("frontend/logic.py", "from backend import store", "frontend is not allowed to import backend"),
        ("frontend/logic.py", "import klq.trainer", "frontend is not allowed to import klq.trainer"),
        ("frontend/views/runs.py", "from worker import tasks", "frontend is not allowed to import worker"),
    ],
)
def test_a_wrong_way_import_breaks_the_lint(tree_copy: Path, module: str, line: str, complaint: str) -> None:
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # the wrong way\n")
    try:
        result = lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and complaint in result.stdout, result.stdout


def test_every_klq_help_renders() -> None:
    """argparse formats help lazily: a stray '%' in any sub-command's help only fails at `klq --help`."""
    import subprocess
    import sys

    for args in ([], ["train"], ["judge"], ["up"], ["worker"]):
        done = subprocess.run([sys.executable, "-m", "klqlab.cli", *args, "--help"], capture_output=True, text=True)
        assert done.returncode == 0, (args, done.stderr)


# The one loop left open: klq.config checks `algorithm` and each algorithm's section against the registry of
# klq.algorithms (imported lazily, when a config is validated), and the algorithms import their parameter
# models from klq.config.
ALLOWED_LOOPS = [{"klq.config", "klq.algorithms"}]


def import_loops(package: str) -> list[set[str]]:
    """The import loops among ``package``'s modules, each as the set of modules that import one another
    (directly or through others), from grimp's import graph (import-linter's, built statically: nothing is
    imported). An import inside a function counts (it runs when the function does); one under
    ``if TYPE_CHECKING:`` does not (it never runs)."""
    import grimp

    graph = grimp.build_graph(package, exclude_type_checking_imports=True, cache_dir=None)
    loops: list[set[str]] = []
    for module in sorted(graph.modules):
        loop = graph.find_upstream_modules(module) & graph.find_downstream_modules(module)
        if loop and module not in set().union(*loops):
            loops.append(loop | {module})
    return loops


def test_klq_has_no_import_loops() -> None:
    """No module of klq imports, directly or through others, a module that imports it."""
    import klq

    assert Path(klq.__file__).resolve().parent == REPO / "klq", "grimp must read this tree's klq"
    loops = [sorted(loop) for loop in import_loops("klq") if loop not in ALLOWED_LOOPS]
    assert not loops, f"import loops in klq: {loops}"
