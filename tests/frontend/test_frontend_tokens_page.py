"""The Samples page's token views (AppTest against a real API with token records written as a worker writes
them): a sample's tokens coloured by a chosen quantity with a table below, two runs' samples of one prompt
side by side on one shared colour scale, one prompt across a run's steps, training rollouts, and the sort
and filter controls passed to the API; token text is never rendered as HTML or Markdown."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pyarrow as pa
import pytest
from backend_testkit import Server, served_database
from frontend_testkit import (
    TOKEN_LINK,
    TOKEN_PIECES,
    TOKEN_SCRIPT,
    TOKEN_STEPS,
    SeededTokens,
    all_text,
    page,
    seed_tokens,
    walk,
    widget,
)


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of this module's own (the token runs stay out of the other pages' tests)."""
    tmp = tmp_path_factory.mktemp("fe-tokens")
    with served_database("sqlite", tmp) as srv:
        yield srv


@pytest.fixture(scope="module")
def seeded_tokens(token_server: Server) -> SeededTokens:
    return seed_tokens(token_server)


@pytest.fixture
def env(token_server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    import streamlit as st

    monkeypatch.setenv("KLQ_API_URL", token_server.url)
    monkeypatch.setenv("KLQ_API_TOKEN", token_server.token)
    st.cache_data.clear()
    st.cache_resource.clear()
    return token_server


def charts(at) -> list[dict]:
    """The page's Vega-Lite charts: (spec, {dataset name: DataFrame})."""
    out = []
    for node in walk(at.main):
        if getattr(node, "type", None) == "vega_lite_chart":
            data = {d.name: pa.ipc.open_stream(d.data.data).read_pandas() for d in node.proto.datasets}
            out.append((json.loads(node.proto.spec), data))
    return out


def token_charts(at) -> list[tuple[dict, object]]:
    """The token views' charts: (the colour encoding of their rectangles, their data)."""
    out = []
    for spec, data in charts(at):
        layers = spec.get("layer") or []
        if layers and layers[0]["mark"]["type"] == "rect":
            out.append((layers[0]["encoding"]["color"], next(iter(data.values()))))
    return out


def tables_with(at, column: str) -> list:
    return [d.value for d in at.dataframe if column in d.value.columns]


def no_markup_rendered(at) -> None:
    """No element renders HTML, and no Markdown element carries token text."""
    for node in walk(at.main):
        kind = getattr(node, "type", None)
        assert kind != "html"
        if kind == "markdown":
            assert not node.proto.allow_html
            assert "<script" not in node.value and "http://e.com" not in node.value


def test_two_runs_side_by_side_on_one_colour_scale(env, seeded_tokens):
    s = seeded_tokens
    at = page("samples", {"runs": f"{s.klq},{s.ppo}"}, tab="Tokens")
    assert widget(at, "tokens.prompt").options == ["t0", "t1"]
    # the union of both runs' quantities; k1 first
    options = widget(at, "tokens.pair_quantity").options
    assert options[0] == "k1" and {"q", "delta", "target", "reward", "advantage", "return"} <= set(options)
    views = token_charts(at)
    assert len(views) == 2
    (left_color, left), (right_color, right) = views
    # one shared domain, centred on 0: the largest |k1| of either side (both at step 30, prompt t0)
    k1 = [*left["k1"], *right["k1"]]
    m = max(abs(v) for v in k1)
    for color in (left_color, right_color):
        assert color["scale"]["domain"] == pytest.approx([-m, m]) and color["scale"]["domainMid"] == 0
    assert m == pytest.approx(max(abs(v) for v in right["k1"]))  # PPO's last tokens decide it
    assert list(left["token"]) == TOKEN_PIECES["t0"] == list(right["token"])
    # the tables below: token, id and every quantity, the markup as text
    klq_table, ppo_table = tables_with(at, "k1")
    assert list(klq_table["token"]) == TOKEN_PIECES["t0"] and TOKEN_SCRIPT in list(ppo_table["token"])
    assert list(klq_table["id"]) == [1000 + i for i in range(len(TOKEN_PIECES["t0"]))]
    assert "q" in klq_table.columns and "reward" not in klq_table.columns and "reward" in ppo_table.columns
    no_markup_rendered(at)

    # a quantity only one side has: the other says so; the scale is sequential for value
    at.selectbox(key="tokens.pair_quantity").set_value("q").run()
    assert len(token_charts(at)) == 1 and f"#{s.ppo} has no q" in all_text(at)
    at.selectbox(key="tokens.pair_quantity").set_value("value").run()
    colors = [c for c, _ in token_charts(at)]
    assert (
        len(colors) == 2
        and colors[0]["scale"] == colors[1]["scale"]
        and "domainMid" not in colors[0]["scale"]
    )
    assert colors[0]["scale"]["domain"] == pytest.approx([0.0, 0.5])  # KLQ's V from 0 to 0.5, PPO's 0.3


def test_steps_of_each_side(env, seeded_tokens):
    s = seeded_tokens
    at = page("samples", {"runs": f"{s.klq},{s.ppo}"}, tab="Tokens")
    assert widget(at, f"tokens.step.{s.klq}").options == ["step 30", "step 20", "step 10"]
    at.selectbox(key=f"tokens.step.{s.klq}").set_value(10).run()
    (_, left), (_, right) = token_charts(at)
    assert list(left["k1"]) == pytest.approx([0.3, -0.1, 0.3, -0.1, 0.3, -0.1])  # KLQ at step 10
    assert right["k1"].iloc[-1] == pytest.approx(1.5)  # PPO at step 30


def test_one_run_sorted_and_filtered_by_the_api(env, seeded_tokens):
    s = seeded_tokens
    at = page("samples", {"runs": s.klq}, tab="Tokens")
    labels = widget(at, "tokens.sample").options  # step 30, both prompts, sorted by score (top first)
    assert [label[:13] for label in labels] == ["t1 @ step 30 ", "t0 @ step 30 "]
    at.radio(key="tokens.q.top").set_value("bottom").run()
    assert widget(at, "tokens.sample").options[0].startswith("t0 @ step 30 · score 0.3 ")
    at.number_input(key="tokens.q.min_score").set_value(1.0).run()
    (label,) = widget(at, "tokens.sample").options
    assert label.startswith("t1 @ step 30 · score 1.3 ") and label.endswith(
        f"{len(TOKEN_PIECES['t1'])} tokens"
    )
    assert "Sample (1 match)" in [w.label for w in at.selectbox]
    ((color, data),) = token_charts(at)
    assert list(data["token"]) == TOKEN_PIECES["t1"] and list(data["label"])[2] == "↵"
    at.number_input(key="tokens.q.min_score").set_value(5.0).run()
    assert "No samples match." in all_text(at)


def test_bad_filter_shows_the_apis_422(env, seeded_tokens):
    s = seeded_tokens
    at = page("samples", {"runs": s.klq}, tab="Tokens")
    at.number_input(key="tokens.q.min_length").set_value(-1.5).run()  # not an integer length
    text = all_text(at)
    assert "422" in text and "min_length" in text


def test_prompt_across_steps(env, seeded_tokens):
    s = seeded_tokens
    at = page("samples", {"runs": s.klq}, tab="Across steps")
    assert widget(at, "steps.prompt").options == ["t0", "t1"]
    ((spec, data),) = charts(at)
    grid = next(iter(data.values()))
    n = len(TOKEN_PIECES["t0"])
    assert list(grid["step"]) == [st for st in TOKEN_STEPS for _ in range(n)]
    assert list(grid["position"]) == list(range(n)) * len(TOKEN_STEPS)
    assert grid[grid["step"] == 30]["value"].tolist() == pytest.approx([3 * v for v in (0.3, -0.1) * 3])
    m = max(abs(v) for v in grid["value"])
    assert spec["encoding"]["color"]["scale"]["domain"] == pytest.approx([-m, m])
    at.radio(key="steps.view").set_value("per step").run()
    views = token_charts(at)
    assert len(views) == len(TOKEN_STEPS) and all(
        c["scale"]["domain"] == views[0][0]["scale"]["domain"] for c, _ in views
    )
    no_markup_rendered(at)


def test_training_rollouts_sorted_with_top_k(env, seeded_tokens):
    s = seeded_tokens
    at = page("samples", {"runs": s.klq}, tab="Training rollouts")
    assert widget(at, f"train.step.{s.klq}").value == 30  # the newest iteration with rollouts
    table = tables_with(at, "score − gold")[0]
    assert list(table["score"]) == [0.9, 0.7, 0.5, 0.2]  # by score, top first
    at.selectbox(key="train.q.sort").set_value("rm_gold_gap").run()
    table = tables_with(at, "score − gold")[0]
    assert list(table["index"]) == [3, 0, 2, 1] and table["score − gold"].iloc[0] == pytest.approx(0.9)
    at.selectbox(key="train.q.sort").set_value("length").run()
    at.radio(key="train.q.top").set_value("bottom").run()
    assert list(tables_with(at, "score − gold")[0]["tokens"]) == [2, 3, 4, 5]
    at.number_input(key="train.q.max_kl").set_value(1.6).run()
    table = tables_with(at, "score − gold")[0]
    assert list(table["index"]) == [3, 0] and all(k <= 1.6 for k in table["KL"])  # KL 1.2 and 1.5
    assert "rollout(s) of iteration 30 match" in all_text(at)
    assert widget(at, "train.sample").value == s.train[0]  # the rollout looked at stays chosen: still listed
    ((color, data),) = token_charts(at)
    assert list(data["token"]) == [" w0", " w1", " w2"] and color["scale"]["domainMid"] == 0
    at.selectbox(key="train.sample").set_value(s.train[3]).run()
    ((color, data),) = token_charts(at)
    assert list(data["token"]) == [" w0", " w1"]
    assert list(data["k1"]) == pytest.approx([0.9 + 0.3, -0.3 + 0.3])  # klq_quantities(2, 30, 0.3)


def test_a_sample_without_token_data(env, seeded_tokens):
    """Samples written without a token record: the response as text and a caption, no chart."""
    from backend import store

    with env.db.write_session() as sess:
        run = store.create_run(sess, {"algorithm": "klq"}, name="no-tokens", queue="gpu").id
        store.write_samples(
            sess, run, [{"step": 5, "prompt_id": "x", "prompt": "p", "response": TOKEN_SCRIPT, "score": 0.1}]
        )
    at = page("samples", {"runs": run}, tab="Tokens")
    assert "This sample has no token data" in all_text(at)
    assert TOKEN_SCRIPT in [c.value for c in at.code] and not token_charts(at)


def test_literal_markdown_link_token(env, seeded_tokens):
    s = seeded_tokens
    at = page("samples", {"runs": s.klq}, tab="Tokens")
    at.selectbox(key="tokens.sample").set_value(s.samples[(s.klq, "t0", 30)]).run()
    ((_, data),) = token_charts(at)
    labels = list(data["label"])
    assert TOKEN_LINK in labels and TOKEN_SCRIPT in labels
    no_markup_rendered(at)
    assert not math.isnan(float(data["k1"].iloc[0]))
