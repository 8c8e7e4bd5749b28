"""Per-token views' logic (frontend.logic.tokens) and their charts (frontend.ui.token_chart, token_heatmap),
on SampleTokens JSON built here in the shape of GET /samples/{id}/tokens (docs: the issue-14 contract)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from frontend import logic, ui

SCRIPT = "<script>alert(1)</script>"
LINK = "[x](http://e.com)"


def sample_tokens(tokens, quantities, *, step=10, sample_id=1, kind="eval", algorithm="klq") -> dict:
    return {
        "sample_id": sample_id,
        "run_id": 1,
        "step": step,
        "kind": kind,
        "prompt_id": "p0",
        "algorithm": algorithm,
        "token_ids": [100 + i for i in range(len(tokens))],
        "tokens": tokens,
        "quantities": quantities,
    }


KLQ = sample_tokens(
    [" the", " coffee", SCRIPT, "\n", LINK],
    {
        "logp": [-1.0, -2.0, -0.5, -3.0, -0.25],
        "logp_ref": [-1.5, -1.0, -0.5, -2.0, None],  # null: NaN/inf on the server
        "k1": [0.5, -1.0, 0.0, -1.0, None],
        "k3": [0.1, 0.7, 0.0, 0.7, None],
        "entropy": [2.0, 3.0, 1.0, 0.5, 4.0],
        "value": [0.1, 0.2, 0.3, 0.4, 0.5],
        "q": [0.125, 0.15, 0.3, 0.35, None],
        "delta": [0.1, -0.2, 0.05, 0.0, 0.3],
        "target": [0.2, 0.3, 0.4, 0.5, 0.6],
        "advantage": [None, None, None, None, None],  # present in the JSON, but no value: not offered
    },
)


def test_quantity_kinds_follow_the_contract():
    for q in ("k1", "k3", "advantage", "advantage_raw", "delta", "reward"):
        assert logic.quantity_kind(q) == "diverging"
    for q in ("entropy", "logp", "logp_ref", "value", "q", "target", "return", "something_new"):
        assert logic.quantity_kind(q) == "sequential"


def test_present_quantities_in_display_order_without_empty_ones():
    assert logic.present_quantities([KLQ]) == [
        "k1", "k3", "logp", "logp_ref", "entropy", "value", "q", "delta", "target"
    ]  # fmt: skip
    ppo = sample_tokens(["a"], {"reward": [1.0], "zeta": [2.0], "k1": [None]}, algorithm="ppo")
    # the union over samples; an unknown quantity after the known ones
    assert logic.present_quantities([KLQ, ppo]) == [
        "k1", "k3", "logp", "logp_ref", "entropy", "value", "q", "delta", "target", "reward", "zeta"
    ]  # fmt: skip
    assert logic.present_quantities([ppo]) == ["reward", "zeta"]


def test_color_domain_diverging_is_centred_on_zero_and_shared():
    other = sample_tokens(["a", "b"], {"k1": [2.5, -0.5]})
    assert logic.color_domain("k1", [KLQ["quantities"]["k1"]]) == [-1.0, 1.0]
    # shared by the two samples: the larger |k1| of either decides
    assert logic.color_domain("k1", [KLQ["quantities"]["k1"], other["quantities"]["k1"]]) == [-2.5, 2.5]
    assert logic.color_domain("k1", [[0.0, 0.0]]) == [-1.0, 1.0]  # all zero: still a scale
    assert logic.color_domain("k1", [[None], []]) is None


def test_color_domain_sequential_is_the_range():
    assert logic.color_domain("entropy", [[2.0, 3.0], [0.5, None, 4.0]]) == [0.5, 4.0]
    assert logic.color_domain("logp", [[-1.0, -1.0]]) == [-1.5, -0.5]  # one value: widened
    assert logic.color_domain("value", [[math.nan, math.inf]]) is None


def test_token_table_keeps_text_and_ids_and_every_quantity():
    table = logic.token_table(KLQ)
    assert list(table.columns) == ["position", "token", "id", *logic.present_quantities([KLQ])]
    assert list(table["token"]) == KLQ["tokens"]  # as is: markup, newline and all
    assert list(table["id"]) == KLQ["token_ids"]
    assert list(table["position"]) == [0, 1, 2, 3, 4]
    assert table.loc[1, "k1"] == -1.0 and pd.isna(table.loc[4, "k1"])
    assert "advantage" not in table.columns


def test_token_layout_wraps_like_text():
    tokens = ["abcd", "efgh", "ij", "\n", "k" * 30, "l"]
    layout = logic.token_layout(
        sample_tokens(tokens, {"k1": [1, 2, 3, 4, 5, None]}), "k1", [-5, 5], line_chars=10
    )
    # widths 4, 4, 2, 1, 30, 1: [abcd efgh ij] fills line 0, "↵" starts line 1, the long token gets a line
    # of its own (line 2), and "l" follows on line 3
    assert list(layout["label"]) == ["abcd", "efgh", "ij", "↵", "k" * 30, "l"]
    assert list(layout["x"]) == [0, 4, 8, 0, 0, 0]
    assert list(layout["x2"]) == [4, 8, 10, 1, 30, 1]
    assert list(layout["line"]) == [0, 0, 0, 1, 2, 3]
    assert list(layout["shown"][:5]) == [1, 2, 3, 4, 5] and pd.isna(layout["shown"][5])
    # dark fills (|v| > 65% of 5) get white text; a missing value black
    assert list(layout["ink"]) == ["black", "black", "black", "white", "white", "black"]
    assert list(layout["token"]) == tokens


def test_display_piece_shows_breaks_and_keeps_markup():
    assert logic.display_piece("a\r\nb\nc\td") == "a↵b↵c⇥d"
    assert logic.display_piece("\x1b[31mred\x00\x7f") == "\\x1b[31mred\\x00\\x7f"  # escaped, not invisible
    assert logic.display_piece(SCRIPT) == SCRIPT and logic.display_piece(LINK) == LINK


def test_ink_for_sequential():
    assert logic.ink_for(0.9, "entropy", [0.0, 1.0]) == "white"
    assert logic.ink_for(0.5, "entropy", [0.0, 1.0]) == "black"
    assert logic.ink_for(None, "entropy", [0.0, 1.0]) == "black"
    assert logic.ink_for(0.5, "entropy", None) == "black"


def test_steps_heatmap_is_step_by_position():
    s10 = sample_tokens(["a", "b"], {"k1": [0.1, 0.2]}, step=10)
    s5 = sample_tokens(["c", "d", "e"], {"k1": [0.3, None, 0.5]}, step=5)
    s20 = sample_tokens(["f"], {"entropy": [1.0]}, step=20)
    frame = logic.steps_heatmap([s10, s5, s20], "k1")
    assert list(frame["step"]) == [5, 5, 5, 10, 10, 20]
    assert list(frame["position"]) == [0, 1, 2, 0, 1, 0]
    assert list(frame["token"]) == ["c", "d", "e", "a", "b", "f"]
    values = list(frame["value"])
    assert values[0] == 0.3 and pd.isna(values[1]) and values[3:5] == [0.1, 0.2] and pd.isna(values[5])
    assert logic.steps_heatmap([], "k1").empty


def test_token_totals_sum_each_quantity():
    totals = logic.token_totals(KLQ)
    assert totals["k1"] == pytest.approx(0.5 - 1.0 + 0.0 - 1.0)
    assert totals["entropy"] == pytest.approx(10.5)
    assert "advantage" not in totals


def test_sample_query_builds_the_api_parameters():
    assert logic.sample_query() == {}
    assert logic.sample_query("kl", descending=True) == {"sort": "-kl"}
    assert logic.sample_query("rm_gold_gap", bounds={"score": (0.5, None), "length": (None, 20)}) == {
        "sort": "rm_gold_gap",
        "min_score": 0.5,
        "max_length": 20,
    }
    assert logic.sample_query(bounds={"kl": (0.0, 0.0)}) == {"min_kl": 0.0, "max_kl": 0.0}  # 0 is a bound
    with pytest.raises(ValueError, match="unknown sort key 'loss'"):
        logic.sample_query("loss")
    with pytest.raises(ValueError, match="unknown filter 'steps'"):
        logic.sample_query(bounds={"steps": (1, 2)})


def test_sample_label():
    eval_sample = {"prompt_id": "p0", "step": 5, "score": 0.5, "gold_score": None, "kl": 1.25, "kind": "eval"}
    assert logic.sample_label(eval_sample) == "p0 @ step 5 · score 0.5 · gold – · KL 1.25"
    train = {**eval_sample, "kind": "train", "sample_index": 3, "response_length": 12}
    assert logic.sample_label(train) == "p0 @ step 5 #3 · score 0.5 · gold – · KL 1.25 · 12 tokens"


# --- the charts ------------------------------------------------------------------------------------------


def _layers(chart) -> list[dict]:
    return chart.to_dict()["layer"]


def test_token_chart_diverging_scale_centred_on_zero_with_tooltips():
    domain = logic.color_domain("k1", [KLQ["quantities"]["k1"], [2.0]])
    chart = ui.token_chart(logic.token_layout(KLQ, "k1", domain), "k1", domain)
    rect, text = _layers(chart)
    scale = rect["encoding"]["color"]["scale"]
    assert (
        scale["domain"] == [-2.0, 2.0] and scale["domainMid"] == 0 and scale["scheme"] == ui.DIVERGING_SCHEME
    )
    assert rect["encoding"]["color"]["title"] == "k1"  # the legend names the quantity
    assert rect["encoding"]["color"]["field"] == "shown"
    tips = [t["field"] for t in rect["encoding"]["tooltip"]]
    assert tips[:3] == ["token", "id", "position"] and set(logic.present_quantities([KLQ])) <= set(tips)
    assert text["encoding"]["text"]["field"] == "label"  # the token's text, drawn as text
    data = next(iter(chart.to_dict()["datasets"].values()))
    assert [row["token"] for row in data] == KLQ["tokens"]


def test_token_chart_sequential_scale_over_the_range():
    domain = logic.color_domain("entropy", [KLQ["quantities"]["entropy"]])
    rect, _ = _layers(ui.token_chart(logic.token_layout(KLQ, "entropy", domain), "entropy", domain))
    scale = rect["encoding"]["color"]["scale"]
    assert (
        scale["domain"] == [0.5, 4.0] and "domainMid" not in scale and scale["scheme"] == ui.SEQUENTIAL_SCHEME
    )


def test_token_heatmap_shares_the_domain():
    frame = logic.steps_heatmap([KLQ, {**KLQ, "step": 20}], "delta")
    spec = ui.token_heatmap(frame, "delta", [-0.3, 0.3]).to_dict()
    assert spec["encoding"]["color"]["scale"]["domain"] == [-0.3, 0.3]
    assert spec["encoding"]["y"]["field"] == "step" and spec["encoding"]["x"]["field"] == "position"


def test_rollouts_frame_keeps_the_api_order_and_the_gap():
    rows = [
        {"prompt_id": "p1", "sample_index": 3, "score": 0.9, "gold_score": 0.1, "kl": 2.0, "response_length": 7,
         "response": SCRIPT},
        {"prompt_id": "p0", "sample_index": 0, "score": 0.5, "gold_score": None, "kl": 1.0, "response_length": None,
         "response": LINK},
    ]  # fmt: skip
    frame = logic.rollouts_frame(rows)
    assert list(frame["prompt_id"]) == ["p1", "p0"] and list(frame["index"]) == [3, 0]
    assert frame.loc[0, "score − gold"] == pytest.approx(0.8) and pd.isna(frame.loc[1, "score − gold"])
    assert list(frame["response"]) == [SCRIPT, LINK]
