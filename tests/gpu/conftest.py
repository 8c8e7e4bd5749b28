"""Fixtures of the GPU tests: the device they run on, small random models, peak GPU memory per test.

The tests need CUDA and are skipped without it, saying why. `KLQ_TEST_DEVICE=cpu` runs them on the CPU
instead (bf16 autocast on the CPU): a check of the tests themselves on a machine without a GPU, not of the
GPU. bench/gpu_check.sh runs them on the device machine.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Exact resume on CUDA needs deterministic cuBLAS workspaces; read when cuBLAS first starts, so set it before
# any test touches the GPU (gpu_check.sh exports it too).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

ROOT = Path(__file__).resolve().parents[2]
DEVICE_ENV = "KLQ_TEST_DEVICE"


def _tiny_assets_module():
    """bench/tiny_assets.py: the random models, tokenizer and prompts that bench/train_throughput.py uses."""
    spec = importlib.util.spec_from_file_location("bench_tiny_assets", ROOT / "bench" / "tiny_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def device() -> str:
    """"cuda" (default) or $KLQ_TEST_DEVICE; skips the test when CUDA is asked for and absent."""
    import torch

    name = os.environ.get(DEVICE_ENV, "cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"needs a CUDA GPU: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees none "
                    f"(torch.cuda.is_available() is False); {DEVICE_ENV}=cpu runs these tests on the CPU")
    return name


@pytest.fixture(scope="session")
def tiny_assets(device: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench/tiny_assets.py's gpt2-tiny (4 layers x 128 dims, GPT-2's 50,257-token vocabulary, random weights,
    16-token prompts): policy/, reward/, tokenizer/, prompts.jsonl."""
    return _tiny_assets_module().build(tmp_path_factory.mktemp("gpu-assets"), "gpt2-tiny")


@pytest.fixture(autouse=True)
def peak_memory(request: pytest.FixtureRequest, record_property) -> Iterator[None]:
    """Peak GPU memory of each test (torch.cuda.max_memory_allocated), printed and recorded as the junit
    property peak_memory_gib (bench/gpu_check.sh's report reads it)."""
    import torch

    on_gpu = torch.cuda.is_available() and os.environ.get(DEVICE_ENV, "cuda").startswith("cuda")
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield
    if on_gpu:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        record_property("peak_memory_gib", round(peak, 4))
        print(f"\n{request.node.name}: peak GPU memory {peak:.3f} GiB")
