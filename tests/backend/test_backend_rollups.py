"""Metric roll-ups (metric_rollups) and the series they serve: exact under out-of-order steps, re-sent and
rewritten steps, NaN/inf values and run deletion; every bucket's raw minimum and maximum come back in a
downsampled series, checked against the raw points on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import random

import pytest
from backend_testkit import Server, create_run, fresh_database
from sqlalchemy import func, select

from backend import migrate, store
from backend.db import Database
from backend.models import Metric, MetricRollup
from backend.store.metrics import rollup_aggregates, rollup_cover


def _raw(server: Server, run_id: int, key: str) -> list[tuple[int, float | None, float | None]]:
    with server.db.session() as s:
        return store.metric_points(s, run_id, key)


def _stored_rollups(db: Database, run_id: int) -> dict[tuple[str, int, int], list]:
    with db.session() as s:
        rows = s.execute(select(MetricRollup).where(MetricRollup.run_id == run_id)).scalars().all()
        return {
            (r.key, r.level, r.bucket): [
                r.count, r.min_value, r.min_step, r.min_wall, r.max_value, r.max_step, r.max_wall
            ]
            for r in rows
        }  # fmt: skip


def _expected_rollups(db: Database, run_id: int) -> dict[tuple[str, int, int], list]:
    """The roll-ups recomputed from scratch from the stored points."""
    with db.session() as s:
        points = s.execute(
            select(Metric.key, Metric.step, Metric.value, Metric.wall_time)
            .where(Metric.run_id == run_id)
            .order_by(Metric.key, Metric.step)
        ).all()
    return rollup_aggregates(tuple(p) for p in points)


def _messy_writes(server: Server, run_id: int, rng: random.Random, steps: list[int]) -> None:
    """Points of two keys written the way a worker can: per step and in bulk, out of order, with NaN and
    +-inf, re-sent unchanged after an "outage", rewritten after a resume, and with on_conflict=ignore."""
    values = {step: rng.uniform(-1, 1) for step in steps}
    for step in rng.sample(steps, 15):
        values[step] = rng.choice([100.0, -100.0]) * rng.uniform(1, 2)  # spikes
    for step in rng.sample(steps, 20):
        values[step] = rng.choice([math.nan, math.inf, -math.inf])
    rows = [
        (key, step, values[step] + (0.5 if key == "kl" else 0.0), 1.7e9 + step)
        for step in steps
        for key in ("loss", "kl")
    ]
    order = list(range(len(rows)))
    head = order[:40]
    rng.shuffle(order)
    with server.db.write_session() as s:
        for i in head:  # per step
            store.write_metrics(s, run_id, [rows[i]])
        for start in range(0, len(order), 997):  # bulk, out of order
            store.write_metrics(s, run_id, [rows[i] for i in order[start : start + 997]])
        store.write_metrics(s, run_id, [rows[i] for i in order[:300]])  # re-sent unchanged (idempotent)
        resumed = [(k, st, rng.uniform(-3, 3), 1.8e9 + st) for k, st, _v, _w in rows[-200:]]
        resumed[5] = (resumed[5][0], resumed[5][1], math.nan, None)  # a rewrite to NaN
        store.write_metrics(s, run_id, resumed)  # rewritten (newest value wins)
        store.write_metrics(
            s, run_id, [(k, st, 1e6, None) for k, st, _v, _w in rows[:50]], on_conflict="ignore"
        )
        # a lone new spike far ahead and one rewritten in the middle of a written range
        store.write_metrics(s, run_id, [("loss", steps[-1] + 12_345, 500.0, None)])
        mid = steps[len(steps) // 2]
        store.write_metrics(s, run_id, [("loss", mid, -777.0, 1.0)])


def test_rollups_stay_exact_under_messy_writes_and_go_with_the_run(server: Server, client) -> None:
    rng = random.Random(7)
    rid = create_run(client)["id"]
    steps = sorted(rng.sample(range(3_000_000), 4000)) + list(range(10_000, 12_000))
    steps = sorted(set(steps))
    _messy_writes(server, rid, rng, steps)
    stored = _stored_rollups(server.db, rid)
    expected = _expected_rollups(server.db, rid)
    assert stored.keys() == expected.keys()
    for k, agg in expected.items():
        got = stored[k]
        # same count and extreme values; the step of a tied extreme may differ (none are tied here)
        assert got == agg, (k, got, agg)
    assert {level for _k, level, _b in stored} == set(store.ROLLUP_LEVELS)

    assert client.delete(f"/runs/{rid}").status_code == 204
    with server.db.session() as s:
        left = s.scalar(select(func.count()).select_from(MetricRollup).where(MetricRollup.run_id == rid))
    assert left == 0


def _bucket_shift(first: int, last: int, buckets: int) -> int:
    """Independent of the server's code: the smallest power-of-two width that cuts [first, last] into at
    most `buckets` aligned buckets."""
    width = 1
    while last // width - first // width + 1 > buckets:
        width *= 2
    return width


@pytest.mark.parametrize("max_points", [10, 64, 500])
def test_series_returns_every_bucket_min_and_max_of_the_raw_points(
    server: Server, client, max_points
) -> None:
    rng = random.Random(max_points)
    rid = create_run(client)["id"]
    steps = sorted(set(rng.sample(range(2_000_000), 3000)) | set(range(40_000, 45_000)))
    _messy_writes(server, rid, rng, steps)
    raw = {st: (v, w) for st, v, w in _raw(server, rid, "loss")}
    windows = [(None, None), (39_990, 44_321), (17, 1_234_567), (44_000, 44_100), (None, 1_999_000)]
    for since, until in windows:
        params = {"run_id": rid, "key": "loss", "max_points": max_points, "include_wall_time": True}
        if since is not None:
            params["since_step"] = since
        if until is not None:
            params["until_step"] = until
        r = client.get("/metrics/series", params=params)
        assert r.status_code == 200, r.text
        got = r.json()["series"][0]
        inside = {
            st: vw
            for st, vw in raw.items()
            if (since is None or st > since) and (until is None or st <= until)
        }
        finite = {st: vw for st, vw in inside.items() if vw[0] is not None and math.isfinite(vw[0])}
        assert got["total_points"] == len(finite)
        assert got["last_step"] == max(inside)
        assert len(got["steps"]) <= max_points and got["steps"] == sorted(got["steps"])
        # every returned point is a raw point (step, value and wall time)
        for st, v, w in zip(got["steps"], got["values"], got["wall_times"], strict=True):
            assert finite[st] == (v, w)
        if len(finite) <= max_points:
            assert got["steps"] == sorted(finite) and not got["downsampled"]
            continue
        assert got["downsampled"]
        first, last = min(finite), max(finite)
        assert got["steps"][0] == first and got["steps"][-1] == last
        width = _bucket_shift(first, last, (max_points - 2) // 2)
        returned: dict[int, list[float]] = {}
        for st, v in zip(got["steps"], got["values"], strict=True):
            returned.setdefault(st // width, []).append(v)
        buckets: dict[int, list[float]] = {}
        for st, (v, _w) in finite.items():
            buckets.setdefault(st // width, []).append(v)
        for b, vals in buckets.items():
            assert min(vals) in returned[b] and max(vals) in returned[b], (since, until, b)
        assert max(got["values"]) == max(v for v, _w in finite.values())
        assert min(got["values"]) == min(v for v, _w in finite.values())


def test_rollup_cover_cuts_a_range_exactly() -> None:
    """Every step of [lo, hi] is in exactly one returned bucket or point range, and nothing outside."""
    levels = (4, 8, 12)
    rng = random.Random(3)
    for _ in range(300):
        lo = rng.randrange(0, 200_000)
        hi = lo + rng.randrange(0, 100_000)
        nodes, ends = rollup_cover(lo, hi, levels)
        spans = [(b_lo << lv, ((b_hi + 1) << lv) - 1) for lv, b_lo, b_hi in nodes] + list(ends)
        spans.sort()
        assert spans[0][0] == lo and spans[-1][1] == hi
        for (_a, b), (c, _d) in zip(spans, spans[1:], strict=False):
            assert c == b + 1
        assert all(e[1] - e[0] < 2**4 for e in ends) and len(nodes) <= 1 + 2 * (len(levels) - 1)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migration_rolls_up_existing_metrics(kind: str, tmp_path) -> None:
    """Points stored before 0008 get their roll-ups from the migration: the same as write_metrics keeps."""
    with fresh_database(kind, tmp_path) as url:
        migrate.upgrade(url, "0004")
        db = Database(url)
        rng = random.Random(1)
        with db.write_session() as s:
            rid = store.create_run(s, {"name": "old"}).id
            rows = [
                {
                    "run_id": rid,
                    "key": key,
                    "step": st,
                    "value": rng.choice([rng.random(), None]),
                    "wall_time": 1.0 + st,
                }
                for key in ("a", "b")
                for st in rng.sample(range(300_000), 3000)
            ]
            s.execute(Metric.__table__.insert(), rows)
            s.commit()
        migrate.upgrade(url)
        try:
            assert _stored_rollups(db, rid) == _expected_rollups(db, rid) != {}
        finally:
            db.dispose()


def test_concurrent_overlapping_bulk_writers_stay_exact(server: Server, client) -> None:
    """Two writers send overlapping batches of 500 points of the same run at once. On PostgreSQL a batch of
    new points goes by COPY; one that meets the other writer's points (committed, or waited for on the
    primary key) is refused as a whole and goes the ON CONFLICT way. Every point is stored once and the
    roll-ups equal those recomputed from the stored points."""
    import threading

    rid = create_run(client)["id"]
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            rng = random.Random(offset)
            for b in range(8):
                # batch b covers steps [b*250 + offset, b*250 + offset + 250): each overlaps the other's
                steps = range(b * 250 + offset, b * 250 + offset + 250)
                rows = [(key, st, rng.uniform(-1, 1), 1.7e9 + st) for st in steps for key in ("loss", "kl")]
                with server.db.write_session() as s:
                    store.write_metrics(s, rid, rows, on_conflict="ignore")
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(offset,)) for offset in (0, 125)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with server.db.session() as s:
        n = s.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == rid))
    assert n == 2 * (7 * 250 + 250 + 125)  # steps 0 .. 2124, two keys
    assert _stored_rollups(server.db, rid) == _expected_rollups(server.db, rid) != {}


@pytest.mark.postgres
def test_pg_copy_refuses_a_batch_that_meets_stored_points_and_writes_nothing(tmp_path) -> None:
    """PostgreSQL's COPY path (_pg_copy_points): a batch of new points is stored; a batch with one stored
    point among new ones is refused whole, with nothing written and the transaction still usable; the
    store then writes it the ON CONFLICT way (the newest value wins)."""
    from backend.store.metrics import PG_COPY_MIN_ROWS, _pg_copy_points

    with fresh_database("postgres", tmp_path) as url:
        migrate.upgrade(url)
        db = Database(url)
        try:
            with db.write_session() as s:
                rid = store.create_run(s, {"name": "copy"}).id
            new = [(rid, "loss", st, float(st), 1.0) for st in range(PG_COPY_MIN_ROWS)]
            with db.write_session() as s:
                assert _pg_copy_points(s, rid, new) is True
                s.commit()
            mixed = [
                (rid, "loss", st, -float(st), 2.0) for st in range(PG_COPY_MIN_ROWS - 1, 2 * PG_COPY_MIN_ROWS)
            ]
            with db.write_session() as s:
                assert _pg_copy_points(s, rid, mixed) is False
                # nothing of the refused batch is there, and the transaction goes on
                stored = s.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == rid))
                assert stored == PG_COPY_MIN_ROWS
                s.commit()
            with db.write_session() as s:
                store.write_metrics(s, rid, [r[1:] for r in mixed])  # the store's fallback: newest wins
            with db.session() as s:
                points = dict((st, v) for st, v, _w in store.metric_points(s, rid, "loss"))
            assert len(points) == 2 * PG_COPY_MIN_ROWS
            assert points[PG_COPY_MIN_ROWS - 1] == -float(PG_COPY_MIN_ROWS - 1)
            assert points[0] == 0.0
        finally:
            db.dispose()
