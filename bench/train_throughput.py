"""Training throughput: this project's PPO, KLQ, RLOO and GRPO against TRL's PPOTrainer, GRPOTrainer and
RLOOTrainer, same models and settings.

    python bench/train_throughput.py                                  # CPU: gpt2-tiny, batch 16, 3 iterations
    python bench/train_throughput.py --shape pythia-1b --device cuda  # one GPU: Pythia-1B shape, bf16

Both sides load the same randomly initialised models and tokenizer, built once by bench/tiny_assets.py
under bench/.cache (policy = reference; reward model = value initialisation), and train on the same
prompts with the same response length, batch, minibatch, micro-batch, epochs, temperature, learning
rate, dtype and thread count; sample generation / eval and all logging integrations are off on both.
TRL runs in its own virtual environment (bench/.venv-trl, made by bench/setup_peer.sh on first use) as a
subprocess (bench/trl_runner.py: PPOTrainer; bench/trl_group_runner.py: GRPOTrainer, RLOOTrainer); each
of our algorithms runs in a subprocess of this script, so every
side starts from a fresh process. With --rounds R the sides run interleaved R times and the table
reports medians over all measured iterations.

The group-baseline sides (ours-rloo, ours-grpo, trl-grpo, trl-rloo) sample --num-generations (k)
responses per prompt: the batch still counts responses, so every side trains on as many per iteration;
they load no value model (ours, by design; TRL's GRPO/RLOO trainers have none), which is part of what is
measured.

Per iteration: wall seconds and process CPU seconds (all threads: less sensitive than wall time to other
load on a shared machine), episodes/s, response tokens/s, and per phase (generation, scoring, training)
wall seconds, tokens/s and achieved FLOP/s (model FLOPs of what the phase must compute, see
bench/NOTES.md; MFU against --peak-tflops on a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from common import machine as _machine  # noqa: E402
from tiny_assets import SHAPES  # noqa: E402

# Settings per shape: batch, minibatch and micro-batch as in the issue; num_mini_batches = 1 is TRL's
# default (one optimizer step per epoch over the whole batch) for the CPU shape.
RUNS = {
    "gpt2-tiny": {"batch": 16, "minibatch": 16, "micro": 16, "epochs": 4, "iterations": 3, "warmup": 1},
    "pythia-1b": {"batch": 64, "minibatch": 64, "micro": 16, "epochs": 4, "iterations": 5, "warmup": 1},
}
GROUP_ALGORITHMS = ("rloo", "grpo")  # group baselines over k responses per prompt, no value model
ALL_SIDES = ("ours-ppo", "ours-klq", "ours-rloo", "ours-grpo", "trl", "trl-grpo", "trl-rloo")
PEAK_TFLOPS = {"cpu": None, "cuda": 989.0}  # H100 SXM dense bf16; pass --peak-tflops for other parts


# ------------------------------------------------------------------------------------------ model FLOPs


def flops(shape_name: str, batch: int, epochs: int, value_model: bool = True) -> dict[str, float]:
    """Model FLOPs of one iteration's phases: what each phase must compute, counting 2 per multiply-add.
    value_model=False (RLOO, GRPO): no value pass in scoring and only the policy trained.

    body = 12 L d^2 matmul parameters per token (attention 4 d^2 + MLP 8 d^2, GPT-2 and GPTNeoX alike);
    attention scores and mixing 4 L d per (query, key) pair; LM head 2 d V per position whose logits are
    needed (generation: one per sampled token; scoring/training: the T response positions).
    """
    s = SHAPES[shape_name]
    L, d, V, P, T = s["layers"], s["dim"], s["vocab"], s["prompt_len"], s["response_len"]
    body, head, attn = 2 * 12 * L * d * d, 2 * d * V, 4 * L * d

    def forward(tokens_ctx: list[tuple[int, int]], head_positions: int) -> float:
        return sum(n * (body + attn * ctx) for n, ctx in tokens_ctx) + head_positions * head

    # generation: prefill P tokens (mean causal context P/2), then T-1 decode steps with context P+t
    prefill = forward([(P, (P + 1) / 2)], 1)
    decode = forward([(1, P + t + 1) for t in range(1, T)], T - 1)
    generation = batch * (prefill + decode)
    full = forward([(P + T, (P + T + 1) / 2)], 0)  # one no-grad pass over prompt + response, no LM head
    # reference (+ LM head on T positions), value, reward
    scoring = batch * ((3 if value_model else 2) * full + T * head)
    # forward + backward (2x) of the policy (with its LM head on T positions) and the value model
    training = epochs * batch * 3 * ((2 if value_model else 1) * full + T * head)
    return {"generation": generation, "scoring": scoring, "training": training}


# ------------------------------------------------------------------------------------------- our side


def run_ours(a: argparse.Namespace) -> None:
    """One of this project's algorithms through klq.trainer.train, timed; prints `RESULT {json}`."""
    import torch

    torch.set_num_threads(a.threads)
    from klq import rollout, trainer
    from klq.config import RunConfig

    cuda = a.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    shape = SHAPES[a.shape]
    assets = Path(a.assets)
    dtype = "bfloat16" if a.bf16 else "float32"
    group = a.worker in GROUP_ALGORITHMS
    cfg = RunConfig.model_validate({
        "name": f"bench-{a.worker}", "algorithm": a.worker, "kl_coef": 0.05, "gamma": 1.0, "lam": 0.95,
        "seed": a.seed, "eval_interval": 10**6, "checkpoint_interval": 10**6, "device": a.device,
        "task": {"name": "prompts", "dataset": str(assets / "prompts.jsonl"),
                 "max_prompt_length": shape["prompt_len"], "num_eval_prompts": 1},
        "model": {"policy": str(assets / "policy"), "reward": str(assets / "reward"), "value_init": "reward",
                  "dtype": dtype},
        "rollout": {"response_length": shape["response_len"], "temperature": a.temperature,
                    "num_generations": a.num_generations if group else 1},
        "capture": {"train_rollouts": a.capture},
        "train": {"total_episodes": a.batch_size * (a.warmup + a.iterations), "batch_size": a.batch_size,
                  "minibatch_size": a.minibatch_size, "micro_batch_size": a.micro_batch_size,
                  "num_epochs": a.epochs, "learning_rate": a.learning_rate},
    })

    generation: list[float] = []
    real_sample = rollout.sample

    def timed_sample(*args, **kwargs):
        sync()
        t = time.perf_counter()
        out = real_sample(*args, **kwargs)
        sync()
        generation.append(time.perf_counter() - t)
        return out

    rollout.sample = timed_sample
    capture: list[float] = []  # seconds spent recording token records (the +capture sides)
    real_capture = trainer._capture_train

    def timed_capture(*args, **kwargs):
        sync()
        t = time.perf_counter()
        out = real_capture(*args, **kwargs)
        sync()
        capture.append(time.perf_counter() - t)
        return out

    trainer._capture_train = timed_capture
    trainer._evaluate = lambda *args, **kwargs: {}  # sample generation off, as on TRL's side

    class Recorder:
        def __init__(self) -> None:
            self.wall, self.cpu, self.metrics, self.gen, self.capture = [], [], [], [], []

        def log_metrics(self, step, metrics):
            sync()
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())
            self.metrics.append(metrics)
            self.gen.append(sum(generation))
            generation.clear()
            self.capture.append(sum(capture))
            capture.clear()

        def log_samples(self, step, samples):
            # what the JSONL sink would write (the recorded rollouts' token records, serialised), not kept
            json.dumps([dataclasses.asdict(s) for s in samples])

        def log_checkpoint(self, step, path, final):
            pass

        def log_provenance(self, provenance):
            pass

        def should_stop(self):
            return False

        def check_owner(self):
            pass

        def close(self):
            pass

    import tempfile

    rec = Recorder()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="klq-bench-") as out:
        t_start, c_start = time.perf_counter(), time.process_time()
        trainer.train(cfg, out, sink=rec)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    walls, cpus = [t_start, *rec.wall], [c_start, *rec.cpu]
    iteration_s = [b - e for e, b in zip(walls[:-1], walls[1:])][a.warmup:]
    cpu_s = [b - e for e, b in zip(cpus[:-1], cpus[1:])][a.warmup:]
    measured = rec.metrics[a.warmup:]
    gens = rec.gen[a.warmup:]
    print("RESULT " + json.dumps({
        "side": f"ours-{a.worker}", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch_size": a.batch_size, "mini_batch_size": a.minibatch_size, "micro_batch_size": a.micro_batch_size,
        "iterations": len(measured), "iteration_s": iteration_s, "cpu_s": cpu_s,
        "generation_s": gens,
        "capture_s": rec.capture[a.warmup:],
        "scoring_s": [m["timing/rollout_s"] - g for m, g in zip(measured, gens)],
        "training_s": [w - m["timing/rollout_s"] for w, m in zip(iteration_s, measured)],
        "peak_gib": peak,
        # peak resident memory of the whole process (CPU: the models, optimizer state, activations)
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }), flush=True)


# ------------------------------------------------------------------------------------------ the driver


def _run(cmd: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise SystemExit(f"{cmd[1]} failed (exit {proc.returncode})")


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-tiny")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda: bf16 frozen models + autocast)")
    p.add_argument("--iterations", type=int, help="measured iterations per side and round")
    p.add_argument("--warmup", type=int, help="iterations run before measuring")
    p.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of all sides")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on every side")
    p.add_argument("--sides", default=",".join(ALL_SIDES), help=f"any of {', '.join(ALL_SIDES)}")
    p.add_argument("--num-generations", type=int, default=4, help="k of the group-baseline sides")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--minibatch-size", type=int)
    p.add_argument("--micro-batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--temperature", type=float, default=0.7, help="TRL PPOConfig's default")
    p.add_argument("--learning-rate", type=float, default=3e-6, help="TRL PPOConfig's default")
    p.add_argument("--peak-tflops", type=float, help="for MFU (default: H100 dense bf16 on cuda, none on cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--capture", type=int, default=8,
                   help="capture.train_rollouts of the '+capture' sides (ours-klq+capture, ...: the same run "
                   "recording that many training rollouts per iteration token by token); the plain ours-* sides "
                   "record none (as TRL)")
    p.add_argument("--trl-python", help="the Python that runs the TRL sides (default bench/.venv-trl's, made "
                                        "on first use by bench/setup_peer.sh)")
    p.add_argument("--trl-pythonpath", help="PYTHONPATH of the TRL sides, replacing the inherited one (TRL "
                                            "installed with pip --target: bench/gpu_check.sh)")
    p.add_argument("--report-from", nargs="+", metavar="JSON",
                   help="print the table of earlier runs' --json files (sides of several runs together) "
                        "instead of running")
    p.add_argument("--worker", choices=["ppo", "klq", *GROUP_ALGORITHMS], help=argparse.SUPPRESS)
    p.add_argument("--assets", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.report_from:
        report_saved(a.report_from)
        return
    run = RUNS[a.shape]
    a.batch_size = a.batch_size or run["batch"]
    a.minibatch_size = a.minibatch_size or min(run["minibatch"], a.batch_size)
    a.micro_batch_size = a.micro_batch_size or min(run["micro"], a.minibatch_size)
    a.epochs = a.epochs or run["epochs"]
    a.iterations = a.iterations or run["iterations"]
    a.warmup = run["warmup"] if a.warmup is None else a.warmup
    a.bf16 = a.device.startswith("cuda")
    if a.worker:
        run_ours(a)
        return

    import tiny_assets

    print(f"building/loading assets for {a.shape} under bench/.cache ...", flush=True)
    assets = tiny_assets.build(HERE / ".cache", a.shape)
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore", "TRL_EXPERIMENTAL_SILENCE": "1"}
    unknown = {s.removesuffix("+capture") for s in sides} - set(ALL_SIDES)
    if unknown:
        raise SystemExit(f"unknown sides {sorted(unknown)}: choose from {', '.join(ALL_SIDES)}")
    trl_python = Path(a.trl_python) if a.trl_python else HERE / ".venv-trl" / "bin" / "python"
    trl_env = env if a.trl_pythonpath is None else {**env, "PYTHONPATH": a.trl_pythonpath}
    if any(s.startswith("trl") for s in sides) and not a.trl_python and not (HERE / ".venv-trl" / ".ready").exists():
        print("setting up TRL's virtual environment (bench/setup_peer.sh trl) ...", flush=True)
        subprocess.run(["bash", str(HERE / "setup_peer.sh"), "trl"], check=True)
    common = ["--threads", str(a.threads), "--iterations", str(a.iterations), "--warmup", str(a.warmup),
              "--batch-size", str(a.batch_size), "--micro-batch-size", str(a.micro_batch_size),
              "--temperature", str(a.temperature), "--learning-rate", str(a.learning_rate),
              "--seed", str(a.seed), "--assets", str(assets), "--device", a.device]
    results: dict[str, list[dict]] = {s: [] for s in sides}
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for r in range(a.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:  # alternate the order: drift hits all sides alike
            print(f"round {r + 1}/{a.rounds}: {side} ... (load {os.getloadavg()[0]:.2f})", flush=True)
            if side == "trl":
                cmd = [str(trl_python), str(HERE / "trl_runner.py"), *common,
                       "--response-length", str(SHAPES[a.shape]["response_len"]),
                       "--num-mini-batches", str(a.batch_size // a.minibatch_size), "--epochs", str(a.epochs)]
                if a.bf16:
                    cmd.append("--bf16")
            elif side.startswith("trl-"):
                cmd = [str(trl_python), str(HERE / "trl_group_runner.py"), "--trainer", side.removeprefix("trl-"),
                       *common, "--minibatch-size", str(a.minibatch_size), "--epochs", str(a.epochs),
                       "--num-generations", str(a.num_generations),
                       "--prompt-length", str(SHAPES[a.shape]["prompt_len"]),
                       "--response-length", str(SHAPES[a.shape]["response_len"])]
                if a.bf16:
                    cmd.append("--bf16")
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--shape", a.shape, "--worker",
                       side.removeprefix("ours-").removesuffix("+capture"), *common,
                       "--minibatch-size", str(a.minibatch_size), "--epochs", str(a.epochs),
                       "--num-generations", str(a.num_generations),
                       "--capture", str(a.capture if side.endswith("+capture") else 0)]
            results[side].append(_run(cmd, trl_env if side.startswith("trl") else env))
    _report(a, results, started)


def report_saved(paths: list[str]) -> None:
    """The table of runs saved with --json (same shape and settings; a side in several files: all its
    rounds), e.g. one file per side when each side ran as a stage of its own (bench/gpu_check.sh)."""
    saved = [json.loads(Path(path).read_text()) for path in paths]
    args = argparse.Namespace(**{**saved[0]["args"], "json": None})
    settings = ("shape", "device", "batch_size", "minibatch_size", "micro_batch_size", "epochs", "threads")
    for other, path in zip(saved[1:], paths[1:]):
        differ = [k for k in settings if other["args"].get(k) != saved[0]["args"].get(k)]
        if differ:
            raise SystemExit(f"{path}: other settings than {paths[0]} ({', '.join(differ)})")
    results: dict[str, list[dict]] = {}
    for run in saved:
        for side, runs in run["results"].items():
            results.setdefault(side, []).extend(runs)
    args.rounds = max(len(runs) for runs in results.values())
    for run, path in zip(saved, paths):
        print(f"{path}: {', '.join(run['results'])} from {run['started']}; {run['machine']}")
    _report(args, results, saved[0]["started"], machine=f"{len(saved)} runs, the first on {saved[0]['machine']}")


def _value_free(side: str) -> bool:
    return side.removeprefix("ours-").removeprefix("trl-").removesuffix("+capture") in GROUP_ALGORITHMS


def _report(a: argparse.Namespace, results: dict[str, list[dict]], started: str, machine: str | None = None) -> None:
    shape = SHAPES[a.shape]
    P, T = shape["prompt_len"], shape["response_len"]
    fl = flops(a.shape, a.batch_size, a.epochs)
    fl_free = flops(a.shape, a.batch_size, a.epochs, value_model=False)
    peak = a.peak_tflops or PEAK_TFLOPS["cuda" if a.device.startswith("cuda") else "cpu"]
    tokens = {"generation": a.batch_size * T, "scoring": a.batch_size * (P + T),
              "training": a.epochs * a.batch_size * (P + T)}
    print()
    print(f"# train_throughput  {started}  {machine or _machine()}")
    print(f"shape {a.shape}: {shape['arch']} {shape['layers']} layers x {shape['dim']} dims, vocab {shape['vocab']}; "
          f"prompt {P} + response {T} tokens; batch {a.batch_size}, minibatch {a.minibatch_size}, "
          f"micro-batch {a.micro_batch_size}, {a.epochs} epochs; {a.device} "
          f"{'bf16 (trained models fp32 master + autocast)' if a.bf16 else 'fp32'}; {a.threads} threads; "
          f"{a.warmup} warm-up + {a.iterations} measured iterations x {a.rounds} rounds per side")
    print(f"model FLOPs per iteration: generation {fl['generation'] / 1e9:.1f} G, scoring {fl['scoring'] / 1e9:.1f} G, "
          f"training {fl['training'] / 1e9:.1f} G; without a value model (RLOO, GRPO sides; k = "
          f"{a.num_generations}): scoring {fl_free['scoring'] / 1e9:.1f} G, training {fl_free['training'] / 1e9:.1f} G")
    print()
    head = (f"{'side':<10} {'s/iter':>8} {'best':>6} {'cpu s/it':>8} {'ep/s':>7} {'resp tok/s':>10} | "
            f"{'gen s':>6} {'score s':>7} {'train s':>7} | {'gen tok/s':>9} {'score tok/s':>11} {'train tok/s':>11} | "
            + ("MFU gen/score/train" if peak else "GFLOP/s gen/score/train"))
    print("s/iter: median wall seconds per iteration; best: the fastest one; cpu s/it: median process CPU seconds")
    print(head)
    print("-" * len(head))
    summary: dict[str, dict[str, float]] = {}
    for side, runs in results.items():
        if not runs:
            continue

        def cat(key: str, runs=runs) -> list[float]:
            return [x for r in runs for x in (r.get(key) or [])]

        it, cpu = _med(cat("iteration_s")), _med(cat("cpu_s"))
        best = min(cat("iteration_s"), default=float("nan"))
        phases = {ph: _med(cat(f"{ph}_s")) for ph in ("generation", "scoring", "training")}
        summary[side] = {"iteration_s": it, "best_s": best, "cpu_s": cpu, **phases}
        side_fl = fl_free if _value_free(side) else fl
        rates = [side_fl[ph] / phases[ph] for ph in phases]
        rate_text = ("/".join(f"{100 * x / (peak * 1e12):.1f}%" for x in rates) if peak
                     else "/".join(f"{x / 1e9:.1f}" for x in rates))
        print(f"{side:<10} {it:8.2f} {best:6.2f} {cpu:8.2f} {a.batch_size / it:7.2f} {a.batch_size * T / it:10.1f} | "
              f"{phases['generation']:6.2f} {phases['scoring']:7.2f} {phases['training']:7.2f} | "
              f"{tokens['generation'] / phases['generation']:9.1f} {tokens['scoring'] / phases['scoring']:11.1f} "
              f"{tokens['training'] / phases['training']:11.1f} | {rate_text}")
        peaks = [r.get("peak_gib") for r in runs if r.get("peak_gib")]
        rss = [r.get("peak_rss_gib") for r in runs if r.get("peak_rss_gib")]
        summary[side]["peak_rss_gib"] = max(rss, default=float("nan"))
        print(f"{'':<10} peak process memory (RSS) {max(rss, default=float('nan')):.2f} GiB"
              + (f", peak GPU memory {max(peaks):.1f} GiB" if peaks else ""))
    print()
    if "ours-ppo" in summary and "trl" in summary:
        o, t = summary["ours-ppo"], summary["trl"]
        print(f"ours PPO / TRL PPO, episodes/s (wall):  {t['iteration_s'] / o['iteration_s']:.2f}x   (goal >= 2.5x, issue 17)")
        print(f"ours PPO / TRL PPO, best iteration:     {t['best_s'] / o['best_s']:.2f}x   (least disturbed by other load)")
        if o["cpu_s"] == o["cpu_s"] and "cpu_s" in t and t["cpu_s"] == t["cpu_s"]:
            print(f"ours PPO / TRL PPO, by CPU time:        {t['cpu_s'] / o['cpu_s']:.2f}x")
    for ours, peer, name in (("ours-grpo", "trl-grpo", "GRPO"), ("ours-rloo", "trl-rloo", "RLOO")):
        if ours in summary and peer in summary:
            o, t = summary[ours], summary[peer]
            print(f"ours {name} / TRL {name}, episodes/s (wall): {t['iteration_s'] / o['iteration_s']:.2f}x   (goal >= 2.0x)")
            print(f"ours {name} / TRL {name}, best iteration:    {t['best_s'] / o['best_s']:.2f}x")
            print(f"ours {name} / TRL {name}, by CPU time:       {t['cpu_s'] / o['cpu_s']:.2f}x")
    for side, name in (("ours-rloo", "RLOO"), ("ours-grpo", "GRPO")):
        if side in summary and "ours-ppo" in summary:
            o, g = summary["ours-ppo"], summary[side]
            print(f"{name} time per iteration / ours PPO's:   {g['iteration_s'] / o['iteration_s']:.2f} wall, "
                  f"{g['cpu_s'] / o['cpu_s']:.2f} CPU; peak RSS {g['peak_rss_gib']:.2f} / {o['peak_rss_gib']:.2f} GiB"
                  "   (no value model)")
    if "ours-ppo" in summary and "ours-klq" in summary:
        o, k = summary["ours-ppo"], summary["ours-klq"]
        print(f"KLQ time per iteration / ours PPO's:    {k['iteration_s'] / o['iteration_s']:.2f}    (goal <= 1.0)")
        print(f"KLQ / PPO, best iteration:              {k['best_s'] / o['best_s']:.2f}")
        print(f"KLQ / PPO, by CPU time:                 {k['cpu_s'] / o['cpu_s']:.2f}")
    for side in summary:
        plain = side.removesuffix("+capture")
        if side != plain and plain in summary:  # token records on vs off, the same run interleaved
            o, c = summary[plain], summary[side]
            runs = results[side]
            share = _med([c_s / it_s for r in runs for c_s, it_s in zip(r["capture_s"], r["iteration_s"])])
            gen = c["generation"] / o["generation"]
            print(f"{plain} capture {a.capture} rollouts/iteration on / off: {c['iteration_s'] / o['iteration_s']:.3f} "
                  f"wall, {c['best_s'] / o['best_s']:.3f} best, {c['cpu_s'] / o['cpu_s']:.3f} CPU   (goal < 1.03); "
                  f"recording the records: {100 * share:.2f}% of each iteration (median), generation with "
                  f"entropy / without: {gen:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "started": started, "machine": _machine(),
                                            "results": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
