"""Responsiveness at scale (AppTest against a real API): 200 runs, and a run with 100,000 points per
metric key. The runs list is paged (50 per page), series are downsampled on the server, and the page
fetches at most ``max_points`` points per curve."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from backend_testkit import Server, fresh_database, start_server, stop_server
from frontend_testkit import all_text, page, seed_config, widget

from backend import migrate, store
from frontend.client import Client

N_RUNS = 200
N_POINTS = 100_000
KEYS = ("objective/scores", "objective/kl", "objective/rlhf_reward", "loss/q_avg")
BUDGET_S = 10.0  # per page render; typically well under a second or two


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module) -> Iterator[tuple[Server, int]]:
    tmp = tmp_path_factory.mktemp("fe-scale")
    with fresh_database("sqlite", tmp) as url:
        migrate.upgrade(url)
        srv = start_server("sqlite", url, tmp / "data")
        try:
            with srv.db.write_session() as s:
                for i in range(N_RUNS):
                    run = store.create_run(
                        s,
                        seed_config("klq" if i % 2 else "ppo", kl_coef=0.01 * (1 + i % 10)),
                        name=f"bulk-{i:03d}",
                        tags=["bulk"],
                        commit=False,
                    )
                    s.flush()
                    store.write_metrics(
                        s,
                        run.id,
                        [("objective/scores", 1, i / N_RUNS, None), ("objective/kl", 1, 1 + i % 7, None)],
                        commit=False,
                    )
                s.commit()
                long = store.create_run(s, seed_config(iterations=N_POINTS), name="long-run").id
                store.set_status(s, long, "running")
                store.set_progress(s, long, iteration=N_POINTS)
                store.write_metrics(
                    s,
                    long,
                    [
                        (k, st, ((st * 7919) % 1000) / 1000 + j, 1.7e9 + st)
                        for st in range(1, N_POINTS + 1)
                        for j, k in enumerate(KEYS)
                    ],
                )
                store.finish_run(s, long, "succeeded")
            monkeypatch_module.setenv("KLQ_API_URL", srv.url)
            monkeypatch_module.setenv("KLQ_API_TOKEN", srv.token)
            yield srv, long
        finally:
            stop_server(srv)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(autouse=True)
def _fresh_caches():
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def test_runs_page_with_200_runs(big):
    at, first = timed(lambda: page("runs"))
    assert "201 run(s) · page 1 of 5" in all_text(at)
    df = at.dataframe[0].value
    assert len(df) == 50 and df["task"].notna().all() and df["tau"].notna().all()
    at.button(key="runs.next").click()
    _, second = timed(at.run)
    assert "page 2 of 5" in all_text(at) and len(at.dataframe[0].value) == 50
    at.text_input(key="runs.q").set_value("bulk-19")
    _, search = timed(at.run)
    assert set(at.dataframe[0].value["name"]) == {f"bulk-{i}" for i in range(190, 200)}
    print(f"runs page: first {first:.2f}s, next page {second:.2f}s, search {search:.2f}s")
    assert first < BUDGET_S and second < BUDGET_S and search < BUDGET_S


def test_run_page_with_100k_points_per_key(big, monkeypatch):
    _, long = big
    fetched = []
    original = Client.series

    def spy(self, *args, **kw):
        out = original(self, *args, **kw)
        fetched.extend(out["series"])
        return out

    monkeypatch.setattr(Client, "series", spy)
    at, elapsed = timed(lambda: page("run", {"run": long}))
    assert widget(at, "run.max_points").value == 1000
    assert {s["key"] for s in fetched} == set(KEYS)
    for s in fetched:
        assert s["total_points"] == N_POINTS and s["downsampled"] and len(s["steps"]) <= 1000
    scores = next(s for s in fetched if s["key"] == "objective/scores")
    assert (
        f"objective/scores: {len(scores['steps'])} points (of {N_POINTS}), last step {N_POINTS}"
        in all_text(at)
    )
    print(f"run page, 4 keys x {N_POINTS} points: {elapsed:.2f}s")
    assert elapsed < BUDGET_S


def test_compare_page_with_20_runs_and_the_frontier_of_all(big):
    srv, long = big
    with Client(srv.url, srv.token) as c:
        ids = [r["id"] for r in c.list_runs(limit=20)["items"] if r["id"] != long][:19] + [long]
    at, elapsed = timed(lambda: page("compare", {"runs": ",".join(map(str, ids))}))
    assert len(widget(at, "compare.runs").value) == 20
    at.session_state["compare.tab"] = "Reward vs KL"
    at.run()
    at.radio(key="compare.scope").set_value("all")
    _, frontier = timed(at.run)
    df = next(d.value for d in at.dataframe if "on_frontier" in d.value.columns)
    assert len(df) == N_RUNS and df["on_frontier"].any()
    print(f"compare page, 20 runs: {elapsed:.2f}s; frontier of {N_RUNS} runs: {frontier:.2f}s")
    assert elapsed < BUDGET_S and frontier < BUDGET_S
