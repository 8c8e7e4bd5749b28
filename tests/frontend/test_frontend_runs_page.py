"""The Runs page (AppTest against a real API): table columns, filters, and the actions on selected runs."""

from __future__ import annotations

import pytest
from frontend_testkit import all_text, page, seed_config, widget

from backend import store


def table(at):
    return at.dataframe[0].value


def test_table_shows_status_algorithm_task_tau_reward_kl_progress_eta(app_env, seeded):
    at = page("runs")
    at.text_input(key="runs.q").set_value("seed-").run()
    df = table(at).set_index("name")
    assert {"seed-klq", "seed-ppo", "seed-live", "seed-failed", "seed-queued"} <= set(df.index)
    klq = df.loc["seed-klq"]
    assert klq["status"] == "succeeded" and klq["algorithm"] == "KLQ" and klq["task"] == "builtin"
    assert klq["tau"] == 0.05 and klq["reward"] == pytest.approx(0.7) and klq["KL"] == pytest.approx(2.5)
    assert klq["gold"] == pytest.approx(0.5) and klq["progress"] == 1.0 and klq["iteration"] == "50/50"
    assert df.loc["seed-ppo"]["tau"] == 0.1 and df.loc["seed-ppo"]["algorithm"] == "PPO"
    live = df.loc["seed-live"]
    assert live["status"] == "running" and live["progress"] == pytest.approx(0.1)
    assert live["ETA"] == "45s"  # 90 iterations left at timing/iteration_s = 0.5
    assert df.loc["seed-queued"]["tags"] == "seed, waiting"


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("runs.status", ["failed"], {"seed-failed"}),
        ("runs.algorithm", ["ppo"], {"seed-ppo", "seed-queued"}),
        ("runs.tags", ["waiting"], {"seed-queued"}),
    ],
)
def test_filters(app_env, seeded, key, value, expected):
    at = page("runs")
    at.text_input(key="runs.q").set_value("seed-").run()
    widget(at, key).set_value(value).run()
    assert set(table(at)["name"]) == expected
    assert f"{len(expected)} run(s)" in all_text(at)


def make_run(server, name: str, **kw) -> int:
    with server.db.write_session() as s:
        return store.create_run(s, seed_config(**kw), name=name, tags=["act"], queue="gpu").id


def select(at, run_id: int):
    at.multiselect(key="runs.selected").set_value([run_id]).run()
    return at


def test_cancel_selected_run(app_env, seeded):
    rid = make_run(app_env, "act-cancel")
    at = page("runs")
    select(at, rid)
    at.button(key="runs.cancel").click().run()
    with app_env.client() as c:
        assert c.get(f"/runs/{rid}").json()["status"] == "cancelled"
    assert table(at).set_index("id").loc[rid]["status"] == "cancelled"


def test_tag_selected_runs(app_env, seeded):
    rid = make_run(app_env, "act-tag")
    at = page("runs")
    select(at, rid)
    at.text_input(key="runs.tag_add").set_value("t1, t2")
    at.multiselect(key="runs.tag_remove").set_value(["act"])
    at.button[[b.label for b in at.button].index("Apply to selected runs")].click().run()
    with app_env.client() as c:
        assert c.get(f"/runs/{rid}").json()["tags"] == ["t1", "t2"]


def test_delete_needs_confirmation(app_env, seeded):
    rid = make_run(app_env, "act-delete")
    at = page("runs")
    select(at, rid)
    assert at.button(key="runs.delete").disabled
    at.checkbox(key="runs.delete_confirm").check().run()
    at.button(key="runs.delete").click().run()
    with app_env.client() as c:
        assert c.get(f"/runs/{rid}").status_code == 404
    assert f"Deleted run(s) {rid}" in all_text(at)
    assert rid not in set(table(at)["id"])


def test_delete_running_run_needs_force(app_env, seeded):
    rid = make_run(app_env, "act-delete-running")
    with app_env.db.write_session() as s:
        store.set_status(s, rid, "running")
    at = page("runs")
    select(at, rid)
    at.checkbox(key="runs.delete_confirm").check().run()
    at.button(key="runs.delete").click().run()
    assert "409" in all_text(at) and "cancel it first" in all_text(at)
    at.checkbox(key="runs.delete_force").check().run()
    at.button(key="runs.delete").click().run()
    with app_env.client() as c:
        assert c.get(f"/runs/{rid}").status_code == 404


def test_clone_opens_launch_form_prefilled(app_env, seeded):
    at = page("runs")
    select(at, seeded.ppo)
    at.button(key="runs.clone").click().run()
    assert at.query_params["clone"] == [str(seeded.ppo)] or at.query_params["clone"] == str(seeded.ppo)
    assert at.title[0].value == "Launch a run"
    assert widget(at, "launch.f.algorithm").value == "ppo"
    assert widget(at, "launch.f.kl_coef").value == 0.1
    assert widget(at, "launch.name").value == "seed-ppo (clone)"


def test_open_compare_and_samples_buttons(app_env, seeded):
    at = page("runs")
    at.multiselect(key="runs.selected").set_value([seeded.klq, seeded.ppo]).run()
    assert at.button(key="runs.open").disabled
    at.button(key="runs.compare").click().run()
    assert at.title[0].value == "Compare runs"
    assert widget(at, "compare.runs").value == [seeded.klq, seeded.ppo]
    at = page("runs")
    select(at, seeded.klq)
    at.button(key="runs.open").click().run()
    assert at.title[0].value == "Run" and widget(at, "run.id").value == seeded.klq
