"""The Samples & judgements page (AppTest against a real API): prompts side by side, word diffs against a
baseline, verdicts and raw judge output, launching and watching a judgement, win-rate with its CI; and
generated text always rendered as literal text, never as HTML or Markdown."""

from __future__ import annotations

import pyarrow as pa
import pytest
from frontend_testkit import (
    PROMPTS,
    XSS_JUDGE,
    XSS_PROMPT,
    XSS_RESPONSE,
    all_text,
    page,
    walk,
    widget,
)


def codes(at) -> list[str]:
    return [c.value for c in at.code]


def both(seeded) -> dict:
    return {"runs": f"{seeded.klq},{seeded.ppo}"}


def test_generated_text_is_rendered_literally(app_env, seeded):
    at = page("samples", both(seeded))
    blocks = codes(at)
    assert XSS_RESPONSE in blocks  # the response, byte for byte, in a code block
    assert XSS_PROMPT in blocks
    for node in walk(at.main):  # nothing renders HTML, and no Markdown element carries model text
        kind = getattr(node, "type", None)
        assert kind != "html"
        if kind == "markdown":
            assert not node.proto.allow_html
            assert "<script" not in node.value and "<b>" not in node.value and "<i>" not in node.value
    for kind in ("caption", "markdown", "text", "error", "info"):
        for value in (e.value for e in getattr(at, kind)):
            assert "alert('xss')" not in value
    # the judge's raw output too (the verdicts of the seeded judgement are shown by default)
    assert XSS_JUDGE in blocks


def test_side_by_side_with_scores_and_word_diff(app_env, seeded):
    at = page("samples", both(seeded))
    text = all_text(at)
    assert (
        f"{len(PROMPTS)} prompt(s) · page 1 of 1 · #{seeded.klq} at step 50, #{seeded.ppo} at step 50" in text
    )
    assert "score 0.5 · gold 0.25 · KL 1 · step 50" in text  # p0 of the KLQ run
    assert "the coffee was very good ." in codes(at)
    diff = next(c for c in codes(at) if "[-" in c and "coffee" in c)
    assert diff.startswith("the coffee was ") and "[-very" in diff and "{+hot" in diff
    assert f"identical to #{seeded.klq}" in text  # p3: both runs wrote the same response
    # another baseline: the diffs now sit under the KLQ run
    at.selectbox(key="samples.baseline").set_value(seeded.ppo).run()
    assert f"identical to #{seeded.ppo}" in all_text(at)
    assert any("{+very" in c for c in codes(at))


def test_order_where_the_runs_differ_most(app_env, seeded):
    """The Order choice goes to the API's sort (the ordering itself: tests/backend, compare). The seeded runs'
    scores at step 50 are 0.5 + i/10 and 0.4 + i/10 (frontend_testkit.samples): spreads of 0.1 up to the
    floating-point rounding, which decides their order here as on the server."""
    at = page("samples", both(seeded))
    order = widget(at, "samples.order")
    assert order.options == ["prompt id", "scores differ most", "gold scores differ most", "KL differs most",
                             "lengths differ most"]  # fmt: skip
    assert [c for c in codes(at) if c in PROMPTS.values()] == list(PROMPTS.values())  # by prompt id
    at.selectbox(key="samples.order").set_value("-score_spread").run()
    assert not at.error, [e.value for e in at.error]
    spread = {pid: (0.5 + i / 10) - (0.4 + i / 10) for i, pid in enumerate(PROMPTS)}
    expected = sorted(PROMPTS, key=lambda pid: (-spread[pid], pid))
    assert [c for c in codes(at) if c in PROMPTS.values()] == [PROMPTS[pid] for pid in expected]
    assert f"{len(PROMPTS)} prompt(s) · page 1 of 1" in all_text(at)


def test_pick_steps(app_env, seeded):
    at = page("samples", both(seeded))
    assert widget(at, f"samples.step.{seeded.klq}").options == ["latest", "step 50", "step 25"]
    at.selectbox(key=f"samples.step.{seeded.klq}").set_value(25).run()
    assert f"#{seeded.klq} at step 25, #{seeded.ppo} at step 50" in all_text(at)
    assert "score 0.3 · gold 0.15 · KL 1 · step 25" in all_text(at)


def test_single_run(app_env, seeded):
    at = page("samples", {"runs": seeded.ppo})
    assert XSS_RESPONSE in codes(at)
    assert f"#{seeded.ppo} at step 50" in all_text(at)


def test_verdicts_beside_the_prompts(app_env, seeded):
    at = page("samples", both(seeded))
    assert widget(at, "samples.judgement").value == seeded.judgement
    labels = [e.label for e in at.expander]
    assert labels.count(f"Judge: A wins (A = #{seeded.klq}, B = #{seeded.ppo})") == 3
    assert labels.count(f"Judge: B wins (A = #{seeded.klq}, B = #{seeded.ppo})") == 1
    at.selectbox(key="samples.judgement").set_value(0).run()
    assert not [e for e in at.expander if e.label.startswith("Judge:")]


def test_judgement_results_with_ci(app_env, seeded):
    at = page("samples", both(seeded), tab="Judgements")
    with app_env.client() as c:
        result = c.get(f"/judgements/{seeded.judgement}").json()["result"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Win rate of A"] == f"{100 * result['win_rate']:.1f}%"
    assert metrics["95% CI"] == f"{100 * result['ci_low']:.1f}–{100 * result['ci_high']:.1f}%"
    assert metrics["A / B / tie / invalid"] == "3 / 1 / 0 / 0"
    table = next(d.value for d in at.dataframe if "win rate of A" in d.value.columns).set_index("id")
    assert table.loc[seeded.judgement, "status"] == "succeeded"
    assert table.loc[seeded.queued_judgement, "B"] == "SFT"
    verdicts = next(d.value for d in at.dataframe if "judge output" in d.value.columns)
    assert len(verdicts) == 8 and set(verdicts["judge output"]) == {XSS_JUDGE}
    # its judge log: none on this server's data directory, then the one the worker wrote, as text
    assert f"the log of judgement {seeded.judgement} is not on this server's data directory" in all_text(at)
    log = app_env.data_dir / "judgements" / str(seeded.judgement) / "judge.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"judging 4 prompts\n{XSS_JUDGE}\n")
    try:
        at.run()
        assert f"judging 4 prompts\n{XSS_JUDGE}" in [c.value for c in at.code]
        assert "Download the judge log" in [b.label for b in at.get("download_button")]
    finally:
        log.unlink()
    # a queued judgement is watched with a progress bar
    assert any(f"Judgement {seeded.queued_judgement}: queued" in p.proto.text for p in at.get("progress"))


def test_judgement_length_diagnostics_beside_the_win_rate(app_env, seeded):
    at = page("samples", both(seeded), tab="Judgements")
    with app_env.client() as c:
        length = c.get(f"/judgements/{seeded.judgement}").json()["result"]["length"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Length-controlled win rate of A"] == f"{100 * length['lc_win_rate']:.1f}%"
    assert metrics["95% CI (bootstrap)"] == f"{100 * length['lc_ci_low']:.1f}–{100 * length['lc_ci_high']:.1f}%"
    # the seeded texts: KLQ's responses have 5 words each; PPO's 7 (p0), 6 (p1: the markup) and 5 (p2, p3)
    assert metrics["Mean words A / B"] == f"5.0 / {(7 + 6 + 5 + 5) / 4:.1f}"
    buckets = next(d.value for d in at.dataframe if "words A − B" in d.value.columns)
    assert list(buckets["prompts"]) == [b["prompts"] for b in length["buckets"]] and buckets["prompts"].sum() == 4
    filled = buckets[buckets["prompts"] > 0]  # a quartile can be empty when differences repeat
    assert list(filled["A's win rate"]) == pytest.approx([b["win_rate"] for b in length["buckets"] if b["prompts"]])
    chart = next(n for n in walk(at.main) if getattr(n, "type", None) == "vega_lite_chart")
    data = [pa.ipc.open_stream(d.data.data).read_pandas() for d in chart.proto.datasets]
    rows = next(d for d in data if "measure" in d.columns).set_index("measure")
    assert rows.loc["length-controlled", "rate"] == pytest.approx(length["lc_win_rate"])
    assert rows.loc["win rate", "rate"] == pytest.approx(0.75)


def test_launch_a_judgement(app_env, seeded):
    at = page("samples", both(seeded), tab="Judgements")
    assert widget(at, "judge.run_a").value == seeded.klq and widget(at, "judge.run_b").value == seeded.ppo
    at.number_input(key="judge.num_prompts").set_value(3)
    at.number_input(key="judge.step_b").set_value(25)
    at.button(key="judge.submit").click().run()
    text = all_text(at)
    assert "queued." in text
    with app_env.client() as c:
        items = c.get("/judgements", params={"run_id": seeded.klq}).json()["items"]
    new = max(items, key=lambda j: j["id"])
    assert (new["run_a"], new["run_b"], new["step_b"], new["num_prompts"]) == (seeded.klq, seeded.ppo, 25, 3)
    assert new["judge"] == {"backend": "gold", "decoding": "greedy"}
    assert f"Judgement {new['id']} queued." in text
    table = next(d.value for d in at.dataframe if "win rate of A" in d.value.columns).set_index("id")
    assert table.loc[new["id"], "status"] == "queued"
    # against the SFT policy
    at.selectbox(key="judge.run_b").set_value(0).run()
    at.button(key="judge.submit").click().run()
    with app_env.client() as c:
        newest = c.get("/judgements", params={"run_id": seeded.klq}).json()["items"]
    assert max(newest, key=lambda j: j["id"])["run_b"] is None


def test_judgement_errors_from_the_api(app_env, seeded):
    at = page("samples", both(seeded), tab="Judgements")
    at.text_input(key="judge.model").set_value("some-model")  # the gold judge takes no model
    at.button(key="judge.submit").click().run()
    errors = [e.value for e in at.error]
    assert any("unknown key(s) model for judge backend 'gold'" in e for e in errors), errors
