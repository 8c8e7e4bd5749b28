"""The Launch page (AppTest against a real API): fields and defaults from the server's RunConfig schema,
presets, the backend's 422 messages beside the fields, queueing, and clones."""

from __future__ import annotations

import pytest
from frontend_testkit import all_text, elements, page, seed_config, widget

from backend import store
from frontend import logic
from klq.config import RunConfig

TINY = {
    "train.total_episodes": 32,
    "train.batch_size": 8,
    "train.minibatch_size": 8,
    "train.micro_batch_size": 8,
    "train.num_epochs": 1,
}


def set_fields(at, values: dict):
    for path, value in values.items():
        widget(at, "launch.f." + path).set_value(value)
    return at


def submit(at):
    at.button(key="launch.submit").click().run()
    return at


def next_after(at, key: str):
    """The element drawn right after the widget with this key."""
    items = elements(at)
    i = next(i for i, e in enumerate(items) if getattr(e, "key", None) == key)
    return items[i + 1]


def test_every_config_field_with_the_papers_defaults(app_env):
    at = page("launch")
    defaults = logic.flatten(RunConfig().model_dump(mode="json"))
    defaults.pop("name")  # the run's name is its own field
    for path, default in defaults.items():
        value = widget(at, "launch.f." + path).value
        if isinstance(default, list):
            assert value == "\n".join(default), path
        elif default is None:
            assert value in (None, ""), path
        else:
            assert value == default, path
    assert widget(at, "launch.f.train.learning_rate").value == 1.41e-5
    assert widget(at, "launch.queue").value == "(server default)"
    labels = [e.label for e in at.expander]
    assert labels[:3] == ["Task", "Models", "Rollout (generation)"]
    assert "PPO (not used by KLQ)" in labels


def test_preset_fills_the_form(app_env):
    at = page("launch")
    at.selectbox(key="launch.preset").set_value("configs/builtin-ppo.yaml").run()
    assert widget(at, "launch.f.algorithm").value == "ppo"
    assert widget(at, "launch.f.train.total_episodes").value == 1920
    assert widget(at, "launch.f.rollout.response_length").value == 12
    assert widget(at, "launch.f.rollout.missing_eos_penalty").value == 0.5
    assert widget(at, "launch.f.train.learning_rate").value == pytest.approx(3e-4)


def test_api_errors_shown_beside_their_fields(app_env):
    at = page("launch")
    set_fields(at, {"kl_coef": -1.0, "train.batch_size": 10, "train.minibatch_size": 4})
    submit(at)
    after = next_after(at, "launch.f.kl_coef")
    assert after.type == "alert" or "error" in type(after).__name__.lower()
    assert after.value == "Input should be greater than 0"
    errors = [e.value for e in at.error]
    assert "train.minibatch_size (4) must divide train.batch_size (10)" in errors
    assert any("2 problem(s)" in e for e in errors)
    # the section error is inside the Training expander, above its fields
    training = next(e for e in at.expander if e.label == "Training")
    assert "must divide" in training.error[0].value
    # fixing the values clears the errors and queues the run
    set_fields(at, {"kl_coef": 0.05, **TINY, "model.policy": "/etc"})
    submit(at)
    assert "/etc is outside the allowed model roots" in next_after(at, "launch.f.model.policy").value
    assert not any("must divide" in e.value for e in at.error)


def test_unknown_queue_shown_beside_the_queue(app_env):
    with app_env.db.write_session() as s:  # a run on a queue this server does not have (a typed-in name)
        rid = store.create_run(s, seed_config(), name="odd-queue", queue="no-such-queue").id
    at = page("launch", {"clone": rid})
    assert widget(at, "launch.queue").value == "no-such-queue"
    submit(at)
    assert "unknown queue 'no-such-queue'" in next_after(at, "launch.queue").value


def test_queue_a_run_and_land_on_its_page(app_env):
    at = page("launch")
    set_fields(
        at,
        {
            **TINY,
            "algorithm": "ppo",
            "kl_coef": 0.2,
            "ppo.cliprange": 0.3,
            "rollout.stop_sequences": "END\n\n",
        },
    )
    at.text_input(key="launch.name").set_value("from-the-form")
    at.text_input(key="launch.tags").set_value("ui, form")
    at.selectbox(key="launch.queue").set_value("cpu").run()
    submit(at)
    assert at.title[0].value == "Run"
    assert "queued on 'cpu'" in all_text(at)
    rid = widget(at, "run.id").value
    with app_env.client() as c:
        run = c.get(f"/runs/{rid}").json()
    assert run["name"] == "from-the-form" and sorted(run["tags"]) == ["form", "ui"] and run["queue"] == "cpu"
    cfg = run["config"]
    assert cfg["algorithm"] == "ppo" and cfg["kl_coef"] == 0.2 and cfg["ppo"]["cliprange"] == 0.3
    assert cfg["rollout"]["stop_sequences"] == ["END"] and cfg["train"]["total_episodes"] == 32
    assert cfg["train"]["learning_rate"] == 1.41e-5  # untouched fields keep the paper's defaults
    assert run["parent_id"] is None


def test_clone_prefills_and_keeps_lineage(app_env, seeded):
    at = page("launch", {"clone": seeded.klq})
    assert "Pre-filled from run" in all_text(at)
    assert widget(at, "launch.f.train.total_episodes").value == 400
    assert widget(at, "launch.tags").value == "seed"
    set_fields(at, {"train.num_epochs": 2})
    submit(at)
    rid = widget(at, "run.id").value
    with app_env.client() as c:
        clone = c.get(f"/runs/{rid}").json()
        source = c.get(f"/runs/{seeded.klq}").json()
    assert clone["parent_id"] == seeded.klq and clone["name"] == "seed-klq (clone)"
    assert logic.config_overrides(source["config"], clone["config"]) == {
        "train.num_epochs": 2,
        "name": "seed-klq (clone)",
    }
