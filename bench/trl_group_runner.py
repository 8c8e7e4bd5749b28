"""TRL's GRPOTrainer or RLOOTrainer on bench/tiny_assets.py's models: peer sides of bench/train_throughput.py.

Runs in the peer's own virtual environment (bench/.venv-trl: trl 0.24.0), started by train_throughput.py
as a subprocess; prints one line `RESULT {json}` with per-iteration wall and CPU times and a phase split,
in the same form as bench/trl_runner.py (TRL's PPOTrainer).

One iteration here is what one iteration of klq's trainer does: generate `batch_size` responses
(batch_size / k prompts, k = num_generations each), score them, then `epochs` passes over them in
minibatches of `minibatch_size` split into micro-batches. In TRL's terms: per_device_train_batch_size =
micro-batch, gradient_accumulation_steps = minibatch / micro-batch, steps_per_generation = batch /
micro-batch (one generation batch per iteration) and num_iterations = epochs (TRL's mu: each generation
batch is reused that many times), so an iteration is epochs * batch / minibatch optimizer steps, and the
iteration's wall time runs from one iteration-closing on_step_end to the next.

The KL term: beta = kl_coef on both trainers (GRPO: the k3 estimate in the loss; RLOO: in the reward), so
both load the reference model as ours does. Everything that is not the training loop is off: no
report_to, no saving, no eval, no completion logging; tqdm off.

Phases (wall clock, synchronised on CUDA): generation = TRL's `_generate` (prompt tokenisation and
`model.generate` with its KV cache); scoring = the rest of `_generate_and_score_completions` (old and
reference log-probs, decoding, the reward model, advantages); training = the rest of the iteration.
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
    p.add_argument("--trainer", choices=["grpo", "rloo"], required=True)
    p.add_argument("--assets", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--iterations", type=int, required=True, help="measured iterations")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, required=True, help="responses per iteration")
    p.add_argument("--minibatch-size", type=int, required=True)
    p.add_argument("--micro-batch-size", type=int, required=True)
    p.add_argument("--num-generations", type=int, required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--prompt-length", type=int, required=True)
    p.add_argument("--response-length", type=int, required=True)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--learning-rate", type=float, default=3e-6)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    cuda = a.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if a.trainer == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer

    tok = AutoTokenizer.from_pretrained(f"{a.assets}/tokenizer", padding_side="left")
    with open(f"{a.assets}/prompts.jsonl") as f:
        prompts = [json.loads(line)["prompt"] for line in f]
    train = datasets.Dataset.from_dict({"prompt": prompts})
    frozen_dtype = torch.bfloat16 if a.bf16 else torch.float32
    reward = AutoModelForSequenceClassification.from_pretrained(
        f"{a.assets}/reward", num_labels=1, torch_dtype=frozen_dtype
    )
    optimizer_steps = a.epochs * a.batch_size // a.minibatch_size  # per iteration
    extra = {"scale_rewards": "group", "loss_type": "bnpo"} if a.trainer == "grpo" else {}
    cfg = Config(
        output_dir=tempfile.mkdtemp(prefix=f"trl-{a.trainer}-bench-"), report_to="none", save_strategy="no",
        eval_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=not cuda, bf16=a.bf16,
        seed=a.seed, dataloader_num_workers=0, log_completions=False,
        per_device_train_batch_size=a.micro_batch_size,
        gradient_accumulation_steps=a.minibatch_size // a.micro_batch_size,
        steps_per_generation=a.batch_size // a.micro_batch_size, num_iterations=a.epochs,
        num_generations=a.num_generations, max_prompt_length=a.prompt_length,
        max_completion_length=a.response_length, temperature=a.temperature, top_p=1.0, top_k=None,
        beta=a.kl_coef, epsilon=0.2, learning_rate=a.learning_rate,
        max_steps=optimizer_steps * (a.warmup + a.iterations),
        model_init_kwargs={"dtype": torch.float32}, **extra,
    )

    marks: list[dict[str, float]] = []  # one per iteration: start, generated, scored, end, cpu
    real_generate, real_generate_and_score = Trainer._generate, Trainer._generate_and_score_completions

    def timed_generate(self, *args, **kwargs):
        sync()
        marks.append({"start": time.perf_counter()})
        result = real_generate(self, *args, **kwargs)
        sync()
        marks[-1]["generated"] = time.perf_counter()
        return result

    def timed_generate_and_score(self, *args, **kwargs):
        result = real_generate_and_score(self, *args, **kwargs)
        sync()
        marks[-1]["scored"] = time.perf_counter()
        return result

    Trainer._generate, Trainer._generate_and_score_completions = timed_generate, timed_generate_and_score

    class IterationTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % optimizer_steps == 0:  # the iteration's last optimizer step
                sync()
                marks[-1]["end"] = time.perf_counter()
                marks[-1]["cpu"] = time.process_time()

    trainer = Trainer(
        model=f"{a.assets}/policy", reward_funcs=reward, args=cfg, train_dataset=train, processing_class=tok,
        reward_processing_classes=tok, callbacks=[IterationTimer()],
    )
    peak = None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    assert len(marks) == a.warmup + a.iterations and all("end" in m for m in marks), marks
    print_peer_result(
        f"trl-{a.trainer}", marks, a.warmup, peak, trl=trl.__version__, transformers=transformers.__version__,
        torch=torch.__version__, threads=torch.get_num_threads(), batch_size=a.batch_size,
        mini_batch_size=a.minibatch_size, micro_batch_size=a.micro_batch_size, num_generations=a.num_generations,
    )


if __name__ == "__main__":
    main()
