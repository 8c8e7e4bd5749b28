"""The Experiments page (AppTest against a real API): the list with status and progress, a new
experiment (preset, YAML base, grid, judge) with the preview of its runs and the API's 422s, and an
experiment's page: status, compute, results per tau with failed runs and their reasons, win-rates, the
reward-vs-KL frontier per algorithm, seed-averaged curves, runs, cancel and delete."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest
from frontend_testkit import EXPERIMENT_ERROR, all_text, experiment_final, page, seed_config, walk, widget

from frontend import ui
from klq.client import Client


def charts(at):
    return [json.loads(n.proto.spec) for n in walk(at.main) if getattr(n, "type", None) == "vega_lite_chart"]


def chart_data(at) -> list[list[pd.DataFrame]]:
    """The data of each chart (Streamlit sends an Altair chart's datasets beside its spec, as Arrow)."""
    out = []
    for n in walk(at.main):
        if getattr(n, "type", None) == "vega_lite_chart":
            out.append([pa.ipc.open_stream(d.data.data).read_pandas() for d in n.proto.datasets])
    return out


def frame(at, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def frames(at, column: str):
    return [d.value for d in at.dataframe if column in d.value.columns]


def detail(experiment_id: int, tab: str | None = None):
    at = page("experiments", {"experiment": experiment_id}, run=False)
    if tab is not None:
        at.session_state["experiments.detail_tab"] = tab
    at.run()
    assert not at.exception, "\n".join(str(e.value) for e in at.exception)
    return at


def test_list_with_status_and_progress(app_env, experiment):
    at = page("experiments")
    assert at.title[0].value == "Experiments"
    df = frame(at, "judgements").set_index("id")
    study = df.loc[experiment.id]
    assert (
        study["status"] == "failed" and study["runs"] == "8/8 (1 failed)" and study["judgements"] == "10/10"
    )
    assert study["progress"] == 1.0 and study["algorithms"] == "KLQ, PPO" and study["tau"] == "0.05, 0.1"
    waiting = df.loc[experiment.active]
    assert waiting["status"] == "queued" and waiting["runs"] == "0/2" and waiting["progress"] == 0.0
    assert list(df.index).index(experiment.active) < list(df.index).index(experiment.id)  # newest first
    widget(at, "experiments.pick").set_value(experiment.id)
    at.button(key="experiments.open").click().run()
    assert at.query_params["experiment"] == str(experiment.id)
    assert at.header[0].value == f"#{experiment.id} study"


def test_results_per_tau_with_failed_runs_and_win_rates(app_env, experiment):
    at = detail(experiment.id)
    text = all_text(at)
    metrics = {m.label: m.value for m in at.metric}
    assert (
        metrics["Status"] == "failed"
        and metrics["Runs finished"] == "8/8"
        and metrics["Judgements"] == "10/10"
    )
    assert {"Run-hours", "GPU-hours", "Wall-clock"} <= set(metrics)
    assert EXPERIMENT_ERROR.splitlines()[0].split(" <b>")[0] in "\n".join(c.value for c in at.code)
    tables = frames(at, "reward 95% CI")
    assert len(tables) == 2  # one per tau
    first = tables[0].set_index("algorithm")
    rewards = [experiment_final("klq", 0.05, s)[0] for s in (1, 2)]
    assert first.loc["KLQ", "reward"] == pytest.approx(sum(rewards) / 2)
    assert first.loc["KLQ", "reward 95% CI"].startswith("[") and first.loc["KLQ", "seeds"] == "2/2 succeeded"
    second = tables[1].set_index("algorithm")
    assert second.loc["PPO", "seeds"] == "1/2 succeeded" and second.loc["PPO", "reward 95% CI"] == "n=1"
    assert second.loc["PPO", "failed"] == (
        f"#{experiment.failed} seed 2 failed: RuntimeError: CUDA out of memory <b>not html</b>"
    )
    assert "1 run(s) at τ = 0.1 failed or were cancelled" in text

    rates = frame(at, "comparison")
    klq = rates[(rates["tau"] == 0.05) & (rates["comparison"] == "KLQ vs PPO")].iloc[0]
    assert klq["win rate"] == 0.75 and klq["wins"] == 6 and klq["losses"] == 2 and klq["judgements"] == 2
    assert set(rates["comparison"]) == {"KLQ vs PPO", "KLQ vs SFT", "PPO vs SFT"}
    skipped = frame(at, "reason")
    assert len(skipped) == 2  # KLQ vs PPO and PPO vs SFT at tau 0.1, seed 2
    specs = charts(at)
    assert len(specs) == 2  # win-rates and reward vs KL
    tradeoff = json.dumps(specs[1])
    assert "step-after" in tradeoff and '"field": "algorithm"' in tradeoff
    assert "8 run(s) plotted" in text
    assert {b.label for b in at.get("download_button")} == {
        "Download results (CSV)",
        "Download results (JSON)",
    }


def test_frontier_lines_are_drawn_per_algorithm(app_env, experiment):
    at = detail(experiment.id)
    data = chart_data(at)[1]
    lines = next(d for d in data if "order" in d.columns)
    points = next(d for d in data if "on_frontier" in d.columns).set_index("run_id")
    assert len(points) == 8  # every run, the failed one at its last logged values, marked failed
    assert points.loc[experiment.failed, "run"].endswith("(failed)")
    assert not points.loc[experiment.failed, "on_frontier"]
    with Client(app_env.url, app_env.token) as api:
        frontier = api.experiment_results(experiment.id)["frontier"]
    for alg, ids in frontier.items():
        line = lines[lines["algorithm"] == alg.upper()]
        assert list(line["run_id"]) == ids and list(line["order"]) == list(range(len(ids)))
        assert list(line["kl"]) == sorted(line["kl"])  # by KL
        assert set(points.index[points["on_frontier"] & (points["algorithm"] == alg.upper())]) == set(ids)


def test_curves_with_min_max_band(app_env, experiment):
    at = detail(experiment.id, "Curves")
    specs = charts(at)
    assert len(specs) == 2  # reward and KL
    assert "objective/scores" in json.dumps(specs[0]["title"]) and "area" in json.dumps(specs[0])
    rows = next(d for d in chart_data(at)[0] if "series" in d.columns)
    last = rows[rows["series"] == "KLQ τ=0.05"].sort_values("step").iloc[-1]
    finals = [experiment_final("klq", 0.05, s)[0] for s in (1, 2)]
    assert (
        last["step"] == 20
        and last["low"] == pytest.approx(min(finals))
        and last["high"] == pytest.approx(max(finals))
    )
    assert last["mean"] == pytest.approx(sum(finals) / 2) and last["seeds"] == 2


def test_runs_tab_shows_every_run_and_its_error_as_text(app_env, experiment):
    at = detail(experiment.id, "Runs")
    runs = frame(at, "seed").set_index("id")
    assert len(runs) == 8 and runs.loc[experiment.failed, "status"] == "failed"
    assert runs.loc[experiment.failed, "error"] == EXPERIMENT_ERROR.splitlines()[0]
    assert EXPERIMENT_ERROR in [c.value for c in at.code]  # the whole error, literally
    judgements = frame(at, "A")
    assert len(judgements) == 10 and set(judgements["status"]) == {"succeeded"}


def test_new_experiment_preview_and_create(app_env, experiment):
    at = page("experiments", tab="New experiment")
    assert widget(at, "experiments.kl_coefs").value == "0.02, 0.05"
    preview = frame(at, "iterations")
    assert len(preview) == 16  # every registered algorithm (4) x the default 2 taus x 2 seeds
    widget(at, "experiments.preset").set_value("configs/builtin-klq.yaml").run()
    assert "total_episodes: 1920" in widget(at, "experiments.base_yaml").value
    widget(at, "experiments.name").set_value("page-exp")
    widget(at, "experiments.algorithms").set_value(["klq", "ppo"])
    widget(at, "experiments.kl_coefs").set_value("0.02 0.05 0.1")
    widget(at, "experiments.seeds").set_value("1-2")
    widget(at, "experiments.judge_prompts").set_value(8)
    widget(at, "experiments.queue").set_value("cpu").run()
    preview = frame(at, "iterations")
    assert len(preview) == 12 and set(preview["iterations"]) == {30} and set(preview["task"]) == {"builtin"}
    assert list(preview["name"][:2]) == ["page-exp/klq-tau0.02-s1", "page-exp/ppo-tau0.02-s1"]
    assert "12 run(s) will be queued, then 18 judgement(s)" in all_text(at)

    at.button(key="experiments.create").click().run()
    assert not at.exception
    eid = int(at.query_params["experiment"])
    assert at.header[0].value == f"#{eid} page-exp"
    assert "Experiment " + str(eid) in all_text(at) and "12 run(s) on 'cpu'" in all_text(at)
    at.button(key="experiments.cancel").click().run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Status"] == "cancelled"


def test_new_experiment_problems(app_env, experiment):
    at = page("experiments", tab="New experiment")
    widget(at, "experiments.kl_coefs").set_value("0.1, x")
    widget(at, "experiments.base_yaml").set_value("train: [1,").run()
    errors = "\n".join(e.value for e in at.error)
    assert ui.md_escape("tau values: 'x' is not a positive number") in errors and "not valid YAML" in errors
    assert at.button(key="experiments.create").disabled
    widget(at, "experiments.kl_coefs").set_value("0.1, 0.1")
    widget(at, "experiments.base_yaml").set_value("train: {batch_size: 10, minibatch_size: 4}").run()
    errors = "\n".join(e.value for e in at.error)
    assert "grid.kl_coefs" in errors and "values must be distinct" in errors and "base.train" in errors
    assert at.button(key="experiments.create").disabled


def test_delete_and_missing_experiment(app_env):
    with Client(app_env.url, app_env.token) as api:
        eid = api.create_experiment(seed_config(), {"kl_coefs": [0.3], "seeds": [1]}, name="doomed")["id"]
    at = detail(eid)
    assert {m.label: m.value for m in at.metric}["Status"] == "queued"
    assert "Live, every 5 s" in all_text(at)
    widget(at, "experiments.delete_confirm").set_value(True).run()
    at.button(key="experiments.delete").click().run()
    assert "409" in all_text(at)  # still active: force needed
    widget(at, "experiments.delete_force").set_value(True).run()
    at.button(key="experiments.delete").click().run()
    assert f"Deleted experiment {eid}." in all_text(at)
    assert "experiment" not in at.query_params
    at = detail(eid)
    assert "not found" in all_text(at)
