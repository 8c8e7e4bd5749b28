"""The Leaderboard page (AppTest against a real API): the ratings of the judged policies as a table and an
interval chart, filtered by judge, tags and experiment; an experiment's algorithms and taus as players."""

from __future__ import annotations

import json

import pytest
from frontend_testkit import all_text, page, walk, widget

from klq.client import Client


def charts(at) -> list[dict]:
    return [json.loads(n.proto.spec) for n in walk(at.main) if getattr(n, "type", None) == "vega_lite_chart"]


def table(at):
    return next(d.value for d in at.dataframe if "rating" in d.value.columns)


def test_every_judged_policy_by_rating(app_env, seeded, experiment):
    at = page("leaderboard")
    assert at.title[0].value == "Leaderboard"
    with Client(app_env.url, app_env.token) as api:
        board = api.leaderboard("gold")
    shown = table(at)
    assert list(shown["rank"]) == list(range(1, len(board["players"]) + 1))
    assert list(shown["rating"]) == pytest.approx([p["rating"] for p in board["players"]])
    assert list(shown["comparisons"]) == [p["comparisons"] for p in board["players"]]
    assert f"#{seeded.klq} seed-klq (KLQ)" in set(shown["player"]) and "SFT (builtin:sft)" in set(shown["player"])
    assert f"{len(board['players'])} player(s) from {board['comparisons']} comparison(s)" in all_text(at)
    assert len(charts(at)) == 1 and "rating (Elo scale, 95% CI)" in json.dumps(charts(at)[0])


def test_an_experiment_per_algorithm_and_tau(app_env, experiment):
    at = page("leaderboard", {"experiment": experiment.id})
    assert widget(at, "leaderboard.experiment").value == experiment.id
    assert widget(at, "leaderboard.group_by").value == "algorithm_tau"
    shown = table(at)
    assert set(shown["player"]) == {"KLQ τ=0.05", "KLQ τ=0.1", "PPO τ=0.05", "PPO τ=0.1", "SFT (builtin:sft)"}
    # KLQ wins 3 of 4 prompts against PPO, every policy 3 of 4 against SFT (one tie): KLQ first, SFT last
    assert shown.iloc[0]["player"] in {"KLQ τ=0.05", "KLQ τ=0.1"} and shown.iloc[-1]["player"] == "SFT (builtin:sft)"
    assert "SFT (builtin:sft) is held at 1000" in all_text(at)
    sft = shown.set_index("player").loc["SFT (builtin:sft)"]
    assert sft["rating"] == pytest.approx(1000) and sft["95% CI"] == "1000–1000"
    widget(at, "leaderboard.group_by").set_value("run").run()
    assert len(table(at)) == 7 + 1  # the seven succeeded runs and SFT


def test_no_ratings_for_a_judge_without_verdicts(app_env, seeded):
    at = page("leaderboard")
    widget(at, "leaderboard.backend").set_value("openai").run()
    assert "No ratings yet" in all_text(at) and not at.dataframe
    widget(at, "leaderboard.backend").set_value("gold").run()
    widget(at, "leaderboard.tags").set_value(["waiting"]).run()  # only a queued run has it: never judged
    assert "No ratings yet" in all_text(at)
