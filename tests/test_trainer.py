"""End to end on the built-in task: KLQ, PPO, RLOO and GRPO learn, resuming equals not stopping, NaN stops a run.

The SFT baseline is measured independently: the first iteration's rollouts are sampled from the
untouched SFT policy, and the learned policy is judged by the mean of its last iterations' rollouts
(RM score and the task's gold reward) on fresh prompts.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from klq import algorithms
from klq.config import load_config
from klq.judge.backends import GoldJudge
from klq.judge.core import Comparison, run_judgement
from klq.judge.generate import generate_responses
from klq.sinks import JSONLSink, read_jsonl
from klq.tasks.builtin import BuiltinTask
from klq.trainer import NonFiniteLossError, latest_checkpoint, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TIMING_KEYS = ("eps", "timing/", "perf/")


def config(algorithm: str, **overrides):
    return load_config(CONFIGS / f"builtin-{algorithm}.yaml", overrides)


ALGO_KEYS = {
    "klq": ["loss/q_avg", "q/action_value_avg", "q/state_value_avg", "q/target_avg", "q/td_error_avg"],
    "ppo": ["loss/policy_avg", "loss/value_avg", "policy/clipfrac_avg", "val/clipfrac_avg"],
    "rloo": ["loss/policy_avg", "policy/clipfrac_avg", "policy/clipfrac_low_avg", "policy/clipfrac_high_avg",
             "reward_std", "frac_reward_zero_std"],
    "grpo": ["loss/policy_avg", "loss/kl_avg", "policy/clipfrac_avg", "policy/clipfrac_low_avg",
             "policy/clipfrac_high_avg", "reward_std", "frac_reward_zero_std"],
}
VALUE_FREE = ("rloo", "grpo")


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["klq", "ppo", "rloo", "grpo"])
def test_training_improves_reward_and_gold_over_sft(algorithm, builtin_assets, tmp_path):
    cfg = config(algorithm, seed=1)
    result = train(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, cfg.train.num_iterations + 1))
    sft_score, sft_gold = rows[0]["objective/scores"], rows[0]["objective/gold_scores"]
    last = rows[-5:]
    score = sum(r["objective/scores"] for r in last) / len(last)
    gold = sum(r["objective/gold_scores"] for r in last) / len(last)
    kl = sum(r["objective/kl"] for r in last) / len(last)
    print(f"\n{algorithm}: RM score {sft_score:+.3f} -> {score:+.3f}, gold {sft_gold:+.3f} -> {gold:+.3f}, "
          f"KL {kl:.2f} nats, {rows[-1]['perf/elapsed_s']:.1f} s")
    assert score > sft_score + 0.3, "reward-model score did not rise clearly above the SFT policy's"
    assert gold > sft_gold + 0.3, "gold reward did not rise clearly above the SFT policy's"
    assert all(math.isfinite(r["objective/kl"]) for r in rows)
    assert 0 <= kl < 25, "KL to the reference must stay bounded"
    for key in ["objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
                "objective/scores", "policy/approxkl_avg", "policy/entropy_avg", "val/ratio",
                "val/num_eos_tokens", "lr", "episode", "eps"]:
        assert key in rows[-1], key
    assert [k for k in ALGO_KEYS[algorithm] if k not in rows[-1]] == []
    if algorithm in VALUE_FREE:  # no value model: no value metrics at all
        assert not [k for k in rows[-1] if k.startswith(("loss/value", "val/clipfrac", "q/"))]
    samples = [s for s in read_jsonl(tmp_path / "samples.jsonl") if s["kind"] == "eval"]
    assert {s["step"] for s in samples} == {5, 10, 15, 20, 25, 30}
    assert all(s["gold_score"] is not None and s["response"] for s in samples)
    final = result.final_checkpoint
    assert final is not None and (final / "policy" / "model.safetensors").exists()
    assert (final / "value").exists() == (algorithm not in VALUE_FREE)
    # The gold judge (the task's ground truth, both presentation orders) prefers the trained policy's
    # sampled responses to the SFT policy's on 32 held-out prompts.
    task = BuiltinTask()
    prompts = task.prompts("eval")[:32]
    texts = [p.text for p in prompts]
    trained, sft = (generate_responses(path, None, texts, cfg.rollout.response_length, greedy=False, seed=3,
                                       device="cpu") for path in (str(final / "policy"), "builtin:sft"))
    verdict = run_judgement([Comparison(p.id, p.text, a, b) for p, a, b in zip(prompts, trained, sft)],
                            GoldJudge(task)).summary
    print(f"{algorithm} vs SFT, gold judge: win-rate {verdict.win_rate:.2f} "
          f"[{verdict.ci_low:.2f}, {verdict.ci_high:.2f}] over {verdict.n} prompts")
    assert verdict.ci_low > 0.5, "the gold judge must prefer the trained policy to the SFT policy"


class StopAfter(JSONLSink):
    """A JSONL sink that asks the trainer to stop once `n` iterations are logged (a user's cancel)."""

    def __init__(self, out_dir, n):
        super().__init__(out_dir)
        self.n, self.logged = n, 0

    def log_metrics(self, step, metrics):
        super().log_metrics(step, metrics)
        self.logged += 1

    def should_stop(self):
        return self.logged >= self.n


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]


def straight_and_resumed(cfg, tmp_path):
    """Train ``cfg`` straight through into tmp_path/straight, and into tmp_path/resumed interrupted after
    iteration 3 (checkpoint at 2; step 3's checkpoint dropped, so what was written after step 2 is replayed)
    and resumed. Returns the two run directories."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(cfg, straight)
    stopped = train(cfg, resumed, sink=StopAfter(resumed, 3))
    assert stopped.stopped and stopped.iterations_done == 3
    (resumed / "checkpoints" / "step-0000003").rename(resumed / "dropped")
    assert latest_checkpoint(resumed).name == "step-0000002"
    train(cfg, resumed, resume=True)
    return straight, resumed


@pytest.mark.parametrize("algorithm", ["klq", "ppo", "rloo", "grpo"])
def test_resumed_run_equals_uninterrupted(algorithm, builtin_assets, tmp_path):
    cfg = config(algorithm, **{"train.total_episodes": 64 * 6, "checkpoint_interval": 2, "eval_interval": 3})
    straight_dir, resumed_dir = straight_and_resumed(cfg, tmp_path)
    straight = comparable(read_jsonl(straight_dir / "metrics.jsonl"))
    resumed = comparable(read_jsonl(resumed_dir / "metrics.jsonl"))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed == straight
    assert read_jsonl(straight_dir / "samples.jsonl") == read_jsonl(resumed_dir / "samples.jsonl")


@pytest.mark.parametrize("algorithm", ["klq", "ppo"])
def test_groups_of_two_responses_per_prompt(algorithm, builtin_assets, tmp_path, monkeypatch):
    """rollout.num_generations 2: an iteration's 16 responses are 8 prompts sampled twice (adjacent rows),
    KLQ and PPO train on them, and eval still samples one response per held-out prompt."""
    from klq import trainer

    batches = []
    original = trainer.generate_and_score

    def recording(*args, **kwargs):
        batches.append(original(*args, **kwargs))
        return batches[-1]

    monkeypatch.setattr(trainer, "generate_and_score", recording)
    cfg = config(algorithm, **{
        "train.total_episodes": 16, "train.batch_size": 16, "train.minibatch_size": 4,
        "train.micro_batch_size": 4, "train.num_epochs": 1, "rollout.num_generations": 2,
        "eval_interval": 1, "task.num_eval_prompts": 3,
    })  # fmt: skip
    result = train(cfg, tmp_path)
    assert result.iterations_done == 1
    rollout, evaluation = batches
    assert len(rollout) == 16 and rollout.num_generations == 2
    ids = [p.id for p in rollout.prompts]
    assert all(ids[2 * g] == ids[2 * g + 1] for g in range(8)) and len(set(ids)) == 8
    assert torch.equal(rollout.query_ids[0::2], rollout.query_ids[1::2])
    assert len(evaluation) == 3 and evaluation.num_generations == 1
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert row["episode"] == 16 and all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    assert ("loss/q_avg" if algorithm == "klq" else "loss/policy_avg") in row
    assert len([s for s in read_jsonl(tmp_path / "samples.jsonl") if s["kind"] == "eval"]) == 3


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(builtin_assets, tmp_path, monkeypatch):
    cfg = config("klq", **{"train.total_episodes": 64 * 4, "checkpoint_interval": 2})
    calls = {"n": 0}
    original = algorithms.KLQ.loss
    losses_per_iteration = cfg.train.num_epochs * cfg.train.batch_size // cfg.train.micro_batch_size

    def poisoned(self, logp, values, mb, mask):
        loss, stats = original(self, logp, values, mb, mask)
        calls["n"] += 1
        if calls["n"] > 2 * losses_per_iteration:  # the third iteration diverges
            loss = loss * float("nan")
        return loss, stats

    monkeypatch.setattr(algorithms.KLQ, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at iteration 3.*last good checkpoint.*step-0000002"):
        train(cfg, tmp_path)
    kept = latest_checkpoint(tmp_path)
    assert kept.name == "step-0000002"
    state = torch.load(kept / "trainer_state.pt", weights_only=False)
    assert state["iteration"] == 2 and not state["final"]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_klq_train_cli(builtin_assets, tmp_path):
    """`klq train CONFIG` and `klq train --resume DIR` as a user runs them (a real subprocess)."""
    import os
    import subprocess
    import sys

    def klq(*args):
        return subprocess.run([sys.executable, "-m", "klq.cli", *args], capture_output=True, text=True,
                              env=dict(os.environ), timeout=600)

    out = tmp_path / "run"
    done = klq("train", str(CONFIGS / "builtin-klq.yaml"), "--set", "train.total_episodes=128", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "finished after 2 iterations" in done.stdout and "objective/gold_scores=" in done.stdout
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert (out / "checkpoints" / "step-0000002" / "policy" / "model.safetensors").exists()
    from klq.provenance import collect

    recorded = json.loads((out / "provenance.json").read_text())  # what trained it
    assert recorded == {**collect(), "device": "cpu"}
    again = klq("train", "--resume", str(out))
    assert again.returncode == 1 and "already finished" in again.stderr
    bad = klq("train", str(CONFIGS / "builtin-klq.yaml"), "--set", "train.minibatch_size=48", "--out", str(out))
    assert bad.returncode == 2 and "train.minibatch_size (48) must divide train.batch_size (64)" in bad.stderr
