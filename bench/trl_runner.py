"""TRL's PPOTrainer on bench/tiny_assets.py's models: the peer side of bench/train_throughput.py.

Runs in the peer's own virtual environment (bench/.venv-trl: trl 0.24.0, transformers < 4.58), started by
train_throughput.py as a subprocess; prints one line `RESULT {json}` with per-iteration wall times and
a per-phase split. Everything that is not the training loop is off: no report_to, no saving, no sample
generations (num_sample_generations=0), no eval; tqdm off (PrinterCallback prints the per-iteration
metrics dict to stdout, which the parent ignores).

Phases (wall clock, synchronised on CUDA): generation = trl's batch_generation; scoring = from its end to
the first forward of the PolicyAndValueWrapper (ref log-probs, value, reward, GAE); training = from there to
the iteration's on_step_end (4 epochs of forward/backward, optimizer steps, metrics, gc.collect).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_peer_result  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--assets", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--iterations", type=int, required=True, help="measured iterations")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--micro-batch-size", type=int, required=True)
    p.add_argument("--num-mini-batches", type=int, default=1)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--response-length", type=int, required=True)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--learning-rate", type=float, default=3e-6)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    import datasets
    import torch
    import transformers
    import trl
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl import PPOConfig, PPOTrainer
    from trl.trainer import ppo_trainer as ppo_mod

    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    cuda = a.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    tok = AutoTokenizer.from_pretrained(f"{a.assets}/tokenizer", padding_side="left")
    with open(f"{a.assets}/prompts.jsonl") as f:
        prompts = [json.loads(line)["prompt"] for line in f]
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    train = datasets.Dataset.from_dict({"input_ids": ids})
    evals = datasets.Dataset.from_dict({"input_ids": ids[: a.batch_size]})
    # fp32 master weights for the trained models (TRL's default too), the frozen ones in bf16 under --bf16
    frozen_dtype = torch.bfloat16 if a.bf16 else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(f"{a.assets}/policy", torch_dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(f"{a.assets}/policy", torch_dtype=frozen_dtype)
    value = AutoModelForSequenceClassification.from_pretrained(f"{a.assets}/reward", num_labels=1,
                                                               torch_dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(f"{a.assets}/reward", num_labels=1,
                                                                torch_dtype=frozen_dtype)
    grad_accum = a.batch_size // (a.num_mini_batches * a.micro_batch_size)
    out = tempfile.mkdtemp(prefix="trl-bench-")
    cfg = PPOConfig(
        output_dir=out, report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no",
        disable_tqdm=True, use_cpu=not cuda, bf16=a.bf16, seed=a.seed, dataloader_num_workers=0,
        per_device_train_batch_size=a.micro_batch_size, gradient_accumulation_steps=grad_accum,
        num_mini_batches=a.num_mini_batches, num_ppo_epochs=a.epochs,
        total_episodes=a.batch_size * (a.warmup + a.iterations),
        local_rollout_forward_batch_size=a.micro_batch_size,
        response_length=a.response_length, temperature=a.temperature, stop_token="eos",
        learning_rate=a.learning_rate, num_sample_generations=0,
    )

    marks: list[dict[str, float]] = []

    def mark(name: str) -> None:
        sync()
        if not marks or name in marks[-1]:
            marks.append({})
        marks[-1].setdefault(name, time.perf_counter())

    real_generation, real_forward = ppo_mod.batch_generation, ppo_mod.forward

    def timed_generation(*args, **kwargs):
        mark("start")
        result = real_generation(*args, **kwargs)
        sync()
        marks[-1]["generated"] = time.perf_counter()
        return result

    def timed_forward(model, *args, **kwargs):
        if isinstance(model, ppo_mod.PolicyAndValueWrapper) or "PolicyAndValueWrapper" in type(model).__name__:
            sync()
            marks[-1].setdefault("scored", time.perf_counter())
        return real_forward(model, *args, **kwargs)

    ppo_mod.batch_generation, ppo_mod.forward = timed_generation, timed_forward

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync()
            marks[-1]["end"] = time.perf_counter()
            marks[-1]["cpu"] = time.process_time()

    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=train, eval_dataset=evals, callbacks=[StepTimer()])
    peak = None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    print_peer_result(
        "trl", marks, a.warmup, peak, trl=trl.__version__, transformers=transformers.__version__,
        torch=torch.__version__, threads=torch.get_num_threads(), batch_size=cfg.batch_size,
        mini_batch_size=cfg.mini_batch_size, micro_batch_size=cfg.micro_batch_size,
    )


if __name__ == "__main__":
    main()
