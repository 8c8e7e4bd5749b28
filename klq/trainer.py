"""The on-policy loop shared by KLQ and PPO.

    for each iteration:
        rollout   sample B responses (KV cache; B/k prompts, k = num_generations each), score them:
                  logp_old, logp_ref, V_old (algorithms with a value model), R
        targets   the algorithm turns the batch into fixed per-token targets (no grad)
        update    E epochs of shuffled minibatches, gradient accumulation over micro-batches,
                  grad-norm clipping, one AdamW step per minibatch (policy and value as two groups;
                  the policy alone for algorithms without a value model, which is then never built)
        report    metrics to the sink; held-out samples every eval_interval (with eval_judge, judged
                  against the reference's responses: eval/win_rate_vs_ref); checkpoints every
                  checkpoint_interval and at the end
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import get_scheduler
from transformers.utils import logging as hf_logging

from klq import losses
from klq.algorithms import make_algorithm
from klq.config import RunConfig
from klq.judge.in_training import WinRateVsReference
from klq.models import Models, load_models, resolve_device, resolve_dtype, response_logprobs
from klq.provenance import collect as collect_provenance
from klq.rollout import Rollout, generate_and_score
from klq.sinks import JSONLSink, SampleRecord, Sink, TokenRecord
from klq.tasks import Prompt, Task, filter_prompts_by_length, load_task

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"


class TrainingError(RuntimeError):
    """A run that cannot go on; the message is meant for the user."""


class NonFiniteLossError(TrainingError):
    pass


@dataclass
class TrainResult:
    out_dir: Path
    iterations_done: int
    stopped: bool  # ended early by the sink (a cancel)
    final_checkpoint: Path | None
    last_metrics: dict[str, float]


# ------------------------------------------------------------------------------------------ checkpoints


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run (complete = its state file was written last)."""
    root = Path(out_dir) / CHECKPOINTS
    # step-N only: a step-N.tmp-PID directory is a checkpoint still being written (see save_checkpoint).
    done = sorted(p for p in root.glob("step-*") if p.name[5:].isdigit() and (p / STATE_FILE).exists()) \
        if root.exists() else []
    return done[-1] if done else None


def save_checkpoint(out_dir: Path, iteration: int, models: Models, policy, value, optimizer, scheduler,
                    cfg: RunConfig, final: bool, before_publish: Callable[[], None] | None = None) -> Path:
    """policy/ and value/ (value None: no value model, no value/) in HF layout (safetensors), then trainer_state.pt. Written to a temp directory and
    renamed, so a crash mid-write never leaves a checkpoint that looks complete. The temp directory is this
    process's own, and ``before_publish`` (Sink.check_owner) may refuse the rename, so that a worker whose
    run was taken over never replaces the new owner's checkpoint."""
    target = Path(out_dir) / CHECKPOINTS / f"step-{iteration:07d}"
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp / "policy")
    models.tokenizer.save_pretrained(tmp / "policy")
    if value is not None:
        value.model.save_pretrained(tmp / "value")
    state = {
        "iteration": iteration,
        "final": final,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    torch.save(state, tmp / STATE_FILE)
    (tmp / "run_config.json").write_text(cfg.model_dump_json(indent=2))
    if before_publish is not None:
        try:
            before_publish()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _restore_rng(rng: dict) -> None:
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# ---------------------------------------------------------------------------------------------- prompts


def batch_prompts(prompts: list[Prompt], iteration: int, num_prompts: int, rank: int, world: int,
                  seed: int) -> list[Prompt]:
    """The `num_prompts` prompts of one iteration (per process): consecutive slices of seeded permutations of
    the prompt set, a new permutation per pass. A pure function of the iteration, so a resumed run sees the
    same prompts."""
    n = len(prompts)
    start = (iteration * world + rank) * num_prompts
    chosen = []
    for index in range(start, start + num_prompts):
        data_pass, offset = divmod(index, n)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + data_pass)
        chosen.append(prompts[int(torch.randperm(n, generator=generator)[offset])])
    return chosen


# ------------------------------------------------------------------------------------------------ train


def _metric_name(key: str) -> str:
    return key if key == "val/ratio" else f"{key}_avg"


def train(cfg: RunConfig, out_dir: str | Path, sink: Sink | None = None, resume: bool = False,
          progress: bool = False, judge_settings: Any = None) -> TrainResult:
    """Run (or resume) one training run, writing checkpoints under out_dir and reporting to `sink`
    (default: JSONL files in out_dir). `judge_settings`: the OpenAI-compatible endpoint of an `eval_judge`
    with backend openai (`klq.judge.backends.JudgeSettings.from_any`; None = the environment)."""
    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the run's own progress
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tc, rc = cfg.train, cfg.rollout
    device = resolve_device(cfg.device)
    bf16 = resolve_dtype(cfg.model.dtype, device) == torch.bfloat16
    accelerator = Accelerator(
        cpu=device.type == "cpu", gradient_accumulation_steps=tc.minibatch_size // tc.micro_batch_size,
        mixed_precision="bf16" if bf16 else "no",
    )
    device = accelerator.device
    if resume and accelerator.is_main_process:
        # half-written checkpoints of earlier attempts (a crash mid-save); a stale writer still busy with
        # one finds it gone, and is refused anyway (before_publish)
        for leftover in (out_dir / CHECKPOINTS).glob("step-*.tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if resume and checkpoint is None:
        log.warning("no checkpoint in %s: starting from the beginning", out_dir)
    state = torch.load(checkpoint / STATE_FILE, weights_only=False) if checkpoint else None
    if state is not None and state.get("final"):
        raise TrainingError(f"{out_dir} already finished (final checkpoint {checkpoint.name}); nothing to resume")
    start_iteration = state["iteration"] if state else 0
    if sink is None and accelerator.is_main_process:
        sink = JSONLSink(out_dir, resume_step=start_iteration if resume else None)
    (out_dir / "run_config.json").write_text(cfg.model_dump_json(indent=2))
    if sink is not None and accelerator.is_main_process:
        sink.log_provenance(collect_provenance(device))

    random.seed(cfg.seed + accelerator.process_index)
    torch.manual_seed(cfg.seed + accelerator.process_index)
    task: Task = load_task(cfg.task)
    algorithm = make_algorithm(cfg)
    with_value = algorithm.uses_value_model
    models = load_models(
        cfg.model, device,
        policy_dir=str(checkpoint / "policy") if checkpoint else None,
        value_dir=str(checkpoint / "value") if checkpoint and with_value else None,
        with_value=with_value,
    )
    for module in (models.reference, models.reward):
        module.to(device)
    train_prompts = filter_prompts_by_length(task.prompts("train"), models.tokenizer, cfg.task.max_prompt_length)
    eval_prompts = filter_prompts_by_length(task.prompts("eval"), models.tokenizer, cfg.task.max_prompt_length)
    eval_prompts = eval_prompts[: cfg.task.num_eval_prompts]
    if not train_prompts:
        raise TrainingError(f"task {cfg.task.name!r} has no training prompts of at most "
                            f"{cfg.task.max_prompt_length} tokens")

    num_iterations = tc.num_iterations
    updates_per_iteration = tc.num_epochs * (tc.batch_size // tc.minibatch_size)
    param_groups = [{"params": [p for p in models.policy.parameters() if p.requires_grad], "lr": tc.learning_rate}]
    if models.value is not None:
        param_groups.append({"params": [p for p in models.value.parameters() if p.requires_grad],
                             "lr": tc.value_learning_rate or tc.learning_rate})
    optimizer = torch.optim.AdamW(
        param_groups,
        eps=tc.adam_eps, weight_decay=tc.weight_decay,
        # One fused kernel per step instead of a loop of per-parameter ops (fp32 master weights on CPU and GPU).
        fused=device.type in ("cpu", "cuda"),
    )
    # lr_schedule_unit "iteration" (the fork, TRL 0.12): one schedule step per iteration, after its updates.
    schedule_steps = num_iterations * (updates_per_iteration if tc.lr_schedule_unit == "update" else 1)
    scheduler = get_scheduler(tc.lr_scheduler, optimizer, num_warmup_steps=tc.warmup_steps,
                              num_training_steps=schedule_steps)
    if models.value is not None:
        policy, value, optimizer = accelerator.prepare(models.policy, models.value, optimizer)
    else:
        (policy, optimizer), value = accelerator.prepare(models.policy, optimizer), None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
    unwrapped_policy = accelerator.unwrap_model(policy)
    unwrapped_value = accelerator.unwrap_model(value) if value is not None else None
    # No-grad passes use the unwrapped modules (models.policy/value are the same objects).
    gold = getattr(task, "gold_reward", None)
    world = accelerator.num_processes
    win_rate = _win_rate_vs_reference(cfg, task, eval_prompts, models, out_dir, device, judge_settings) \
        if accelerator.is_main_process else None

    # token records of a few training rollouts per iteration (the main process's own batch)
    capture_train = cfg.capture.train_rollouts > 0 and accelerator.is_main_process
    bar = None
    if progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_iterations * tc.batch_size * world, initial=start_iteration * tc.batch_size * world,
                   unit="ep", desc=f"{cfg.algorithm} {cfg.name or ''}".strip(), dynamic_ncols=True)

    last_checkpoint = checkpoint
    metrics: dict[str, float] = {}
    stopped = False
    iteration = start_iteration
    run_start = time.perf_counter()
    try:
        while iteration < num_iterations:
            if _should_stop(accelerator, sink):
                stopped = True
                break
            t0 = time.perf_counter()
            # batch_size responses: batch_size / k prompts, each sampled k = num_generations times
            prompts = batch_prompts(train_prompts, iteration, tc.batch_size // rc.num_generations,
                                    accelerator.process_index, world, cfg.seed)
            batch = generate_and_score(models, unwrapped_policy, prompts, rc, device, cfg.task.max_prompt_length,
                                       tc.micro_batch_size, gold, num_generations=rc.num_generations,
                                       with_entropy=capture_train)
            if not torch.isfinite(batch.scores).all():
                raise TrainingError(f"reward model returned non-finite scores at iteration {iteration + 1}")
            t1 = time.perf_counter()
            targets, target_metrics = algorithm.targets(batch)
            captured = _capture_train(cfg, algorithm, batch, models.tokenizer, iteration + 1) if capture_train else []
            iteration_lr = scheduler.get_last_lr()[0]
            stats = _update(cfg, algorithm, accelerator, policy, value, optimizer, scheduler, batch, targets,
                            iteration, last_checkpoint)
            if tc.lr_schedule_unit == "iteration":
                scheduler.step()
            t2 = time.perf_counter()
            iteration += 1

            metrics = _iteration_metrics(cfg, batch, stats, target_metrics, accelerator)
            tokens = batch.response_mask.sum().item() * world
            metrics.update({
                # per update: the rate after this iteration's updates; per iteration: the rate it trained at
                "lr": scheduler.get_last_lr()[0] if tc.lr_schedule_unit == "update" else iteration_lr,
                "episode": float(iteration * tc.batch_size * world),
                "iteration": float(iteration),
                "eps": tc.batch_size * world / (t2 - t0),
                "timing/rollout_s": t1 - t0,
                "timing/update_s": t2 - t1,
                "timing/iteration_s": t2 - t0,
                "perf/tokens_per_s": tokens / (t2 - t0),
                "perf/rollout_tokens_per_s": tokens / (t1 - t0),
                "perf/elapsed_s": time.perf_counter() - run_start,
            })
            if iteration % cfg.eval_interval == 0 or iteration == num_iterations:
                metrics.update(_evaluate(cfg, models, unwrapped_policy, eval_prompts, device, gold, sink, iteration,
                                         accelerator, win_rate, algorithm=algorithm, train_samples=captured))
            elif captured and sink is not None:
                sink.log_samples(iteration, captured)
            if accelerator.is_main_process and sink is not None:
                sink.log_metrics(iteration, metrics)
            if iteration % cfg.checkpoint_interval == 0 or iteration == num_iterations:
                last_checkpoint = _checkpoint(out_dir, iteration, models, unwrapped_policy, unwrapped_value,
                                              optimizer, scheduler, cfg, iteration == num_iterations, accelerator,
                                              sink)
            if bar is not None:
                bar.update(tc.batch_size * world)
                bar.set_postfix(reward=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.2f}")
        if stopped and iteration > start_iteration and (last_checkpoint is None or
                                                         not last_checkpoint.name.endswith(f"{iteration:07d}")):
            last_checkpoint = _checkpoint(out_dir, iteration, models, unwrapped_policy, unwrapped_value, optimizer,
                                          scheduler, cfg, False, accelerator, sink)
    finally:
        if bar is not None:
            bar.close()
        if win_rate is not None:
            win_rate.close()
        if sink is not None and accelerator.is_main_process:
            sink.close()
    return TrainResult(out_dir, iteration, stopped, last_checkpoint, metrics)


def _should_stop(accelerator: Accelerator, sink: Sink | None) -> bool:
    """The main process asks the sink; every process gets the same answer (or data parallelism hangs)."""
    stop = [bool(sink is not None and accelerator.is_main_process and sink.should_stop())]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(stop, from_process=0)
    return stop[0]


def _checkpoint(out_dir, iteration, models, policy, value, optimizer, scheduler, cfg, final, accelerator, sink):
    accelerator.wait_for_everyone()
    path = None
    if accelerator.is_main_process:
        path = save_checkpoint(out_dir, iteration, models, policy, value, optimizer, scheduler, cfg, final,
                               before_publish=sink.check_owner if sink is not None else None)
        if sink is not None:
            sink.log_checkpoint(iteration, str(path), final)
    accelerator.wait_for_everyone()
    return path or latest_checkpoint(out_dir)


def _update(cfg: RunConfig, algorithm, accelerator: Accelerator, policy, value, optimizer, scheduler,
            batch: Rollout, targets: dict[str, torch.Tensor], iteration: int, last_checkpoint) -> dict[str, float]:
    """E epochs over shuffled minibatches; returns the mean of each statistic over micro-batches. Rows are
    shuffled one by one, so a minibatch may split a group of num_generations responses: every target
    (group baselines included) was computed over the whole batch before the first upda. `value` None (an
    algorithm without a value model): no value forward, and the algorithm's loss gets values None."""
    tc = cfg.train
    T = cfg.rollout.response_length
    data = {"logp_old": batch.logp_old, "logp_ref": batch.logp_ref, **targets}
    if value is not None:
        data["values_old"] = batch.values_old
    trained = (policy,) if value is None else (policy, value)
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    sums: dict[str, float] = defaultdict(float)
    count = 0
    for epoch in range(tc.num_epochs):
        order = torch.randperm(len(batch), device=input_ids.device)
        for mb_start in range(0, len(batch), tc.minibatch_size):
            mb_rows = order[mb_start : mb_start + tc.minibatch_size]
            for micro_start in range(0, tc.minibatch_size, tc.micro_batch_size):
                rows = mb_rows[micro_start : micro_start + tc.micro_batch_size]
                mask = batch.response_mask[rows]
                with accelerator.accumulate(*trained):
                    logp, entropy = response_logprobs(policy, input_ids[rows], attention_mask[rows],
                                                      batch.response_ids[rows], cfg.rollout.temperature)
                    values = None if value is None else value(input_ids[rows], attention_mask[rows], T)
                    mb = {k: v[rows] for k, v in data.items()}
                    loss, stats = algorithm.loss(logp, values, mb, mask)
                    if not torch.isfinite(loss):
                        where = f"iteration {iteration + 1}, epoch {epoch + 1}, minibatch {mb_start // tc.minibatch_size + 1}"
                        kept = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint yet"
                        raise NonFiniteLossError(f"loss became {loss.item()} at {where}; run stopped ({kept})")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if tc.max_grad_norm is not None:
                            accelerator.clip_grad_norm_(
                                [p for group in optimizer.param_groups for p in group["params"]], tc.max_grad_norm
                            )
                        optimizer.step()
                        if tc.lr_schedule_unit == "update":
                            scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    log_ratio = torch.where(mask.bool(), logp - mb["logp_old"], 0.0)
                    stats["policy/approxkl"] = 0.5 * losses.masked_mean(log_ratio**2, mask)
                    stats["val/ratio"] = losses.masked_mean(log_ratio.exp(), mask)
                    stats["policy/entropy"] = losses.masked_mean(entropy, mask)
                for key, val in stats.items():
                    sums[key] += float(val)
                count += 1
    return {key: total / count for key, total in sums.items()}


def _mean(accelerator: Accelerator, values: torch.Tensor) -> float:
    """Mean over all rows of all processes."""
    return accelerator.gather_for_metrics(values.detach().float()).mean().item()


def _iteration_metrics(cfg: RunConfig, batch: Rollout, stats: dict[str, float], target_metrics: dict[str, float],
                       accelerator: Accelerator) -> dict[str, float]:
    kl = batch.kl
    entropy = losses.masked_sum(-batch.logp_old, batch.response_mask, dim=1)
    metrics = {
        "objective/kl": _mean(accelerator, kl),
        "objective/entropy": _mean(accelerator, entropy),
        "objective/non_score_reward": _mean(accelerator, -cfg.kl_coef * kl),
        "objective/rlhf_reward": _mean(accelerator, batch.scores - cfg.kl_coef * kl),
        "objective/scores": _mean(accelerator, batch.scores),
        "objective/raw_scores": _mean(accelerator, batch.raw_scores),
        "val/num_eos_tokens": float(accelerator.gather_for_metrics(batch.ended.long()).sum().item()),
        "rollout/response_length": _mean(accelerator, batch.response_mask.sum(1)),
    }
    if batch.gold_scores is not None:
        metrics["objective/gold_scores"] = _mean(accelerator, batch.gold_scores)
    metrics.update({_metric_name(k): v for k, v in stats.items()})
    metrics.update(target_metrics)
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(f"non-finite metrics {bad} after iteration update; run stopped")
    return metrics


# ------------------------------------------------------------------------------------------ token records


def capture_rows(scores: torch.Tensor, k: int) -> list[int]:
    """The rows of a batch whose training rollouts are recorded token by token: the k // 2 lowest and the
    k - k // 2 highest reward-model scores (all rows when k >= B), in row order. scores: (B,)."""
    if k >= len(scores):
        return list(range(len(scores)))
    order = torch.argsort(scores.detach().float().cpu(), stable=True).tolist()
    return sorted(order[: k // 2] + order[len(order) - (k - k // 2):])


def _token_pieces(tokenizer, rows: list[list[int]]) -> list[list[str]]:
    """Each token's text decoded alone (a byte-level BPE piece of a multi-byte character shows as the
    replacement character). One batched decode over the distinct ids."""
    distinct = sorted({i for ids in rows for i in ids})
    decoded = tokenizer.batch_decode([[i] for i in distinct], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
    piece = dict(zip(distinct, decoded, strict=True))
    return [[piece[i] for i in ids] for ids in rows]


def sample_records(batch: Rollout, quantities: dict[str, torch.Tensor], rows: list[int], tokenizer, step: int,
                   kind: str) -> list[SampleRecord]:
    """SampleRecords with token records for `rows` of `batch`; `quantities`: name -> (B, T) tensors
    (Algorithm.token_quantities). One device-to-host copy for all of them. A training rollout's
    sample_index is its row in the batch; an eval sample's is 0 (one response per prompt)."""
    index = torch.tensor(rows, device=batch.response_mask.device)
    names = list(quantities)
    values = torch.stack([quantities[n][index].float() for n in names]).cpu().tolist() if names else []
    lengths = batch.response_mask[index].sum(1).long().tolist()
    ids = [row[:n] for row, n in zip(batch.response_ids[index].tolist(), lengths, strict=True)]
    pieces = _token_pieces(tokenizer, ids)
    kl, scores = batch.kl[index].tolist(), batch.scores[index].tolist()
    gold = None if batch.gold_scores is None else batch.gold_scores[index].tolist()
    records = []
    for j, row in enumerate(rows):
        n = lengths[j]
        prompt = batch.prompts[row]
        records.append(SampleRecord(
            step=step, prompt_id=prompt.id, prompt=prompt.text, response=batch.responses[row], score=scores[j],
            kl=kl[j], gold_score=None if gold is None else gold[j], stopped_by=batch.stopped_by[row], kind=kind,
            sample_index=row if kind == "train" else 0, response_length=n,
            token_record=TokenRecord(ids[j], pieces[j], {name: values[q][j][:n] for q, name in enumerate(names)}),
        ))
    return records


def _capture_train(cfg: RunConfig, algorithm, batch: Rollout, tokenizer, step: int) -> list[SampleRecord]:
    """The token records of iteration `step`'s recorded training rollouts (capture.train_rollouts of them),
    from what the rollout and the algorithm's targets already computed."""
    rows = capture_rows(batch.scores, cfg.capture.train_rollouts)
    with torch.no_grad():
        return sample_records(batch, algorithm.token_quantities(batch), rows, tokenizer, step, "train")


@torch.no_grad()
def _eval_rollout(cfg: RunConfig, models: Models, policy, prompts: list[Prompt], device, gold,
                  with_entropy: bool = False) -> Rollout:
    """`policy`'s responses to the held-out prompts as eval decodes them (greedy unless eval_temperature >
    0), scored: the trained policy's at each eval, the reference's once for the eval judge."""
    greedy = cfg.rollout.eval_temperature == 0
    rollout_cfg = cfg.rollout if greedy else cfg.rollout.model_copy(update={"temperature": cfg.rollout.eval_temperature})
    return generate_and_score(models, policy, prompts, rollout_cfg, device, cfg.task.max_prompt_length,
                              cfg.train.micro_batch_size, gold, greedy=greedy, with_entropy=with_entropy)


def _win_rate_vs_reference(cfg: RunConfig, task: Task, prompts: list[Prompt], models: Models, out_dir: Path,
                           device, settings: Any) -> WinRateVsReference | None:
    """`eval_judge`'s judge and the reference's responses to the eval prompts, made once per run (read
    back from the run directory on resume); None when no judge is configured. Made under a forked RNG
    seeded by the run's seed, so the training draws the same random numbers with a judge as without."""
    if cfg.eval_judge.backend is None or not prompts:
        return None

    def generate_reference() -> list[str]:
        return _eval_rollout(cfg, models, models.reference, prompts, device, None).responses

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        try:
            return WinRateVsReference.for_run(cfg, task, prompts, out_dir, str(device), generate_reference,
                                              settings)
        except ValueError as err:
            raise TrainingError(str(err)) from err


@torch.no_grad()
def _evaluate(cfg: RunConfig, models: Models, policy, prompts: list[Prompt], device, gold, sink: Sink | None,
              iteration: int, accelerator: Accelerator, win_rate: WinRateVsReference | None, *,
              algorithm=None, train_samples: list[SampleRecord] = ()) -> dict[str, float]:
    """Responses to the held-out prompts (greedy unless eval_temperature > 0), recorded as samples with
    their token records (`algorithm`'s quantities over this batch; default: cfg's algorithm), in one
    write together with `train_samples` (the iteration's recorded training rollouts); at the evals
    `win_rate` is due, judged against the reference's responses."""
    if not prompts or not accelerator.is_main_process:
        return {}
    batch = _eval_rollout(cfg, models, policy, prompts, device, gold, with_entropy=True)
    kl = batch.kl
    if sink is not None:
        algorithm = algorithm or make_algorithm(cfg)
        quantities = algorithm.eval_token_quantities(batch)
        records = sample_records(batch, quantities, list(range(len(prompts))), models.tokenizer, iteration, "eval")
        sink.log_samples(iteration, [*train_samples, *records])
    out = {"eval/scores": batch.scores.mean().item(), "eval/kl": kl.mean().item()}
    if batch.gold_scores is not None:
        out["eval/gold_scores"] = batch.gold_scores.mean().item()
    if win_rate is not None and win_rate.due(iteration):
        out.update(win_rate.metrics(batch.responses))
    return out


def load_run_config(out_dir: str | Path) -> RunConfig:
    return RunConfig.model_validate(json.loads((Path(out_dir) / "run_config.json").read_text()))
