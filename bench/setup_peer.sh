#!/usr/bin/env bash
# Create the peers' own virtual environments (kept out of the project's .venv so their pins never
# disturb it):  bench/setup_peer.sh trl | mlflow
#   trl:    bench/.venv-trl     torch 2.13.0 (the local CPU wheel through pip's find-links; on a GPU host
#                               the CUDA build already installed there), trl 0.24.0, transformers < 4.58
#   mlflow: bench/.venv-mlflow  mlflow (its tracking client and SQLAlchemy store)
# Idempotent: a venv whose marker file exists is left alone.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
which="${1:?usage: setup_peer.sh trl|mlflow}"
py="${PYTHON:-python3}"
case "$which" in
  trl)
    venv="$here/.venv-trl"
    [ -f "$venv/.ready" ] && exit 0
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "torch==${TORCH_VERSION:-2.13.0}"
    "$venv/bin/pip" install -q "trl==0.24.0" "transformers<4.58" ;;
  mlflow)
    venv="$here/.venv-mlflow"
    [ -f "$venv/.ready" ] && exit 0
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "mlflow${MLFLOW_SPEC:-}" ;;
  *) echo "unknown peer $which (trl | mlflow)" >&2; exit 2 ;;
esac
touch "$venv/.ready"
echo "$venv ready"
