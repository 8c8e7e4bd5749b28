"""bench/gpu_check.sh end to end on the CPU (`--device cpu --shape gpt2-tiny`): the stages the device machine
runs, each recorded, the GPU tests skipped saying why, a throughput figure, and the report files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_every_stage_on_cpu_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    cmd = ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--shape", "gpt2-tiny", "--out", str(out),
           "--sides", "ours-ppo", "--iterations", "1", "--warmup", "0", "--no-wheels", "--budget", "900"]
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "gpu_report.json").read_text())
    status = {s["stage"]: s["status"] for s in report["stages"]}
    assert status == {"env": "passed", "install": "passed", "assets": "passed", "ours-ppo": "passed",
                      "gpu-tests": "passed", "trl": "skipped", "ours-klq": "skipped"}, status
    assert report["env"]["klq"]["imports"] == ["klq.trainer", "klq.cli", "accelerate.commands.launch"]
    tests = report["tests"]
    assert tests["counts"]["failed"] == tests["counts"]["error"] == 0
    if not torch.cuda.is_available():  # every GPU test skipped, saying why
        assert tests["counts"]["skipped"] == len(tests["cases"]) >= 8
        assert all("needs a CUDA GPU" in case["message"] for case in tests["cases"])
    ours = report["throughput"]["sides"]["ours-ppo"]
    assert ours["episodes_per_s"] > 0 and len(ours["iterations"][0]) == 1
    assert "ours-ppo" in report["throughput"]["table"]
    text = (out / "gpu_report.md").read_text()
    assert "| ours-ppo | passed |" in text and "ours PPO:" in text
    logs = (out / "gpu_check_logs.txt").read_text()
    assert "===== gpu-tests: passed" in logs and "skipped" in logs
    assert "ours PPO / TRL" in done.stdout  # the printed summary
