"""The data-access layer as the worker uses it: leases, heartbeats, stale runs, progress, concurrency."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from backend_testkit import Server, create_run
from sqlalchemy import func, select, update

from backend import store
from backend.models import Judgement, Metric, Run, Sample, utcnow


def test_lease_is_exclusive_until_its_heartbeat_goes_stale(server: Server, client) -> None:
    rid = create_run(client)["id"]
    db = server.db
    with db.write_session() as s:
        assert store.acquire_lease(s, rid, "w1", worker_host="host-a", worker_gpu="0")
        assert not store.acquire_lease(s, rid, "w2")  # a second delivery of the same task
        assert store.acquire_lease(s, rid, "w1")  # the owner may re-acquire
        assert store.heartbeat(s, rid, "w1", iteration=2, episodes=16).ok
        assert not store.heartbeat(s, rid, "w2").ok
        # the heartbeat goes stale: another worker may take over; the first has lost its lease
        s.execute(update(Run).where(Run.id == rid).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
        s.commit()
        assert store.acquire_lease(s, rid, "w2", stale_after=timedelta(seconds=60))
        hb = store.heartbeat(s, rid, "w1")
        assert not hb.ok and not hb.cancel_requested
        assert not store.finish_run(s, rid, "succeeded", owner="w1")  # a stale worker cannot finish it
        assert store.finish_run(s, rid, "succeeded", owner="w2")
        assert not store.acquire_lease(s, rid, "w3")  # finished runs are never claimed
    run = client.get(f"/runs/{rid}").json()
    assert run["status"] == "succeeded" and run["attempts"] == 3 and run["worker_host"] == "host-a"
    assert run["iteration"] == 2 and run["episodes"] == 16 and run["started_at"] and run["finished_at"]


def test_requeue_stale_runs_and_cancelled_ones(server: Server, client) -> None:
    a, b, c = (create_run(client)["id"] for _ in range(3))
    db = server.db
    with db.write_session() as s:
        for rid in (a, b, c):
            assert store.acquire_lease(s, rid, f"w{rid}")
        s.execute(update(Run).where(Run.id.in_([a, b])).values(heartbeat_at=utcnow() - timedelta(hours=1)))
        s.commit()
    client.post(f"/runs/{b}/cancel")
    with db.write_session() as s:
        requeued = store.requeue_stale_runs(s, stale_after=timedelta(minutes=2))
    assert a in requeued and b not in requeued and c not in requeued
    assert client.get(f"/runs/{a}").json()["status"] == "queued"
    assert client.get(f"/runs/{b}").json()["status"] == "cancelled"
    assert client.get(f"/runs/{c}").json()["status"] == "running"
    with db.write_session() as s:
        assert store.acquire_lease(s, a, "new-worker")
        assert not store.acquire_lease(s, b, "new-worker")


def test_status_progress_and_error(server: Server, client) -> None:
    rid = create_run(client)["id"]
    with server.db.write_session() as s:
        assert store.set_progress(s, rid, iteration=5, total_iterations=10, episodes=40, worker_gpu="cuda:1")
        assert store.set_status(s, rid, "running")
        assert store.finish_run(s, rid, "failed", error="CUDA out of memory: try a smaller micro_batch_size")
    run = client.get(f"/runs/{rid}").json()
    assert run["progress"] == 0.5 and run["worker_gpu"] == "cuda:1"
    assert run["status"] == "failed" and run["error"].startswith("CUDA out of memory")
    assert client.get("/runs", params={"status": "failed"}).json()["total"] >= 1


def test_concurrent_writers_do_not_lock_each_other_out(server: Server, client) -> None:
    """Worker-style metric batches and API writes at the same time (SQLite: BEGIN IMMEDIATE + busy_timeout)."""
    rid = create_run(client)["id"]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(20):
                with server.db.write_session() as s:
                    store.write_metrics(
                        s, rid, [(f"k{offset}", i * 10 + j, float(j), None) for j in range(10)]
                    )
                    store.heartbeat(s, rid, "nobody")
        except BaseException as err:  # collected for the assertion below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for i in range(10):
        assert client.patch(f"/runs/{rid}", json={"notes": f"edit {i}"}).status_code == 200
    for t in threads:
        t.join()
    assert not errors, errors
    keys = {k["key"]: k["last_step"] for k in client.get(f"/runs/{rid}/metrics/keys").json()}
    assert keys == {"k0": 199, "k1": 199, "k2": 199}


def test_judgement_lease(server: Server, client) -> None:
    rid = create_run(client)["id"]
    with server.db.write_session() as s:
        j = store.create_judgement(s, run_a_id=rid, num_prompts=4, judge={"backend": "gold"})
        assert store.acquire_judgement(s, j.id, "w1")
        assert not store.acquire_judgement(s, j.id, "w2")
        assert store.heartbeat_judgement(s, j.id, "w1").ok
        assert not store.heartbeat_judgement(s, j.id, "w2").ok
        s.execute(
            update(Judgement).where(Judgement.id == j.id).values(heartbeat_at=utcnow() - timedelta(minutes=5))
        )
        s.commit()
        assert store.acquire_judgement(s, j.id, "w2", stale_after=timedelta(seconds=60))
    assert client.post(f"/judgements/{j.id}/cancel").json()["cancel_requested"]
    with server.db.write_session() as s:
        hb = store.heartbeat_judgement(s, j.id, "w2")
        assert hb.ok and hb.cancel_requested
        assert not store.acquire_judgement(s, j.id, "w3")


def _take_over(s, model, object_id: int, acquire, new_owner: str) -> None:
    """The first owner's heartbeat goes stale and another worker takes the lease over."""
    s.execute(update(model).where(model.id == object_id).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
    s.commit()
    assert acquire(s, object_id, new_owner, stale_after=timedelta(seconds=60))


def test_a_stale_owner_cannot_write_to_a_run_taken_over(server: Server, client) -> None:
    """Fencing: once w2 holds the lease, every write w1 (presumed dead, now back) makes is refused, in
    the write's own transaction; w2's writes and the API's own (unconditional) writes go through."""
    rid = create_run(client)["id"]
    sample = {"step": 2, "prompt_id": "p", "prompt": "q", "response": "stale"}
    with server.db.write_session() as s:
        assert store.acquire_lease(s, rid, "w1")
        store.write_metrics(s, rid, [("loss", 1, 1.0, None)], owner="w1")
        assert store.set_progress(s, rid, iteration=1, owner="w1")
        _take_over(s, Run, rid, store.acquire_lease, "w2")
        for stale_write in (
            lambda: store.write_metrics(s, rid, [("loss", 2, 99.0, None)], owner="w1"),
            lambda: store.set_progress(s, rid, iteration=99, owner="w1"),
            lambda: store.write_samples(s, rid, [sample], owner="w1"),
            lambda: store.add_checkpoint(s, rid, 2, "/nowhere/step-2", owner="w1"),
        ):
            with pytest.raises(store.LeaseLost, match=f"run {rid} is no longer leased by 'w1'"):
                stale_write()
            s.rollback()
        assert not store.set_status(s, rid, "running", owner="w1")
        assert not store.finish_run(s, rid, "failed", error="stale", owner="w1")
        store.write_metrics(s, rid, [("loss", 2, 2.0, None)], owner="w2")
        assert store.set_progress(s, rid, iteration=2, owner="w2")
        assert store.finish_run(s, rid, "succeeded", owner="w2")
        # a finished run has no lease: its last owner's late writes are refused too
        with pytest.raises(store.LeaseLost):
            store.write_metrics(s, rid, [("loss", 3, 3.0, None)], owner="w2")
        s.rollback()
    run = client.get(f"/runs/{rid}").json()
    assert run["status"] == "succeeded" and run["error"] is None and run["iteration"] == 2
    with server.db.session() as s:
        points = s.execute(
            select(Metric.step, Metric.value).where(Metric.run_id == rid).order_by(Metric.step)
        )
        assert [tuple(p) for p in points] == [(1, 1.0), (2, 2.0)]
        assert s.scalar(select(func.count()).select_from(Sample).where(Sample.run_id == rid)) == 0
        assert store.list_checkpoints(s, rid) == []
    with server.db.write_session() as s:  # the API's own writes stay unconditional
        store.write_metrics(s, rid, [("loss", 3, 3.0, None)])
        assert store.set_status(s, rid, "failed", error="set by an admin")


def test_a_stale_owner_cannot_write_to_a_judgement_taken_over(server: Server, client) -> None:
    rid = create_run(client)["id"]
    verdict = {
        "prompt_id": "p1",
        "order": "ab",
        "verdict": "A",
        "prompt": "q",
        "response_a": "a",
        "response_b": "b",
    }
    with server.db.write_session() as s:
        j = store.create_judgement(s, run_a_id=rid, num_prompts=4, judge={"backend": "gold"})
        assert store.acquire_judgement(s, j.id, "w1")
        store.record_verdicts(s, j.id, [verdict], owner="w1")
        _take_over(s, Judgement, j.id, store.acquire_judgement, "w2")
        with pytest.raises(store.LeaseLost, match=f"judgement {j.id} is no longer leased by 'w1'"):
            store.record_verdicts(s, j.id, [{**verdict, "order": "ba", "verdict": "B"}], owner="w1")
        s.rollback()
        # before fencing, owner= set the lease instead of requiring it: a stale judge wrote its outcome
        assert not store.set_judgement_status(s, j.id, "failed", error="stale", owner="w1")
        assert not store.set_judgement_status(s, j.id, "running", owner="w1")
        store.record_verdicts(s, j.id, [{**verdict, "order": "ba", "verdict": "A"}], owner="w2")
        assert store.set_judgement_status(s, j.id, "succeeded", owner="w2")
        assert not store.set_judgement_status(s, j.id, "failed", error="late", owner="w2")
    judgement = client.get(f"/judgements/{j.id}").json()
    assert judgement["status"] == "succeeded" and judgement["error"] is None
    assert judgement["completed"] == 2 and {v["verdict"] for v in judgement["verdicts"]} == {"A"}
    with server.db.write_session() as s:  # the API's own writes stay unconditional
        assert store.set_judgement_status(s, j.id, "failed", error="set by an admin")
