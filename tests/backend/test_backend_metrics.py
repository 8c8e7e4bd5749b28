"""Metrics: idempotent chunked writes, keys, downsampled multi-run series, exports, and the live SSE stream
(resumable with Last-Event-ID)."""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import threading

import httpx
import pytest
from backend_testkit import Server, create_run
from sqlalchemy import event, func, select

from backend import store
from backend.models import Metric, MetricLatest, MetricRollup


def _count(server: Server, run_id: int) -> int:
    with server.db.session() as s:
        return s.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == run_id))


def test_write_metrics_is_idempotent_and_keeps_latest(server: Server, client) -> None:
    rid = create_run(client)["id"]
    rows = [(k, step, float(step), 1000.0 + step) for k in ("loss", "reward") for step in range(100)]
    with server.db.write_session() as s:
        assert store.write_metrics(s, rid, rows) == 200
        assert store.write_metrics(s, rid, rows) == 200  # same points again: still one row each
        # duplicates inside one batch (PostgreSQL would refuse them in one statement) keep the last
        assert store.write_metrics(s, rid, [("loss", 5, 1.0), ("loss", 5, 2.0)]) == 1
        # a resumed run re-logs steps: newest value wins by default, "ignore" keeps the first
        store.write_metrics(s, rid, [("reward", 10, -1.0, None)])
        store.write_metrics(s, rid, [("reward", 11, -7.0, None)], on_conflict="ignore")
        # an older step never moves metric_latest back
        store.write_metrics(s, rid, [("loss", 3, 42.0, None)])
    assert _count(server, rid) == 200
    with server.db.session() as s:
        pts = dict((st, v) for st, v, _w in store.metric_points(s, rid, "loss"))
        assert pts[5] == 2.0 and pts[3] == 42.0
        rew = dict((st, v) for st, v, _w in store.metric_points(s, rid, "reward"))
        assert rew[10] == -1.0 and rew[11] == 11.0
        latest = store.latest_metrics(s, [rid])[rid]
        assert latest["loss"].step == 99 and latest["loss"].value == 99.0
    keys = client.get(f"/runs/{rid}/metrics/keys").json()
    assert [k["key"] for k in keys] == ["loss", "reward"] and keys[0]["last_step"] == 99


def test_metric_latest_moves_forward_only(server: Server, client) -> None:
    """metric_latest's upsert (one INSERT ... ON CONFLICT DO UPDATE ... WHERE): a rewrite of the latest
    step replaces its value by default and not with "ignore"; an older step never moves it back."""
    rid = create_run(client)["id"]
    with server.db.write_session() as s:
        store.write_metrics(s, rid, [("a", 7, 1.0, 10.0), ("b", 2, 2.0, 20.0)])
        store.write_metrics(s, rid, [("a", 7, 3.0, 30.0)])  # same step, update: newest wins
        store.write_metrics(s, rid, [("a", 7, 4.0, 40.0)], on_conflict="ignore")  # same step, ignore: kept
        store.write_metrics(s, rid, [("b", 1, 9.0, 90.0), ("c", 5, None, 50.0)])  # older step; new key
        store.write_metrics(s, rid, [("b", 3, 5.0, 60.0)], on_conflict="ignore")  # newer step moves it
    with server.db.session() as s:
        latest = store.latest_metrics(s, [rid])[rid]
        got = {k: (m.step, m.value, m.wall_time) for k, m in latest.items()}
    assert got == {"a": (7, 3.0, 30.0), "b": (3, 5.0, 60.0), "c": (5, None, 50.0)}


def test_nan_and_inf_values_do_not_break_json(server: Server, client) -> None:
    rid = create_run(client)["id"]
    with server.db.write_session() as s:
        store.write_metrics(
            s, rid, [("loss", 0, 1.0), ("loss", 1, float("nan")), ("loss", 2, float("inf")), ("loss", 3, 0.5)]
        )
    keys = client.get(f"/runs/{rid}/metrics/keys").json()
    assert keys[0]["last_value"] == 0.5
    series = client.get("/metrics/series", params={"run_id": rid, "key": "loss"}).json()["series"][0]
    # non-finite points are left out of the shape
    assert series["steps"] == [0, 3] and series["total_points"] == 2 and series["last_step"] == 3
    data = client.get(f"/runs/{rid}/metrics/export", params={"format": "json"}).json()
    assert [m["value"] for m in data["metrics"]] == [1.0, None, None, 0.5]


def test_sqlite_100k_points_in_one_call_respect_the_parameter_limit(server: Server, client) -> None:
    if server.kind != "sqlite":
        pytest.skip("SQLite's bound-parameter limit")
    rid = create_run(client)["id"]
    rows = [(f"k{i % 10}", i // 10, float(i), None) for i in range(100_000)]
    with server.db.write_session() as s:
        # the oldest SQLite default (999 variables per statement): chunks must adapt to it
        s.connection().connection.dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        assert store.rows_per_statement(s, 5) == 199
        # the work done, not the time it took (which depends on the machine): full chunks of 199 rows,
        # never a statement per row
        statements: list[str] = []

        def count(conn, cursor, statement, *args) -> None:
            statements.append(statement)

        event.listen(s.get_bind(), "before_cursor_execute", count)
        try:
            assert store.write_metrics(s, rid, rows) == 100_000
        finally:
            event.remove(s.get_bind(), "before_cursor_execute", count)
        assert store.write_metrics(s, rid, rows[:5000]) == 5000
    assert _count(server, rid) == 100_000
    inserts = [q for q in statements if "INSERT INTO metrics " in q]
    assert len(inserts) == -(-100_000 // 199), len(inserts)
    # the roll-ups of the same points go in full chunks too (11 columns: 90 rows per statement)
    rollups = [q for q in statements if "INSERT INTO metric_rollups " in q]
    with server.db.session() as s:
        n_rollups = s.scalar(select(func.count()).select_from(MetricRollup).where(MetricRollup.run_id == rid))
    assert len(rollups) == -(-n_rollups // (999 // 11)), (len(rollups), n_rollups)
    assert len(statements) <= len(inserts) + len(rollups) + 5, statements[len(inserts) :]
    with server.db.session() as s:
        assert (
            s.scalar(select(func.count()).select_from(MetricLatest).where(MetricLatest.run_id == rid)) == 10
        )


def test_series_downsampled_keeps_the_spike_for_several_runs_and_keys(server: Server, client) -> None:
    a, b = create_run(client)["id"], create_run(client)["id"]
    n = 20_000
    with server.db.write_session() as s:
        rows = [("loss", i, math.sin(i / 50.0) * 0.01, None) for i in range(n)]
        rows[12_345] = ("loss", 12_345, 1000.0, None)  # one spike
        store.write_metrics(s, a, rows)
        store.write_metrics(s, a, [("kl", i, -float(i), None) for i in range(0, n, 10)])
        store.write_metrics(s, b, [("loss", i, 1.0, None) for i in range(300)])
    r = client.get(
        "/metrics/series",
        params=[("run_id", a), ("run_id", b), ("key", "loss"), ("key", "kl"), ("max_points", 500)],
    )
    assert r.status_code == 200, r.text
    series = {(x["run_id"], x["key"]): x for x in r.json()["series"]}
    loss = series[(a, "loss")]
    assert loss["downsampled"] and len(loss["steps"]) <= 500 and loss["total_points"] == n
    assert 12_345 in loss["steps"] and max(loss["values"]) == 1000.0
    assert loss["steps"] == sorted(loss["steps"]) and loss["steps"][0] == 0 and loss["steps"][-1] == n - 1
    assert len(series[(a, "kl")]["steps"]) <= 500 and series[(a, "kl")]["values"][-1] == -(n - 10)
    small = series[(b, "loss")]
    assert not small["downsampled"] and small["steps"] == list(range(300))
    assert series[(b, "kl")]["steps"] == [] and series[(b, "kl")]["last_step"] is None

    # live tail: only points after since_step
    tail = client.get(
        "/metrics/series", params={"run_id": b, "key": "loss", "since_step": 295, "include_wall_time": True}
    )
    t = tail.json()["series"][0]
    assert t["steps"] == [296, 297, 298, 299] and t["last_step"] == 299 and len(t["wall_times"]) == 4
    # all keys when none are named
    keys = {
        x["key"]
        for x in client.get("/metrics/series", params={"run_id": a, "max_points": 50}).json()["series"]
    }
    assert keys == {"loss", "kl"}
    window = client.get(
        "/metrics/series", params={"run_id": a, "key": "loss", "since_step": 99, "until_step": 199}
    ).json()
    assert window["series"][0]["steps"] == list(range(100, 200))

    assert client.get("/metrics/series", params={"run_id": 999_999}).status_code == 404
    assert client.get("/metrics/series").status_code == 422
    assert client.get("/metrics/series", params={"run_id": a, "max_points": 2}).status_code == 422
    assert client.get("/metrics/series", params={"run_id": a, "since_step": -5}).status_code == 422


def test_export_csv_and_json(server: Server, client) -> None:
    rid = create_run(client)["id"]
    with server.db.write_session() as s:
        store.write_metrics(s, rid, [(k, i, i * 0.5, 100.0 + i) for k in ("a", "b") for i in range(5000)])
    r = client.get(f"/runs/{rid}/metrics/export")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 10_000 and rows[0] == {
        "run_id": str(rid),
        "key": "a",
        "step": "0",
        "value": "0.0",
        "wall_time": "100.0",
    }
    j = client.get(f"/runs/{rid}/metrics/export", params={"format": "json", "key": "b"}).json()
    assert j["run_id"] == rid and len(j["metrics"]) == 5000 and {m["key"] for m in j["metrics"]} == {"b"}
    assert client.get("/runs/999999/metrics/export").status_code == 404
    assert client.get(f"/runs/{rid}/metrics/export", params={"format": "xml"}).status_code == 422


def _read_events(response: httpx.Response, stop) -> list[dict]:
    """Parse server-sent events until stop(events) is true or the stream ends."""
    events: list[dict] = []
    current: dict = {}
    for line in response.iter_lines():
        if line == "":
            if current.get("event") or current.get("data"):
                events.append(current)
                if stop(events):
                    return events
            current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        current[name] = value if name != "data" else json.loads(value)
    return events


def test_sse_stream_resumes_with_last_event_id(server: Server, client) -> None:
    rid = create_run(client)["id"]
    with server.db.write_session() as s:
        store.acquire_lease(s, rid, "w1")
        store.write_metrics(
            s, rid, [(k, step, float(step), None) for k in ("loss", "kl") for step in range(5)]
        )

    def metric_steps(events):
        return [int(e["id"]) for e in events if e.get("event") == "metrics"]

    with client.stream("GET", f"/runs/{rid}/events", params={"since_step": -1}, timeout=15) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _read_events(r, lambda ev: len(metric_steps(ev)) >= 5)
    assert events[0]["event"] == "status" and events[0]["data"]["status"] == "running"
    assert metric_steps(events) == [0, 1, 2, 3, 4]
    first = next(e for e in events if e.get("event") == "metrics")
    assert first["data"] == {
        "step": 0,
        "values": {"kl": 0.0, "loss": 0.0},
        "wall_time": first["data"]["wall_time"],
    }

    # the worker goes on while the client is away; more arrives while it listens again
    with server.db.write_session() as s:
        store.write_metrics(s, rid, [("loss", step, float(step), None) for step in range(5, 8)])

    def later():
        # the worker's next writes come once the client is listening again, whatever the machine's speed
        assert listening.wait(30), "the client never caught up with steps 5-7"
        with server.db.write_session() as s:
            store.write_metrics(s, rid, [("loss", 8, 8.0, None)])
            store.write_samples(s, rid, [{"step": 8, "prompt_id": "p", "prompt": "q", "response": "r"}])
            store.heartbeat(s, rid, "w1", iteration=8)
            store.finish_run(s, rid, "succeeded", owner="w1")

    listening = threading.Event()

    def until_end(events: list[dict]) -> bool:
        if 7 in metric_steps(events):  # caught up while the run is still going: the rest comes live
            listening.set()
        return events[-1].get("event") == "end"

    thread = threading.Thread(target=later)
    thread.start()
    with client.stream("GET", f"/runs/{rid}/events", headers={"Last-Event-ID": "4"}, timeout=15) as r:
        events = _read_events(r, until_end)
    thread.join()
    assert metric_steps(events) == [5, 6, 7, 8]  # resumed after 4, nothing repeated, nothing lost
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "end" and events[-1]["data"]["status"] == "succeeded"
    assert "samples" in kinds
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses[0] == "running" and statuses[-1] == "succeeded"

    # without Last-Event-ID or since_step: from the latest step on (a finished run just ends)
    with client.stream("GET", f"/runs/{rid}/events", timeout=15) as r:
        events = _read_events(r, lambda ev: ev[-1].get("event") == "end")
    assert metric_steps(events) == []
    assert client.get("/runs/999999/events").status_code == 404


def test_too_many_series_in_one_request_is_422(client) -> None:
    ids = [create_run(client)["id"] for _ in range(5)]
    params = [("run_id", i) for i in ids] + [("key", f"k{n}") for n in range(100)]
    r = client.get("/metrics/series", params=params)
    assert r.status_code == 422 and "500 series requested" in r.json()["message"]
