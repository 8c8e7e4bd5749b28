#!/usr/bin/env bash
# Download the wheels that bench/gpu_check.sh installs on the device machine (one NVIDIA GPU, Python 3.12,
# no network) into bench/gpu_wheels/ (git-ignored; carried with the call: carry=["bench/gpu_wheels"]).
#
#   bench/gpu_wheels.sh            # here, where pip reaches PyPI; ~40 MB, under the 64 MiB a call carries
#
# What the device image already has (its CUDA build of torch 2.11, numpy, scipy, pandas, pyyaml, tqdm,
# httpx, safetensors, pytest, pytest-timeout, ...) is not carried. What is:
#   klq/  the packages of [project.dependencies] that the image lacks (pydantic and its three helpers) or
#         has at another version than the one this project is tested with: transformers (the image's 5.17
#         has no `cache` output/argument, which klq.rollout uses), tokenizers, huggingface-hub, accelerate,
#         and what those need beyond the image (regex's version, httpx2).
#         Versions: those of the project's venv here (.venv, or $KLQ_VENV), so the GPU runs the same library
#         code as the CPU tests.
#   trl/  the TRL side of bench/train_throughput.py: trl 0.24.0 with transformers 4.57 and what they need at
#         the versions of bench/.venv-trl (bench/setup_peer.sh trl makes it), installed into a folder of its
#         own on the device, so that its transformers 4.x never meets klq's 5.x.
# Every wheel is for CPython 3.12 on manylinux x86-64 (the device's), downloaded with --no-deps: the lists
# below are the whole closure beyond the image's packages (checked against its package list,
# /work/.library/device/KINDS.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/bench/gpu_wheels"
klq_venv="${KLQ_VENV:-$root/.venv}"
trl_venv="${TRL_VENV:-$root/bench/.venv-trl}"

# transformers 5.x checks regex's version at import; huggingface-hub 2.x imports httpx2 (httpcore2, truststore).
KLQ_PACKAGES="transformers tokenizers huggingface-hub accelerate pydantic pydantic-core annotated-types typing-inspection
              regex httpx2 httpcore2 truststore click"
TRL_PACKAGES="trl transformers tokenizers huggingface-hub accelerate datasets dill multiprocess fsspec"

# NAME==VERSION for each package as installed in a venv (a package missing there is an error).
pins() {
    "$1/bin/python" - "${@:2}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        sys.exit(f"{name} is not installed in {sys.executable}")
EOF
}

download() {  # download DIR PIN...
    local dir="$1"
    shift
    mkdir -p "$dir"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
}

[ -x "$klq_venv/bin/python" ] || { echo "no project venv at $klq_venv (./klq-lab test tests/test_config.py makes it)" >&2; exit 2; }
[ -x "$trl_venv/bin/python" ] || { echo "no TRL venv at $trl_venv (bench/setup_peer.sh trl makes it)" >&2; exit 2; }
rm -rf "$dest"
# shellcheck disable=SC2086
download "$dest/klq" $(pins "$klq_venv" $KLQ_PACKAGES)
# shellcheck disable=SC2086
download "$dest/trl" $(pins "$trl_venv" $TRL_PACKAGES)
du -sh "$dest"/klq "$dest"/trl "$dest"
ls "$dest"/klq "$dest"/trl
