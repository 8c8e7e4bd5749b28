"""The packages' dependency direction (docs/ARCHITECTURE.md): klqlab -> worker -> backend -> klq, frontend
on the client side of klq only. The contracts are import-linter's, in pyproject.toml ([tool.importlinter]);
`lint-imports` checks them statically (nothing is imported), here in a process of its own. And the library
installs without the app extra: klq imports, and `klq train` / `klq judge` run, with the app's packages
blocked, while the service commands then say in one line what to install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

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
        ("klq/client/runs.py", "import psutil", "klq is not allowed to import psutil"),
        ("klq/judge/stats/winrate.py", "import tsdownsample", "klq is not allowed to import tsdownsample"),
        (
            "backend/dispatch.py",
            "from worker.celery_app import app",
            "backend is not allowed to import worker",
        ),
        ("backend/store/runs.py", "import klqlab.up", "backend is not allowed to import klqlab"),
        ("worker/runner.py", "import frontend.client", "worker is not allowed to import frontend"),
        ("frontend/logic/runs.py", "from backend import store", "frontend is not allowed to import backend"),
        ("frontend/logic/configs.py", "import klq.trainer", "frontend is not allowed to import klq.trainer"),
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


# --- the library without the app extra ------------------------------------------------------------------

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
APP_CONTRACT = "klq installs without the app extra"


def import_name(requirement: str) -> str:
    """The module a requirement installs, for ours: 'uvicorn[standard]>=0.30' -> 'uvicorn',
    'prometheus-client>=0.20' -> 'prometheus_client'."""
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("-", "_")


def app_extra_modules() -> set[str]:
    return {import_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["app"]}


def app_contract_modules() -> list[str]:
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["name"].startswith(APP_CONTRACT)]
    assert contract["source_modules"] == ["klq"] and contract["type"] == "forbidden", contract
    return contract["forbidden_modules"]


def test_the_app_extra_the_contract_and_the_service_commands_agree() -> None:
    """What `pip install 'klq-lab[app]'` adds is what klq may not import and what the service commands
    look for; the library's own dependencies are none of it."""
    from klqlab.cli import APP_MODULES

    assert set(APP_MODULES) == app_extra_modules()
    assert app_extra_modules() <= set(app_contract_modules())
    base = {import_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not base & set(app_contract_modules()), base


def without_the_app(code: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python where none of the packages of the app contract can be imported, as after
    `pip install klq-lab` alone: each is None in sys.modules, so `import` fails as for a package not
    installed and importlib.util.find_spec finds nothing."""
    block = f"import sys\nsys.modules.update(dict.fromkeys({app_contract_modules()!r}))\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", block + code, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


KLQ_MAIN = "from klqlab.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def test_every_klq_module_imports_without_the_app() -> None:
    code = "import pkgutil, importlib, klq\n"
    code += "for m in pkgutil.walk_packages(klq.__path__, 'klq.'):\n    importlib.import_module(m.name)\n"
    code += "import klqlab.cli\nprint('imported')\n"
    done = without_the_app(code)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr


@pytest.mark.parametrize("command", ["up", "api", "worker", "ui", "migrate"])
def test_a_service_command_without_the_app_says_what_to_install(command: str) -> None:
    assert without_the_app(KLQ_MAIN, command, "--help").returncode == 0  # every sub-command is still offered
    done = without_the_app(KLQ_MAIN, command)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr  # one line, no traceback
    assert done.stderr.startswith(f"klq {command}: needs KLQ Lab's app packages") and "fastapi" in done.stderr
    assert done.stderr.strip().endswith("pip install 'klq-lab[app]'"), done.stderr


@pytest.mark.slow
def test_the_library_commands_run_without_the_app(builtin_data_dir: Path, tmp_path: Path) -> None:
    """`klq train` and `klq judge` on the built-in task (one iteration) with the app's packages absent."""
    run_dir = tmp_path / "run"
    train = without_the_app(KLQ_MAIN, "train", str(REPO / "configs" / "builtin-klq.yaml"), "--out", str(run_dir),
                            "--set", "train.total_episodes=64", "--set", "checkpoint_interval=1",
                            "--set", "eval_interval=1", cwd=tmp_path)  # fmt: skip
    assert train.returncode == 0, train.stdout + train.stderr
    judge = without_the_app(KLQ_MAIN, "judge", "--a", str(run_dir), "--b", "reference", "--task", "builtin",
                            "--n", "4", "--judge", "gold", cwd=tmp_path)  # fmt: skip
    assert judge.returncode == 0, judge.stdout + judge.stderr
    assert "win-rate A" in judge.stdout, judge.stdout


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
