"""The training library on a GPU: bf16 training steps, KV-cache generation, exact resume, `accelerate launch`.

Each test records its peak GPU memory (conftest.py). Skipped without CUDA; KLQ_TEST_DEVICE=cpu runs them on
the CPU (a check of the tests, not of the GPU). bench/gpu_check.sh runs them on the device machine.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import comparable, straight_and_resumed

from klq import losses, trainer
from klq.config import RunConfig
from klq.models import load_models, response_logits
from klq.rollout import sample
from klq.sinks import read_jsonl
from klq.trainer import train

ROOT = Path(__file__).resolve().parents[2]


def run_config(assets: Path, device: str, algorithm: str, **train) -> RunConfig:
    """A small run on bench/tiny_assets' gpt2-tiny: 16-token prompts, 16-token responses, bf16 (frozen models
    in bf16, policy and value fp32 master weights under bf16 autocast), one iteration unless `train` says
    otherwise; no evals or checkpoints before the end."""
    settings = {"total_episodes": 16, "batch_size": 16, "minibatch_size": 16, "micro_batch_size": 8,
                "num_epochs": 2, "learning_rate": 1e-4, **train}
    return RunConfig.model_validate({
        "name": f"gpu-{algorithm}", "algorithm": algorithm, "seed": 0, "device": device,
        "eval_interval": 10**6, "checkpoint_interval": 10**6,
        "task": {"name": "prompts", "dataset": str(assets / "prompts.jsonl"), "max_prompt_length": 16,
                 "num_eval_prompts": 2},
        "model": {"policy": str(assets / "policy"), "reward": str(assets / "reward"), "value_init": "reward",
                  "dtype": "bfloat16"},
        "rollout": {"response_length": 16, "temperature": 0.7},
        "train": settings,
    })


# ------------------------------------------------------------------------------------ bf16 training step


@pytest.mark.parametrize("algorithm", ["klq", "ppo"])
def test_bf16_training_step(algorithm, device, tiny_assets, tmp_path, monkeypatch):
    """One iteration (2 epochs x 2 micro-batches): finite loss, every policy weight finite and most changed, the
    policy's LM head computing in bf16 on the device, frozen models stored in bf16, trained ones in fp32."""
    cfg = run_config(tiny_assets, device, algorithm)
    models = load_models(cfg.model, torch.device(device))
    assert models.reference.dtype == models.reward.dtype == torch.bfloat16
    assert models.policy.dtype == models.value.model.dtype == torch.float32  # master weights
    del models

    # The dtype the LM head computes in during the training forward (accelerate's autocast wrapper hands the
    # logits back in fp32, so they alone would not tell).
    seen: list[tuple[torch.dtype, str]] = []
    forward = trainer.response_logprobs

    def recording(model, *args, **kwargs):
        head = getattr(model, "module", model).get_output_embeddings()
        hook = head.register_forward_hook(lambda _m, _i, out: seen.append((out.dtype, out.device.type)))
        try:
            return forward(model, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(trainer, "response_logprobs", recording)
    result = train(cfg, tmp_path)
    assert result.iterations_done == 1
    assert seen == [(torch.bfloat16, torch.device(device).type)] * 4  # 2 epochs x 2 micro-batches

    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    loss_keys = ["loss/q_avg"] if algorithm == "klq" else ["loss/policy_avg", "loss/value_avg"]
    assert all(math.isfinite(row[k]) for k in loss_keys), {k: row[k] for k in loss_keys}
    before = load_file(tiny_assets / "policy" / "model.safetensors")
    after = load_file(result.final_checkpoint / "policy" / "model.safetensors")
    assert after.keys() == before.keys()
    assert all(torch.isfinite(w).all() for w in after.values())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, f"only {len(changed)} of {len(before)} policy tensors changed"
    assert all(w.dtype == torch.float32 for w in after.values())


# ------------------------------------------------------------------------------ KV-cache generation


def _tiny_lm(arch: str, vocab: int, seed: int) -> torch.nn.Module:
    """A random 2-layer causal LM of `arch` (gpt2, or gpt_neox with rotary embeddings: Pythia's) whose logits
    are peaked (initializer range 0.3), so that greedy choices are rarely near-ties."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig

    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=64, n_layer=2, n_head=2,
                            initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    else:
        config = GPTNeoXConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=256, max_position_embeddings=128, rotary_pct=0.25,
                               use_parallel_residual=True, tie_word_embeddings=False, initializer_range=0.3)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("precision", ["float32", "bf16-autocast"])
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_greedy_generation_with_kv_cache_equals_full_forward(arch, precision, device):
    """Greedy decoding with the KV cache (klq.rollout.sample) picks, at every response position up to EOS, the
    argmax of the logits that one full forward pass without a cache gives over prompt + response (left-padded
    prompts of different lengths, position ids from the mask), and reports the same log-probs. Positions where
    the full pass's top two logits lie within the precision's error of each other are ties: either is right."""
    vocab, eos, pad, T = 512, 3, 0, 24
    tie, logp_tol = (1e-3, 1e-3) if precision == "float32" else (0.15, 0.15)
    policy = _tiny_lm(arch, vocab, seed=1).to(device)
    generator = torch.Generator().manual_seed(2)
    lengths = [20, 17, 12, 9, 20, 5, 14, 20]
    query_ids = torch.full((len(lengths), max(lengths)), pad)
    query_mask = torch.zeros_like(query_ids)
    for row, n in enumerate(lengths):  # left padding
        query_ids[row, -n:] = torch.randint(4, vocab, (n,), generator=generator)
        query_mask[row, -n:] = 1
    query_ids, query_mask = query_ids.to(device), query_mask.to(device)
    autocast = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if precision == "bf16-autocast"
                else nullcontext())
    with torch.no_grad(), autocast:
        ids, logp = sample(policy, query_ids, query_mask, T, eos, pad, greedy=True)
        # sample's own attention mask: every generated column attended, pad after EOS included
        full_mask = torch.cat([query_mask, torch.ones_like(ids)], dim=1)
        logits = response_logits(policy, torch.cat([query_ids, ids], dim=1), full_mask, T).float()
    valid = torch.ones_like(ids, dtype=torch.bool)
    ended = (ids == eos).long().cumsum(1)
    valid &= (ended - (ids == eos).long()) == 0  # up to and including the first EOS
    top2 = logits.topk(2, dim=-1).values
    clear = valid & (top2[..., 0] - top2[..., 1] > tie)
    assert clear.sum() >= 0.5 * valid.sum(), "too many near-ties for a meaningful comparison"
    argmax = logits.argmax(-1)
    wrong = clear & (argmax != ids)
    assert not wrong.any(), f"cached greedy tokens differ from the full pass at {wrong.nonzero().tolist()}"
    full_logp = losses.logprobs_of(logits, ids)
    gap = (full_logp - logp).abs()[valid].max().item()
    assert gap < logp_tol, f"log-probs with and without the cache differ by up to {gap:.2e}"


# ------------------------------------------------------------------------------ checkpoint and exact resume


@pytest.fixture
def deterministic() -> Iterator[Callable[[], list[str]]]:
    """Deterministic kernels (cuBLAS workspaces, attention backward) for the test; yields a function that
    lists the ops without a deterministic implementation met so far (warn_only: they run, with a warning)."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield lambda: sorted({str(w.message).splitlines()[0] for w in caught if "determinis" in str(w.message)})
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


@pytest.mark.parametrize("algorithm", ["klq", "ppo"])
def test_resumed_run_equals_uninterrupted_on_device(algorithm, device, tiny_assets, tmp_path, deterministic,
                                                    record_property):
    """As tests/test_trainer.py's CPU test, on the device in bf16: stopped after iteration 3 (checkpoint at 2),
    resumed from step 2, the metrics of all 5 iterations and the eval samples equal an uninterrupted run's
    (optimizer, scheduler, Python/torch/CUDA RNG states restored)."""
    cfg = run_config(tiny_assets, device, algorithm, total_episodes=16 * 5, minibatch_size=8, micro_batch_size=4)
    cfg = cfg.model_copy(update={"checkpoint_interval": 2, "eval_interval": 3})
    straight_dir, resumed_dir = straight_and_resumed(cfg, tmp_path)
    nondeterministic = deterministic()
    record_property("nondeterministic_ops", json.dumps(nondeterministic))
    straight = comparable(read_jsonl(straight_dir / "metrics.jsonl"))
    resumed = comparable(read_jsonl(resumed_dir / "metrics.jsonl"))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    assert resumed == straight, f"ops without a deterministic implementation: {nondeterministic}"
    assert read_jsonl(straight_dir / "samples.jsonl") == read_jsonl(resumed_dir / "samples.jsonl")
    final = load_file(straight_dir / "checkpoints" / "step-0000005" / "policy" / "model.safetensors")
    again = load_file(resumed_dir / "checkpoints" / "step-0000005" / "policy" / "model.safetensors")
    assert all(torch.equal(final[k], again[k]) for k in final), "final policy weights differ"


# ------------------------------------------------------------------------------------ accelerate launch


def test_accelerate_launch_klq_train(device, tiny_assets, tmp_path):
    """`accelerate launch` (1 process, bf16 mixed precision) of `klq train` as a user starts it: one PPO
    iteration on the device, its metrics and final checkpoint written."""
    cfg = run_config(tiny_assets, device, "ppo")
    config_file = tmp_path / "run.json"
    config_file.write_text(cfg.model_dump_json())
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "bf16", "--dynamo_backend", "no", *(["--cpu"] if device == "cpu" else []),
           "-m", "klq.cli", "train", str(config_file), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "finished after 1 iterations" in done.stdout
    (row,) = read_jsonl(out / "metrics.jsonl")
    assert math.isfinite(row["loss/policy_avg"]) and math.isfinite(row["loss/value_avg"])
    assert (out / "checkpoints" / "step-0000001" / "policy" / "model.safetensors").exists()
    assert json.loads((out / "run_config.json").read_text())["device"] == device
