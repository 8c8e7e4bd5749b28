"""RunConfig: defaults from the paper, YAML/JSON loading, and error messages that name the field."""

import json

import pytest
from pydantic import ValidationError

from klq.config import ConfigError, RunConfig, format_validation_error, load_config


def test_paper_defaults():
    cfg = RunConfig()
    assert cfg.algorithm == "klq"
    assert cfg.kl_coef == cfg.tau == 0.05
    assert (cfg.gamma, cfg.lam, cfg.klq.alpha) == (1.0, 0.95, 1.0)
    assert cfg.train.num_epochs == 4
    assert cfg.rollout.response_length == 53
    assert cfg.train.learning_rate == 1.41e-5
    assert cfg.klq.whiten_deltas is False and cfg.klq.loss == "l2"
    assert (cfg.ppo.cliprange, cfg.ppo.cliprange_value, cfg.ppo.vf_coef) == (0.2, 0.2, 0.1)
    assert cfg.rollout.temperature == 1.0 and cfg.rollout.top_k == 0 and cfg.rollout.top_p == 1.0


def test_yaml_and_json_round_trip(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "algorithm: ppo\nkl_coef: 0.1\ntrain:\n  batch_size: 32\n  minibatch_size: 8\n  micro_batch_size: 4\n"
    )
    cfg = load_config(tmp_path / "run.yaml", {"rollout.response_length": 12})
    assert (cfg.algorithm, cfg.kl_coef, cfg.train.batch_size, cfg.rollout.response_length) == ("ppo", 0.1, 32, 12)
    (tmp_path / "run.json").write_text(cfg.model_dump_json())
    assert load_config(tmp_path / "run.json") == cfg


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"kl_coef": -1}, "kl_coef", "greater than 0"),
        ({"algorithm": "dpo"}, "algorithm", "expected 'klq', 'ppo', 'rloo' or 'grpo'"),
        ({"train": {"batch_size": 0}}, "train.batch_size", "greater than or equal to 1"),
        ({"train": {"batch_size": 64, "minibatch_size": 24}}, "train", "train.minibatch_size (24) must divide"),
        ({"train": {"minibatch_size": 16, "micro_batch_size": 5}}, "train", "train.micro_batch_size (5)"),
        ({"rollout": {"temperature": 0}}, "rollout.temperature", "greater than 0"),
        ({"klq": {"alpha": 2}}, "klq.alpha", "less than or equal to 1"),
        ({"lam": 1.5}, "lam", "less than or equal to 1"),
        ({"model": {"value_init": "random"}}, "model.value_init", "'reward' or 'policy'"),
        ({"train": {"learning_rte": 1e-4}}, "train.learning_rte", "Extra inputs are not permitted"),
        ({"task": {"name": "prompts"}}, "task", "task.dataset is required"),
        ({"rollout": {"num_generations": 0}}, "rollout.num_generations", "greater than or equal to 1"),
        (
            {"train": {"batch_size": 60, "minibatch_size": 12, "micro_batch_size": 12},
             "rollout": {"num_generations": 8}},
            "(config)",
            "train.batch_size (60) must be divisible by rollout.num_generations (8)",
        ),
    ],
)
def test_invalid_values_name_the_field(data, field, words):
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(data)
    message = format_validation_error(info.value)
    assert message.split(":")[0] == field, message
    assert words in message


def test_groups_need_not_fill_minibatches():
    """batch_size counts responses and must hold whole groups; a minibatch may split one (group baselines are
    computed over the whole batch before the update)."""
    cfg = RunConfig.model_validate(
        {"rollout": {"num_generations": 3}, "train": {"batch_size": 12, "minibatch_size": 4, "micro_batch_size": 2}}
    )
    assert (cfg.rollout.num_generations, cfg.train.minibatch_size) == (3, 4)
    assert RunConfig().rollout.num_generations == 1
    with pytest.raises(ValidationError, match=r"train.batch_size \(12\) must be divisible by rollout.num_generations"):
        cfg.with_overrides({"rollout.num_generations": 5})


def test_load_config_error_names_file_and_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train": {"num_epochs": 0}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "bad.json" in str(info.value) and "train.num_epochs" in str(info.value)


def test_with_overrides_validates():
    cfg = RunConfig().with_overrides({"algorithm": "ppo", "train.total_episodes": 640})
    assert cfg.algorithm == "ppo" and cfg.train.total_episodes == 640 and cfg.train.num_iterations == 10
    with pytest.raises(ValidationError):
        RunConfig().with_overrides({"rollout.response_length": -3})


def test_apply_overrides_is_the_one_expander() -> None:
    """Dotted keys and nested dicts merge key by key into a copy (the CLI's --set, load_config,
    RunConfig.with_overrides and klq.client share it)."""
    from klq.client import _base_config
    from klq.config import apply_overrides

    base = {"train": {"batch_size": 8, "lr": 1e-3}, "algorithm": "klq"}
    merged = apply_overrides(base, {"train.batch_size": 4, "rollout": {"temperature": 0.7}, "kl_coef": 0.1})
    assert merged == {
        "train": {"batch_size": 4, "lr": 1e-3},
        "algorithm": "klq",
        "rollout": {"temperature": 0.7},
        "kl_coef": 0.1,
    }
    assert base == {"train": {"batch_size": 8, "lr": 1e-3}, "algorithm": "klq"}  # not changed
    assert apply_overrides(base, {"train": {"lr": 2e-3}})["train"] == {"batch_size": 8, "lr": 2e-3}
    assert _base_config(base, {"train.lr": 2e-3}) == apply_overrides(base, {"train.lr": 2e-3})
