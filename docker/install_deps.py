"""Install KLQ Lab's dependencies (and the given extras) from pyproject.toml, without the project itself,
so that the image's dependency layer is rebuilt only when pyproject.toml changes.

    python docker/install_deps.py pyproject.toml datasets,ops
"""

from __future__ import annotations

import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extras {unknown}; pyproject.toml has {sorted(optional)}")
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += [r for r in optional[extra] if not r.startswith(project["name"] + "[")]
    return reqs


def main(argv: list[str]) -> int:
    pyproject = argv[0] if argv else "pyproject.toml"
    extras = [e for e in (argv[1] if len(argv) > 1 else "").split(",") if e]
    reqs = requirements(pyproject, extras)
    return subprocess.call([sys.executable, "-m", "pip", "install", *reqs])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
