#!/usr/bin/env bash
# bench/gpu_check.sh: the GPU run of issue 17 in one call, on a machine with one NVIDIA GPU and no network.
#
#   bench/gpu_check.sh                                  # cuda, Pythia-1B shape: what the device machine runs
#   bench/gpu_check.sh --device cpu --shape gpt2-tiny   # the same stages on a CPU (tests skipped, saying why)
#   options: --out DIR (default $OUT, else bench/.cache/gpu_check)  --budget SECONDS (default 480)
#            --sides ours-ppo,trl,ours-klq  --iterations N (measured, ours)  --trl-iterations N  --warmup N
#            --no-wheels (use the Python as it is, even with bench/gpu_wheels present)
#
# Stages, each under its own time limit (cut to what is left of --budget; a stage that no longer fits is
# skipped and says so), each one's result recorded even when another fails:
#   env        GPU (nvidia-smi), Python, torch/CUDA and library versions as the machine has them
#   install    the carried wheels (below), then what klq imports, with the versions it gets
#   assets     bench/tiny_assets.py: random models + tokenizer + prompts of the shape (Pythia-1B: ~8 GB)
#   ours-ppo   bench/train_throughput.py --sides ours-ppo at the shape (goal >= 12 episodes/s on one
#              H100/H200; bf16: frozen models in bf16, trained ones fp32 master weights + autocast)
#   gpu-tests  pytest tests/gpu: bf16 training steps (KLQ, PPO), KV-cache generation, exact resume, accelerate
#              launch, each test's peak GPU memory (junit properties)
#   trl        TRL 0.24's PPOTrainer at the same shape and settings (when its wheels were carried)
#   ours-klq   ours KLQ at the shape
# then bench/gpu_report.py writes OUT/gpu_report.md and OUT/gpu_report.json (and OUT/gpu_check_logs.txt,
# every stage's log) and prints the summary. Exit status 0 when every stage that ran passed.
#
# Dependencies on the device machine (no network; /work/.library/device/KINDS.md lists its image): its
# python3 has the CUDA build of torch 2.11, numpy, scipy, pandas, pyyaml, tqdm, httpx, safetensors, pytest,
# pytest-timeout. It lacks pydantic and has an older transformers than klq needs (5.17: no `cache` output),
# so the wheels klq needs come with the call: bench/gpu_wheels.sh (run once where pip reaches PyPI) puts
# them into bench/gpu_wheels/klq/ (transformers, tokenizers, huggingface-hub, accelerate, pydantic, ...: the
# versions of the project's .venv) and TRL's into bench/gpu_wheels/trl/ (trl 0.24.0, transformers 4.57,
# datasets, ...: bench/.venv-trl's), ~40 MB together, git-ignored, inside the 64 MiB a call carries:
#   device tool: run(command="bash bench/gpu_check.sh", carry=["bench/gpu_wheels"], timeout_s=560)
# They are installed with pip --no-index --no-deps --target into two folders of their own under /tmp, put on
# PYTHONPATH (ours) or given to the TRL sides alone (train_throughput.py --trl-pythonpath), so neither
# meets the other's transformers. Without bench/gpu_wheels (this machine, with the project's .venv), the
# Python found is used as it is ($PYTHON, else .venv/bin/python, else python3), and TRL runs from
# bench/.venv-trl when it is ready, else its stage is skipped, saying so.
set -euo pipefail
{  # the whole script is read before it runs (one compound command): editing it mid-run cannot change a run
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

device=cuda shape=pythia-1b budget=480 sides="ours-ppo,trl,ours-klq" no_wheels=""
out="${OUT:-$root/bench/.cache/gpu_check}" iterations="" trl_iterations="" warmup=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --shape) shape="$2"; shift 2 ;;
        --budget) budget="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --sides) sides="$2"; shift 2 ;;
        --iterations) iterations="$2"; shift 2 ;;
        --trl-iterations) trl_iterations="$2"; shift 2 ;;
        --warmup) warmup="$2"; shift 2 ;;
        --no-wheels) no_wheels=1; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$shape" = pythia-1b ]; then  # ~5 s (ours) and ~33 s (TRL, the issue's figure) per iteration on one H100
    iterations="${iterations:-3}" trl_iterations="${trl_iterations:-2}" warmup="${warmup:-1}"
else
    iterations="${iterations:-2}" trl_iterations="${trl_iterations:-2}" warmup="${warmup:-1}"
fi

cap_scale=1  # the stages' caps below are for the GPU; on a CPU every stage takes longer (the budget still holds)
[ "$device" = cpu ] && cap_scale=4
started=$(date +%s)
deadline=$((started + budget))
reserve=25  # seconds kept for the report
mkdir -p "$out"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
stages="$work/stages.tsv"
printf 'stage\tstatus\trc\tseconds\tlimit\tnote\n' >"$stages"
if [ -n "${PYTHON:-}" ]; then py="$PYTHON"
elif [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"
else py="python3"; fi
# (CUBLAS_WORKSPACE_CONFIG, which exact resume on CUDA needs, only for the tests: tests/gpu/conftest.py sets it,
# and the throughput stages keep cuBLAS's default workspace)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
failed=0

# stage NAME CAP NEED CMD...: run CMD under min(CAP, what is left) seconds, its output in $work/NAME.log;
# skipped when less than NEED seconds are left. Records NAME, status, exit code, seconds, limit.
stage() {
    local name="$1" cap=$(($2 * cap_scale)) need="$3"
    shift 3
    local now left limit rc t0 t1 status
    now=$(date +%s)
    left=$((deadline - now - reserve))
    limit=$((cap < left ? cap : left))
    if [ "$limit" -lt "$need" ]; then
        printf '%s\tskipped\t-\t0\t%s\tonly %s s of the budget left (needs %s)\n' "$name" "$limit" "$left" "$need" >>"$stages"
        echo "[gpu_check] $name: skipped, only ${left} s of the budget left"
        return 0
    fi
    echo "[gpu_check] $name: running (limit ${limit} s) ..."
    t0=$(date +%s%N)
    # timeout signals the whole process group: the benchmark's worker subprocesses end with it. Functions
    # of this script run in a child bash (export -f below).
    timeout --kill-after=10 "$limit" bash -euo pipefail -c '"$@"' stage "$@" >"$work/$name.log" 2>&1 && rc=0 || rc=$?
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    case "$rc" in
        0) status=passed ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    [ "$status" = passed ] || failed=1
    printf '%s\t%s\t%s\t%d.%d\t%s\t\n' "$name" "$status" "$rc" $((ms / 1000)) $((ms % 1000 / 100)) "$limit" >>"$stages"
    echo "[gpu_check] $name: $status (exit $rc, $((ms / 1000)) s)"
    tail -n 3 "$work/$name.log" | sed 's/^/    /'
}

skip() {  # skip NAME REASON
    printf '%s\tskipped\t-\t0\t0\t%s\n' "$1" "$2" >>"$stages"
    echo "[gpu_check] $1: skipped, $2"
}

probe() {  # the versions and the device as the Python of this stage sees them, as JSON
    "$py" - "$@" <<'EOF'
import json, platform, sys
from importlib.metadata import PackageNotFoundError, version

info = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform()}
for name in ["torch", "transformers", "accelerate", "tokenizers", "huggingface-hub", "pydantic", "safetensors",
             "numpy", "scipy", "pandas", "pytest", "trl", "datasets"]:
    try:
        info[name] = version(name)
    except PackageNotFoundError:
        info[name] = None
import torch

info["torch_cuda"] = torch.version.cuda
info["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
                   "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count()}
for module in sys.argv[1:]:
    __import__(module)  # fails the stage when what the next stages need does not import
    info.setdefault("imports", []).append(module)
print(json.dumps(info))
EOF
}

env_stage() {
    { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu,utilization.gpu --format=csv || echo "no nvidia-smi"; } >"$work/nvidia-smi.txt" 2>&1
    cat "$work/nvidia-smi.txt"
    probe >"$work/env-image.json"
    cat "$work/env-image.json"
    git -C "$root" rev-parse HEAD 2>/dev/null >"$work/commit.txt" || echo "unknown (no git)" >"$work/commit.txt"
    nproc; uptime
}

install_stage() {
    local site
    local which
    for which in klq trl; do
        if [ -n "$wheels" ] && compgen -G "$wheels/$which/*.whl" >/dev/null; then
            "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$work/site-$which" "$wheels/$which"/*.whl
            echo "installed $(ls "$wheels/$which" | wc -l) wheels into $work/site-$which"
        else
            echo "no carried $which wheels used (${wheels:-none: the project venv, or no bench/gpu_wheels})"
        fi
    done
    [ -d "$work/site-klq" ] && unmet "$work/site-klq"
    probe klq.trainer klq.cli accelerate.commands.launch >"$work/env-klq.json"
    cat "$work/env-klq.json"
    if [ -d "$work/site-trl" ]; then
        PYTHONPATH="$work/site-trl" unmet "$work/site-trl"
        PYTHONPATH="$work/site-trl" probe trl transformers datasets >"$work/env-trl.json" && cat "$work/env-trl.json"
    fi
}

unmet() {  # unmet SITE: the requirements of the wheels installed in SITE that this Python does not meet (a note)
    "$py" - "$1" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, distributions, version

from packaging.requirements import Requirement

for dist in distributions(path=[sys.argv[1]]):
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = version(req.name)
        except PackageNotFoundError:
            have = None
        if have is None or (req.specifier and not req.specifier.contains(have, prereleases=True)):
            print(f"note: {dist.metadata['Name']} {dist.version} requires {spec}; this Python has {have}")
EOF
}

# The carried wheels are for the device's Python (CPython 3.12): used unless this is the project's venv.
wheels=""
[ -z "$no_wheels" ] && [ "$py" != "$root/.venv/bin/python" ] && [ -d "$root/bench/gpu_wheels/klq" ] \
    && wheels="$root/bench/gpu_wheels"
if [ -n "$wheels" ]; then export PYTHONPATH="$root:$work/site-klq${PYTHONPATH:+:$PYTHONPATH}"
else export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"; fi

echo "[gpu_check] device $device, shape $shape, budget ${budget} s, python $py, work dir $work, out $out"
export -f probe env_stage install_stage unmet
export py work root shape device warmup wheels
stage env 60 5 env_stage
stage install 120 10 install_stage
install_ok=$(awk -F'\t' '$1=="install"{print $2}' "$stages")

# The TRL sides: carried wheels, else bench/.venv-trl (this machine), else none.
trl_py="" trl_path=""
if [ -f "$work/env-trl.json" ]; then
    trl_py="$py" trl_path="$work/site-trl"
elif [ -f "$root/bench/.venv-trl/.ready" ]; then
    trl_py="$root/bench/.venv-trl/bin/python"
fi

throughput() {  # throughput SIDE ITERATIONS: one side of bench/train_throughput.py at the shape, as JSON
    local extra=()
    [[ "$1" == trl* ]] && extra=(--trl-python "$trl_py")
    [[ "$1" == trl* && -n "$trl_path" ]] && extra+=(--trl-pythonpath "$trl_path")
    "$py" bench/train_throughput.py --shape "$shape" --device "$device" --sides "$1" --iterations "$2" \
        --warmup "$warmup" --json "$work/throughput-$1.json" "${extra[@]}"
}
export -f throughput
export trl_py trl_path

if [ "$install_ok" != passed ]; then
    for name in assets ours-ppo gpu-tests trl ours-klq; do skip "$name" "the install stage did not pass"; done
else
    stage assets 150 20 "$py" bench/tiny_assets.py bench/.cache "$shape"
    assets_ok=$(awk -F'\t' '$1=="assets"{print $2}' "$stages")
    run_side() {  # run_side SIDE CAP NEED ITERATIONS
        if [[ ",$sides," != *",$1,"* ]]; then skip "$1" "not among --sides"
        elif [ "$assets_ok" != passed ]; then skip "$1" "the assets stage did not pass"
        elif [[ "$1" == trl* && -z "$trl_py" ]]; then
            skip "$1" "no TRL here: no bench/gpu_wheels/trl carried, no bench/.venv-trl (bench/gpu_wheels.sh, bench/setup_peer.sh trl)"
        else stage "$1" "$2" "$3" throughput "$1" "$4"; fi
    }
    run_side ours-ppo 170 60 "$iterations"
    stage gpu-tests 200 45 "$py" -m pytest tests/gpu -q -rs -p no:cacheprovider -o junit_family=xunit1 \
        --junitxml "$work/gpu_tests.xml"
    run_side trl 240 120 "$trl_iterations"
    run_side ours-klq 150 60 "$iterations"
fi

"$py" bench/gpu_report.py --work "$work" --out "$out" --device "$device" --shape "$shape" \
    --budget "$budget" --started "$started" || failed=1
exit "$failed"
}
