"""The Run page (AppTest against a real API): curves per panel, live tails fetched with since_step,
smoothing and x-axes, config, the training log (followed by byte offset) and errors, checkpoints."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import streamlit as st
from frontend_testkit import (
    KLQ_METRICS,
    all_text,
    check,
    metric_rows,
    open_tab,
    page,
    seed_config,
    walk,
    widget,
)

from backend import store
from klq.client import Client


def charts(at):
    return [n for n in walk(at.main) if getattr(n, "type", None) == "vega_lite_chart"]


def chart_titles(at) -> list[str]:
    out = []
    for c in charts(at):
        spec = json.loads(c.proto.spec)
        title = spec.get("title")
        out.append(title["text"] if isinstance(title, dict) else title)
    return out


def test_curves_of_a_finished_run(app_env, seeded):
    at = page("run", {"run": seeded.klq})
    assert widget(at, "run.id").value == seeded.klq
    titles = chart_titles(at)  # two columns: the walk goes down the left one first
    assert sorted(titles) == sorted(
        ["Reward (RM score, gold)", "KL", "RLHF reward", "Losses", "Entropy", "Q values (KLQ)", "Timing"]
    )
    text = all_text(at)
    assert "objective/scores: 50 points, last step 50" in text
    assert "objective/gold_scores: 50 points, last step 50" in text and "eval/scores: 5 points" in text
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Status"] == "succeeded" and metrics["Iteration"] == "50/50" and metrics["tau"] == "0.05"
    assert metrics["Reward"] == "0.7" and metrics["KL"] == "2.5"
    assert widget(at, "run.live").disabled  # nothing to follow: the run has finished
    # choosing panels
    at.multiselect(key="run.panels").set_value(["KL", "Other"]).run()
    assert chart_titles(at) == ["KL"]  # no 'Other' keys in this run


def test_win_rate_vs_reference_beside_the_reward_with_a_band(app_env, seeded):
    """A run with an eval judge: its win-rate panel comes right after the reward's (the other column of the
    same row), the interval drawn as a band behind the line, on every x-axis."""
    cfg = seed_config("klq", eval_judge={"backend": "gold"})
    judged = {
        "eval/win_rate_vs_ref": lambda s: 0.5 + s / 200,
        "eval/win_rate_vs_ref_ci_low": lambda s: 0.4 + s / 200,
        "eval/win_rate_vs_ref_ci_high": lambda s: 0.6 + s / 200,
    }
    with app_env.db.write_session() as s:
        rid = store.create_run(s, cfg, name="seed-judged", tags=("judged",), queue="gpu").id
        store.write_metrics(s, rid, metric_rows(range(1, 51), KLQ_METRICS))
        store.write_metrics(s, rid, metric_rows(range(10, 51, 10), judged))
    at = page("run", {"run": rid})
    specs = {t: json.loads(c.proto.spec) for t, c in zip(chart_titles(at), charts(at))}
    assert "Win-rate vs reference (judge)" in specs
    layers = specs["Win-rate vs reference (judge)"]["layer"]
    assert [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in layers] == [
        "area", "line"
    ]
    assert "eval/win_rate_vs_ref: 5 points, last step 50" in all_text(at)
    for x in ("relative", "time"):
        at.selectbox(key="run.x").set_value(x).run()
        assert not at.exception and "Win-rate vs reference (judge)" in chart_titles(at)


def test_smoothing_and_x_axes(app_env, seeded):
    at = page("run", {"run": seeded.klq})
    at.slider(key="run.smoothing").set_value(0.6).run()
    spec = json.dumps(json.loads(charts(at)[0].proto.spec))
    assert "smoothed" in spec
    for x in ("relative", "time"):
        at.selectbox(key="run.x").set_value(x).run()
        assert not at.exception and len(charts(at)) == 7
    at.selectbox(key="run.max_points").set_value(500).run()
    assert not at.exception


def test_live_run_fetches_only_new_points(app_env, seeded, monkeypatch):
    with app_env.db.write_session() as s:
        rid = store.create_run(s, seed_config(iterations=100), name="live-tail", queue="gpu").id
        store.set_status(s, rid, "running")
        store.set_progress(s, rid, iteration=10)
        store.write_metrics(s, rid, metric_rows(range(1, 11), KLQ_METRICS, wall0=time.time()))
    calls = []
    original = Client.series

    def spy(self, run_ids, keys=None, **kw):
        calls.append((list(run_ids), list(keys or []), kw.get("since_step")))
        return original(self, run_ids, keys, **kw)

    monkeypatch.setattr(Client, "series", spy)
    at = page("run", {"run": rid})
    assert widget(at, "run.live").value and not widget(at, "run.live").disabled
    assert "Live, every 3 s" in all_text(at)
    assert [c[2] for c in calls] == [None]  # the first request: every key, in full
    held = at.session_state["run.series"]["data"]
    assert len(held["objective/scores"]) == 10

    with app_env.db.write_session() as s:  # the worker writes five more iterations
        store.write_metrics(s, rid, metric_rows(range(11, 16), KLQ_METRICS, wall0=time.time()))
        store.set_progress(s, rid, iteration=15)
    calls.clear()
    at.run()  # what the fragment's timer does: draw again
    assert [c[2] for c in calls] == [9]  # only the tail: points after step 9
    held = at.session_state["run.series"]["data"]
    assert held["objective/scores"].steps == list(range(1, 16))  # no duplicates, nothing lost
    assert held["objective/scores"].values[-1] == pytest.approx(KLQ_METRICS["objective/scores"](15))
    assert "objective/scores: 15 points, last step 15" in all_text(at)

    with app_env.db.write_session() as s:  # the run ends: the page stops following it
        store.finish_run(s, rid, "succeeded")
    calls.clear()
    at.run()
    assert not widget(at, "run.live").value or widget(at, "run.live").disabled
    assert "Not live" in all_text(at)


def test_new_keys_are_fetched_in_full(app_env, seeded, monkeypatch):
    with app_env.db.write_session() as s:
        rid = store.create_run(s, seed_config(iterations=100), name="live-new-key", queue="gpu").id
        store.set_status(s, rid, "running")
        store.write_metrics(s, rid, metric_rows(range(1, 6), {"objective/scores": lambda st: st}))
    at = page("run", {"run": rid})
    assert "objective/kl" not in at.session_state["run.series"]["data"]
    with app_env.db.write_session() as s:
        store.write_metrics(s, rid, metric_rows(range(1, 8), {"objective/kl": lambda st: st / 10}))
    at.run()
    assert at.session_state["run.series"]["data"]["objective/kl"].steps == list(range(1, 8))


def test_config_logs_and_checkpoints(app_env, seeded):
    at = page("run", {"run": seeded.klq}, tab="Config")
    code = [c.value for c in at.code]
    assert any("kl_coef: 0.05" in c and "batch_size: 8" in c for c in code)
    assert not charts(at)  # only the open tab is drawn: no curves fetched
    open_tab(at, "run", "Logs")
    assert "No error recorded." in all_text(at)
    # finished, but its log is not in this server's data directory: the page says so
    assert f"the log of run {seeded.klq} is not on this server's data directory" in all_text(at)
    assert "Download all metrics (CSV)" in [b.label for b in at.get("download_button")]
    open_tab(at, "run", "Checkpoints")
    ckpt = at.dataframe[-1].value
    assert list(ckpt["step"]) == [50] and bool(ckpt["is_final"].iloc[0])
    assert "Download policy (zip, Hugging Face layout)" in [b.label for b in at.get("download_button")]


def provenance_table(at) -> dict[str, str]:
    return next(d.value for d in at.dataframe if "git commit" in d.value.index)[""].to_dict()


def test_provenance_in_the_config_tab(app_env, seeded):
    """What a worker records when training starts (klq.provenance.collect()), shown as text; a run that has
    not started says when it will have one."""
    from klq.provenance import collect

    provenance = {**collect(), "gpu": "NVIDIA H100 80GB HBM3", "device": "cuda:0", "host": "<b>gpu-7</b>"}
    with app_env.db.write_session() as s:
        rid = store.create_run(s, seed_config(), name="provenance", queue="gpu").id
        store.set_provenance(s, rid, {**provenance, "git_dirty": True})
    at = page("run", {"run": rid}, tab="Config")
    rows = provenance_table(at)
    assert rows["git commit"] == f"{provenance['git_commit']} (uncommitted changes)"
    assert (
        rows["torch"] == provenance["packages"]["torch"]
        and rows["klq-lab"] == provenance["packages"]["klq-lab"]
    )
    assert (
        rows["GPU"] == "NVIDIA H100 80GB HBM3"
        and rows["device"] == "cuda:0"
        and rows["host"] == "<b>gpu-7</b>"
    )
    with app_env.db.write_session() as s:  # not a git checkout: said so, not an error
        store.set_provenance(s, rid, {**provenance, "git_commit": None, "git_dirty": None})
    st.cache_data.clear()  # the page's run is cached for a few seconds
    at = page("run", {"run": rid}, tab="Config")
    assert provenance_table(at)["git commit"] == "not a git checkout"

    at = page("run", {"run": seeded.queued}, tab="Config")
    assert "Recorded when a worker starts training the run." in all_text(at)


def _write_log(server, run_id: int, data: bytes) -> Path:
    path = server.data_dir / "runs" / str(run_id) / "train.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(data)
    return path


def test_training_log_followed_live(app_env, seeded, monkeypatch):
    with app_env.db.write_session() as s:
        rid = store.create_run(s, seed_config(iterations=100), name="live-log", queue="gpu").id
    at = page("run", {"run": rid}, tab="Logs")
    assert f"run {rid} has no log yet: it has not started" in [i.value for i in at.info]
    with app_env.db.write_session() as s:
        store.set_status(s, rid, "running")
    _write_log(app_env, rid, b"".join(b"iteration %d <b>x</b>\n" % i for i in range(1, 251)) + b"half")
    calls = []
    original = Client.run_log

    def spy(self, run_id, **kw):
        calls.append(kw)
        return original(self, run_id, **kw)

    monkeypatch.setattr(Client, "run_log", spy)
    at.run()
    check(at)
    assert calls == [{"tail": 200}]
    (code,) = [c.value for c in at.code]
    assert code.splitlines() == [f"iteration {i} <b>x</b>" for i in range(51, 251)]  # text, never HTML
    assert "200 line(s) shown of 5.5 KiB (earlier lines: download the whole log)" in all_text(at)
    assert "Live, every 3 s" in all_text(at) and widget(at, "run.log_live").value
    assert "Download the whole log" in [b.label for b in at.get("download_button")]

    offset = at.session_state["run.log"]["offset"]
    _write_log(app_env, rid, b" done\nnext line\n")  # the worker writes on
    calls.clear()
    at.run()  # what the fragment's timer does: draw again
    assert calls == [{"offset": offset}]  # only what was written since
    lines = at.code[0].value.splitlines()
    assert lines[-2:] == ["half done", "next line"] and len(lines) == 200  # the last 200, nothing twice

    at.toggle(key="run.log_newest").set_value(True).run()
    assert at.code[0].value.splitlines()[0] == "next line"
    at.selectbox(key="run.log_lines").set_value(50).run()  # another tail length: read afresh
    assert len(at.code[0].value.splitlines()) == 50

    _write_log(app_env, rid, b"Traceback: the end")  # no newline: shown once the run has ended
    with app_env.db.write_session() as s:
        store.finish_run(s, rid, "failed", error="boom")
    at.run()
    check(at)
    assert at.code[-1].value.splitlines()[0] == "Traceback: the end"
    assert "Not live" in all_text(at)


def test_failed_run_shows_its_error_as_text(app_env, seeded):
    at = page("run", {"run": seeded.failed})
    assert "The run failed; see the Logs tab." in [e.value for e in at.error]
    open_tab(at, "run", "Logs")
    assert "RuntimeError: CUDA out of memory <b>not html</b>\nTraceback line 2" in [c.value for c in at.code]
    open_tab(at, "run", "Checkpoints")
    assert "No checkpoints yet." in all_text(at)


def test_queued_run_without_metrics(app_env, seeded):
    at = page("run", {"run": seeded.queued})
    assert "No metrics yet." in all_text(at)
    assert not at.button(key="run.cancel").disabled


def test_buttons_lead_to_other_pages(app_env, seeded):
    at = page("run", {"run": seeded.klq})
    at.button(key="run.clone").click().run()
    assert at.title[0].value == "Launch a run"
    assert widget(at, "launch.f.train.total_episodes").value == 400
    at = page("run", {"run": seeded.klq})
    at.button(key="run.samples").click().run()
    assert at.title[0].value == "Samples & judgements"
