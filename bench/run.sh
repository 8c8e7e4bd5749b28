#!/usr/bin/env bash
# One command per benchmark from a fresh clone:
#   bench/run.sh train_throughput [args]   (makes bench/.venv-trl on first use)
#   bench/run.sh metrics_store [args]      (makes bench/.venv-mlflow on first use)
#   bench/run.sh api_load [args]
# Creates the project's .venv (KLQ_VENV) and installs the project with its app extra into it when it is
# missing, as ./klq-lab does (the CPU build of torch 2.13.0 without nvidia-smi), then runs bench/<name>.py
# in it.
# The peers' venvs are made by the scripts themselves (bench/setup_peer.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
name="${1:?usage: bench/run.sh train_throughput|metrics_store|api_load|series_http [args]}"
shift
script="$root/bench/${name%.py}.py"
[ -f "$script" ] || { echo "no such benchmark: $script" >&2; exit 2; }
venv="${KLQ_VENV:-$root/.venv}"
if ! "$venv/bin/python" -c "import klq, backend, torch, uvicorn, httpx" >/dev/null 2>&1; then
    echo "bench/run.sh: setting up $venv (pip install -e '.[app]') ..." >&2
    [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
        if command -v nvidia-smi >/dev/null 2>&1; then
            "$venv/bin/python" -m pip install -q "torch>=2.4,<3"
        else
            "$venv/bin/python" -m pip install -q "torch==2.13.0"
        fi
    fi
    (cd "$root" && "$venv/bin/python" -m pip install -q -e ".[app]")
fi
cd "$root"
exec "$venv/bin/python" "$script" "$@"
