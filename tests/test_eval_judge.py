"""The in-training judge (`eval_judge`): the win-rate against the reference on the built-in task rises as the
gold reward rises; the judge is built and the reference's responses generated once per run (read back on
resume); the logged keys and their interval agree with `klq.judge.stats`; a judge leaves training as it was."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from scipy.stats import spearmanr

from klq import trainer
from klq.config import RunConfig, format_validation_error, load_config
from klq.judge import in_training
from klq.judge.in_training import (
    CI_HIGH_KEY,
    CI_LOW_KEY,
    COUNT_KEYS,
    REFERENCE_FILE,
    WIN_RATE_KEY,
    judge_spec,
)
from klq.judge.stats import wilson_interval
from klq.sinks import JSONLSink, read_jsonl
from klq.trainer import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
JUDGE_KEYS = (WIN_RATE_KEY, "eval/judge_")
TIMING_KEYS = ("eps", "timing/", "perf/")


def judged(rows):
    return [r for r in rows if WIN_RATE_KEY in r]


@pytest.mark.slow
def test_win_rate_vs_reference_rises_with_gold(builtin_assets, tmp_path):
    """KLQ on the built-in task, judged by the gold reward at every eval (sampled eval responses on 64
    prompts, so that eval measures what training samples): the win-rate against the SFT policy starts
    near it and climbs, together with the eval gold reward."""
    cfg = load_config(CONFIGS / "builtin-klq.yaml", {
        "seed": 1, "train.total_episodes": 64 * 20, "eval_interval": 2, "task.num_eval_prompts": 64,
        "rollout.eval_temperature": 1.0, "eval_judge.backend": "gold",
    })
    train(cfg, tmp_path)
    rows = judged(read_jsonl(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(2, 21, 2))
    rate = [r[WIN_RATE_KEY] for r in rows]
    gold = [r["eval/gold_scores"] for r in rows]
    for r in rows:
        print(f"step {r['step']:2d}: eval gold {r['eval/gold_scores']:+.3f}, win-rate vs SFT {r[WIN_RATE_KEY]:.3f} "
              f"[{r[CI_LOW_KEY]:.3f}, {r[CI_HIGH_KEY]:.3f}]  W/L/T {r['eval/judge_wins']:.0f}/"
              f"{r['eval/judge_losses']:.0f}/{r['eval/judge_ties']:.0f}")
    rho = spearmanr(rate, gold).statistic
    first, last = sum(rate[:3]) / 3, sum(rate[-3:]) / 3
    gold_first, gold_last = sum(gold[:3]) / 3, sum(gold[-3:]) / 3
    print(f"win-rate {first:.3f} -> {last:.3f} (first / last three evals), eval gold {gold_first:+.3f} -> "
          f"{gold_last:+.3f}, Spearman(win-rate, eval gold) {rho:.2f}")
    assert last > first + 0.05, "the win-rate against the reference must climb during training"
    assert gold_last > gold_first, "the eval gold reward must climb with it"
    assert rows[-1][CI_LOW_KEY] > 0.5, "at the end the gold judge must prefer the trained policy to the SFT policy"
    assert rho > 0.3, "the win-rate must move with the eval gold reward"


class StopAfter(JSONLSink):
    def __init__(self, out_dir, n):
        super().__init__(out_dir)
        self.n, self.logged = n, 0

    def log_metrics(self, step, metrics):
        super().log_metrics(step, metrics)
        self.logged += 1

    def should_stop(self):
        return self.logged >= self.n


def comparable(rows, leave_out=TIMING_KEYS):
    return [{k: v for k, v in r.items() if not k.startswith(leave_out)} for r in rows]


def test_reference_generated_once_and_reused_on_resume(builtin_assets, tmp_path, monkeypatch):
    """A reward-model judge every second eval over 4 iterations of 32 (evals at every iteration): the judge is
    built once and the reference's responses generated once per run; a resumed run reads them back; the
    judged steps, keys and intervals are as documented; the training itself is the same as without a judge."""
    cfg = load_config(CONFIGS / "builtin-klq.yaml", {
        "train.total_episodes": 32 * 4, "train.batch_size": 32, "eval_interval": 1, "checkpoint_interval": 2,
        "task.num_eval_prompts": 8,
        "eval_judge": {"backend": "reward_model", "every": 2},
    })
    built, generated = [], []
    make_judge, eval_rollout = in_training.make_judge, trainer._eval_rollout

    def counting_make_judge(spec, *args, **kwargs):
        built.append(spec)
        return make_judge(spec, *args, **kwargs)

    def counting_eval_rollout(cfg, models, policy, *args, **kwargs):
        if policy is models.reference:
            generated.append(policy)
        return eval_rollout(cfg, models, policy, *args, **kwargs)

    monkeypatch.setattr(in_training, "make_judge", counting_make_judge)
    monkeypatch.setattr(trainer, "_eval_rollout", counting_eval_rollout)

    train(cfg, tmp_path / "straight")
    assert len(built) == 1 and len(generated) == 1
    assert built[0] == {"backend": "reward_model", "model": "builtin:reward", "device": "cpu", "dtype": "auto"}
    straight = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    rows = judged(straight)
    assert [r["step"] for r in rows] == [2, 4]  # every second eval (and the last)
    for r in rows:
        counts = {name: r[key] for key, name in COUNT_KEYS.items()}
        assert sum(counts.values()) == 8
        valid = counts["wins_a"] + counts["wins_b"] + counts["ties"]
        assert r[WIN_RATE_KEY] == pytest.approx((counts["wins_a"] + counts["ties"] / 2) / valid)
        assert (r[CI_LOW_KEY], r[CI_HIGH_KEY]) == pytest.approx(wilson_interval(counts["wins_a"] + counts["ties"] / 2,
                                                                                 valid))
        assert r[CI_LOW_KEY] <= r[WIN_RATE_KEY] <= r[CI_HIGH_KEY]
    reference = json.loads((tmp_path / "straight" / REFERENCE_FILE).read_text())
    assert len(reference["responses"]) == 8 and all(r["response"] for r in reference["responses"])

    # Stopped after iteration 3 (a checkpoint there), then resumed: the reference is read back, not made.
    built.clear(), generated.clear()
    train(cfg, tmp_path / "resumed", sink=StopAfter(tmp_path / "resumed", 3))
    assert len(built) == 1 and len(generated) == 1
    written = (tmp_path / "resumed" / REFERENCE_FILE).read_text()
    train(cfg, tmp_path / "resumed", resume=True)
    assert len(built) == 2 and len(generated) == 1, "a resumed run must reuse the reference's responses"
    assert (tmp_path / "resumed" / REFERENCE_FILE).read_text() == written
    resumed = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert comparable(resumed) == comparable(straight)

    # Responses decoded with other settings are stale: generated again, and the file replaced.
    (tmp_path / "changed").mkdir()
    (tmp_path / "changed" / REFERENCE_FILE).write_text(written)
    train(cfg.with_overrides({"rollout.response_length": 10, "train.total_episodes": 32}), tmp_path / "changed")
    assert len(generated) == 2
    assert json.loads((tmp_path / "changed" / REFERENCE_FILE).read_text())["key"]["response_length"] == 10

    # Without a judge, training is the same: the judge draws no random numbers of the training's.
    train(cfg.with_overrides({"eval_judge": {"backend": None, "every": 1}}), tmp_path / "plain")
    plain = read_jsonl(tmp_path / "plain" / "metrics.jsonl")
    assert comparable(plain) == comparable(straight, TIMING_KEYS + JUDGE_KEYS)
    assert not (tmp_path / "plain" / REFERENCE_FILE).exists()


def test_judge_spec_and_due_evals():
    cfg = RunConfig.model_validate({"eval_interval": 5, "train": {"total_episodes": 64 * 23},
                                    "eval_judge": {"backend": "gold", "every": 2, "margin": 0.1}})
    assert judge_spec(cfg, "cpu") == {"backend": "gold", "margin": 0.1}
    win_rate = in_training.WinRateVsReference(cfg, judge=None, template=None, prompts=[], reference=[])
    evals = [i for i in range(1, 24) if i % 5 == 0 or i == 23]
    assert [i for i in evals if win_rate.due(i)] == [10, 20, 23]
    local = cfg.with_overrides({"eval_judge": {"backend": "local_hf", "model": "builtin:judge", "margin": None}})
    assert judge_spec(local, "cuda:0") == {"backend": "local_hf", "model": "builtin:judge", "device": "cuda:0",
                                           "dtype": "auto"}


@pytest.mark.parametrize(
    "judge, task, words",
    [
        ({"backend": "openai"}, "builtin", "eval_judge.model is required for eval_judge.backend 'openai'"),
        ({"backend": "local_hf"}, "builtin", "eval_judge.model is required for eval_judge.backend 'local_hf'"),
        ({"backend": "gold"}, "hh", "eval_judge.backend 'gold' needs a task with a gold reward"),
        ({"model": "builtin:reward"}, "builtin", "eval_judge.model is set but eval_judge.backend is not"),
        ({"backend": "gold", "template": "generic"}, "builtin", "eval_judge.template is set but"),
        ({"backend": "openai", "model": "m", "margin": 0.1}, "builtin", "eval_judge.margin is set but"),
        ({"backend": "gold", "every": 0}, "builtin", "eval_judge.every: Input should be greater than or equal to 1"),
        ({"backend": "gpt"}, "builtin", "eval_judge.backend: Input should be 'openai', 'local_hf'"),
    ],
)
def test_invalid_eval_judge_names_the_field(judge, task, words):
    dataset = {"dataset": "data.jsonl"} if task != "builtin" else {}
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate({"eval_judge": judge, "task": {"name": task, **dataset}})
    assert words in format_validation_error(info.value)


def test_a_judge_that_cannot_be_built_fails_the_run_naming_the_field(builtin_assets, tmp_path):
    cfg = load_config(CONFIGS / "builtin-klq.yaml", {
        "train.total_episodes": 64, "eval_judge": {"backend": "local_hf", "model": str(tmp_path / "missing")},
    })
    with pytest.raises(trainer.TrainingError, match=r"eval_judge: the local_hf judge .*missing.* could not be built"):
        train(cfg, tmp_path / "run")
    bad_template = cfg.with_overrides({"eval_judge": {"backend": "local_hf", "model": "builtin:judge",
                                                      "template": "nonsense"}})
    with pytest.raises(trainer.TrainingError, match=r"eval_judge.template: unknown judge template 'nonsense'"):
        train(bad_template, tmp_path / "run")
