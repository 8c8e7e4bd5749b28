"""The Compare page (AppTest against a real API): overlaid curves, reward vs KL with the Pareto frontier,
and the config diff of only the differing fields."""

from __future__ import annotations

import json

import pytest
from frontend_testkit import KLQ_METRICS, PPO_METRICS, all_text, page, walk, widget


def charts(at):
    return [json.loads(n.proto.spec) for n in walk(at.main) if getattr(n, "type", None) == "vega_lite_chart"]


def frame(at, contains: str):
    return next(d.value for d in at.dataframe if contains in d.value.columns)


def mean_last(f, n=10, last=50):
    return sum(f(s) for s in range(last - n + 1, last + 1)) / n


def test_overlaid_curves(app_env, seeded):
    at = page("compare", {"runs": f"{seeded.klq},{seeded.ppo}"})
    assert widget(at, "compare.runs").value == [seeded.klq, seeded.ppo]
    assert widget(at, "compare.keys").value == [
        "objective/scores",
        "objective/gold_scores",
        "objective/kl",
        "objective/rlhf_reward",
    ]
    specs = charts(at)
    titles = [s["title"] if isinstance(s["title"], str) else s["title"]["text"] for s in specs[:4]]
    assert sorted(titles) == sorted(widget(at, "compare.keys").value)
    assert all('"field": "run"' in json.dumps(s) for s in specs[:4])  # coloured by run
    at.multiselect(key="compare.keys").set_value(["loss/q_avg"]).run()
    assert len(charts(at)) == 1
    at.slider(key="compare.smoothing").set_value(0.9).run()
    at.selectbox(key="compare.x").set_value("relative").run()
    assert not at.exception


def test_reward_vs_kl_with_pareto_frontier(app_env, seeded):
    at = page("compare", {"runs": f"{seeded.klq},{seeded.ppo}"}, tab="Reward vs KL")
    df = frame(at, "on_frontier").set_index("run_id")
    assert df.loc[seeded.klq, "reward"] == pytest.approx(mean_last(KLQ_METRICS["objective/scores"]))
    assert df.loc[seeded.klq, "kl"] == pytest.approx(mean_last(KLQ_METRICS["objective/kl"]))
    assert df.loc[seeded.ppo, "reward"] == pytest.approx(mean_last(PPO_METRICS["objective/scores"]))
    assert df.loc[seeded.ppo, "kl"] == pytest.approx(mean_last(PPO_METRICS["objective/kl"]))
    assert bool(df.loc[seeded.klq, "on_frontier"]) and not bool(df.loc[seeded.ppo, "on_frontier"])
    assert df.loc[seeded.ppo, "tau"] == 0.1 and df.loc[seeded.klq, "algorithm"] == "KLQ"
    assert "2 run(s) plotted, 1 on the Pareto frontier" in all_text(at)

    at.number_input(key="compare.last_n").set_value(1).run()  # the final values
    df = frame(at, "on_frontier").set_index("run_id")
    assert df.loc[seeded.klq, "reward"] == pytest.approx(0.7) and df.loc[seeded.ppo, "kl"] == pytest.approx(
        4.0
    )

    at.radio(key="compare.scope").set_value("all").run()  # across all runs
    df = frame(at, "on_frontier").set_index("run_id")
    assert bool(df.loc[seeded.failed, "on_frontier"])  # reward 0.9 at KL 5: nobody beats it
    assert not bool(df.loc[seeded.ppo, "on_frontier"])
    assert pd_isna(df.loc[seeded.queued, "reward"])

    at.selectbox(key="compare.reward_key").set_value("eval/scores").run()  # eval every 10 iterations
    at.number_input(key="compare.last_n").set_value(2).run()
    df = frame(at, "on_frontier").set_index("run_id")
    assert df.loc[seeded.klq, "reward"] == pytest.approx((0.7 + 0.8) / 2)  # steps 40 and 50


def pd_isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


def test_config_diff_only_differing_fields(app_env, seeded):
    at = page("compare", {"runs": f"{seeded.klq},{seeded.ppo}"}, tab="Config diff")
    diff = next(d.value for d in at.dataframe if f"#{seeded.klq} seed-klq" in d.value.columns)
    assert set(diff.index) == {"algorithm", "kl_coef"}
    assert diff.loc["algorithm"].tolist() == ["klq", "ppo"]
    assert "2 field(s) differ" in all_text(at)
    at = page("compare", {"runs": f"{seeded.klq},{seeded.live}"}, tab="Config diff")
    diff = next(d.value for d in at.dataframe if f"#{seeded.klq} seed-klq" in d.value.columns)
    assert set(diff.index) == {"train.total_episodes"}


def test_single_run_and_no_runs(app_env, seeded):
    at = page("compare", {"runs": seeded.klq}, tab="Config diff")
    assert "Pick at least two runs" in all_text(at)
    at.multiselect(key="compare.runs").set_value([]).run()
    assert "Pick runs to compare." in all_text(at)
