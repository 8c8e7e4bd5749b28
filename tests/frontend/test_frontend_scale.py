"""Responsiveness at scale (AppTest against a real API): 200 runs, and a run with 100,000 points per
metric key. The runs list is paged (50 per page), series are downsampled on the server, and the page
fetches at most ``max_points`` points per curve.

What is checked is the work a page asks of the API (requests, rows and bytes per render), which does not
grow with the data and does not depend on the machine; render times are printed, not asserted (a loaded
CI machine may be slow at any moment)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest
from backend_testkit import Server, served_database
from frontend_testkit import all_text, page, seed_config, widget

from backend import store
from klq.client import Client

N_RUNS = 200
N_POINTS = 100_000
KEYS = ("objective/scores", "objective/kl", "objective/rlhf_reward", "loss/q_avg")
PAGE_SIZE = 50  # runs per page of the Runs page (frontend/views/runs.py)
MAX_BYTES = 2_000_000  # per page render: what the API sends for a page, whatever the amount of data


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module) -> Iterator[tuple[Server, int]]:
    tmp = tmp_path_factory.mktemp("fe-scale")
    with served_database("sqlite", tmp) as srv:
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


@dataclass
class Traffic:
    """The API requests the dashboard made: (method, path, query parameters, response bytes)."""

    calls: list[tuple[str, str, dict, int]] = field(default_factory=list)

    def take(self) -> list[tuple[str, str, dict, int]]:
        out, self.calls = self.calls, []
        return out


@pytest.fixture
def traffic(monkeypatch) -> Traffic:
    seen = Traffic()
    original = Client._request

    def spy(self, method, path, *, params=None, **kw):
        response = original(self, method, path, params=params, **kw)
        query = parse_qs(urlsplit(str(response.request.url)).query)
        seen.calls.append((method, path, query, len(response.content)))
        return response

    monkeypatch.setattr(Client, "_request", spy)
    return seen


def assert_bounded(calls: list[tuple[str, str, dict, int]], max_requests: int) -> None:
    assert calls and len(calls) <= max_requests, [c[:2] for c in calls]
    assert sum(c[3] for c in calls) <= MAX_BYTES, sum(c[3] for c in calls)
    for _, path, query, _ in calls:
        if path == "/runs":  # lists are paged
            assert int(query["limit"][0]) <= 200, query


def assert_runs_page_work(calls: list[tuple[str, str, dict, int]]) -> None:
    """One page of runs listed, and at most one config fetched per run on it (kept for good after)."""
    lists = [q for _, path, q, _ in calls if path == "/runs" and q["limit"] == [str(PAGE_SIZE)]]
    assert len(lists) == 1, calls
    configs = [path for _, path, _, _ in calls if path.startswith("/runs/")]
    assert len(configs) <= PAGE_SIZE, configs
    assert_bounded(calls, PAGE_SIZE + 10)


def test_runs_page_with_200_runs(big, traffic):
    at, first = timed(lambda: page("runs"))
    assert "201 run(s) · page 1 of 5" in all_text(at)
    df = at.dataframe[0].value
    assert len(df) == 50 and df["task"].notna().all() and df["tau"].notna().all()
    assert_runs_page_work(traffic.take())
    at.button(key="runs.next").click()
    _, second = timed(at.run)
    assert "page 2 of 5" in all_text(at) and len(at.dataframe[0].value) == 50
    assert_runs_page_work(traffic.take())
    at.text_input(key="runs.q").set_value("bulk-19")
    _, search = timed(at.run)
    assert set(at.dataframe[0].value["name"]) == {f"bulk-{i}" for i in range(190, 200)}
    calls = traffic.take()
    assert_runs_page_work(calls)
    assert not [p for _, p, _, _ in calls if p.startswith("/runs/")]  # configs of page 1's runs: known
    print(f"runs page: first {first:.2f}s, next page {second:.2f}s, search {search:.2f}s")


def test_run_page_with_100k_points_per_key(big, monkeypatch, traffic):
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
    calls = traffic.take()
    assert_bounded(calls, 12)
    series_calls = [q for _, path, q, _ in calls if path == "/metrics/series"]
    assert len(series_calls) <= 2 and all(q["max_points"] == ["1000"] for q in series_calls), series_calls


def test_compare_page_with_20_runs_and_the_frontier_of_all(big, traffic):
    srv, long = big
    with Client(srv.url, srv.token) as c:
        ids = [r["id"] for r in c.list_runs(limit=20)["items"] if r["id"] != long][:19] + [long]
    at, elapsed = timed(lambda: page("compare", {"runs": ",".join(map(str, ids))}))
    assert len(widget(at, "compare.runs").value) == 20
    assert_bounded(traffic.take(), 40)
    at.session_state["compare.tab"] = "Reward vs KL"
    at.run()
    traffic.take()
    at.radio(key="compare.scope").set_value("all")
    _, frontier = timed(at.run)
    df = next(d.value for d in at.dataframe if "on_frontier" in d.value.columns)
    assert len(df) == N_RUNS and df["on_frontier"].any()
    # the frontier of all 200 runs: the series of 20 runs per request, never one request per run; the
    # config of each run once (for its tau), kept for good after
    calls = traffic.take()
    configs = [path for _, path, _, _ in calls if path.startswith("/runs/")]
    assert len(configs) == len(set(configs)) <= N_RUNS, configs
    assert_bounded(calls, len(configs) + 2 * N_RUNS // 20 + 10)
    at.run()
    assert not [path for _, path, _, _ in traffic.take() if path.startswith("/runs/")]
    print(f"compare page, 20 runs: {elapsed:.2f}s; frontier of {N_RUNS} runs: {frontier:.2f}s")
