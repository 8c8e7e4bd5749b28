"""Runs API against a real server: create/queue, validation (422 naming the field), list/filter/page,
get, patch, cancel, clone, delete."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
from backend_testkit import Server, create_run, small_config

from backend import store
from backend.models import Run


def _message_args(path) -> tuple[str, list]:
    msg = json.loads(path.read_text())
    args = json.loads(base64.b64decode(msg["body"]))[0]
    return msg["headers"]["task"], args


def test_create_queues_a_task_in_the_filesystem_broker(server: Server, client) -> None:
    before = set(server.broker_messages())
    run = create_run(client, name="queued-run", tags=["fs"], notes="hello", queue="cpu")
    assert run["status"] == "queued" and run["queue"] == "cpu" and run["tags"] == ["fs"]
    assert run["config"]["train"]["batch_size"] == 8 and run["total_iterations"] == 8
    new = [p for p in server.broker_messages() if p not in before]
    sent = [_message_args(p) for p in new]
    assert ("klq.train_run", [run["id"]]) in sent
    assert any(p.name.endswith(".cpu.msg") for p in new)

    default = create_run(client)
    assert default["queue"] == "gpu"
    assert any(
        p.name.endswith(".gpu.msg") and _message_args(p)[1] == [default["id"]]
        for p in server.broker_messages()
    )


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"train": {"batch_size": "many"}}, "config.train.batch_size"),
        ({"train": {"batch_size": -1}}, "config.train.batch_size"),
        ({"kl_coef": 0}, "config.kl_coef"),
        ({"algorithm": "dpo"}, "config.algorithm"),
        ({"trian": {}}, "config.trian"),
        ({"train": {"batch_size": 8, "minibatch_size": 3, "micro_batch_size": 3}}, "config.train"),
        ({"model": {"policy": "/etc/passwd"}}, "config.model.policy"),
        ({"model": {"reference": "../../etc"}}, "config.model.reference"),
        ({"model": {"reward": "/tmp/../etc/shadow"}}, "config.model.reward"),
        ({"model": {"value": "gpt2"}}, "config.model.value"),
        ({"model": {"policy": "file:///etc/passwd"}}, "config.model.policy"),
        ({"task": {"name": "prompts", "dataset": "/etc/passwd"}}, "config.task.dataset"),
        # the in-training judge's model is loaded by the worker too: the same roots
        ({"eval_judge": {"backend": "local_hf", "model": "/etc"}}, "config.eval_judge.model"),
        ({"eval_judge": {"backend": "reward_model", "model": "some/hub-id"}}, "config.eval_judge.model"),
        ({"seed": 2**70}, "config.seed"),
        ({"name": "a\u0000b"}, "config.name"),
    ],
)
def test_bad_config_is_422_naming_the_field_and_queues_nothing(server: Server, client, config, field) -> None:
    before_msgs = len(server.broker_messages())
    before_runs = client.get("/runs", params={"limit": 1}).json()["total"]
    r = client.post("/runs", json={"config": config})
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in [p["field"] for p in body["detail"]], body
    assert field in body["message"]
    assert len(server.broker_messages()) == before_msgs
    assert client.get("/runs", params={"limit": 1}).json()["total"] == before_runs


def test_model_paths_inside_roots_and_builtin_names_are_accepted(server: Server, client) -> None:
    model_dir = server.data_dir / "models" / "my-sft"
    model_dir.mkdir(parents=True, exist_ok=True)
    run = create_run(
        client, config=small_config(model={"policy": str(model_dir), "reward": "builtin:reward"})
    )
    assert run["config"]["model"]["policy"] == str(model_dir)
    # a symlink inside the root that points outside is judged by its target
    link = server.data_dir / "models" / "sneaky"
    if not link.exists():
        link.symlink_to("/etc")
    r = client.post("/runs", json={"config": small_config(model={"policy": str(link)})})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "config.model.policy"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tags": ["a,b"]}, "tags.0"),
        ({"tags": ["x" * 65]}, "tags.0"),
        ({"name": ""}, "name"),
        ({"queue": "tpu"}, "queue"),
        ({"queue": "../x"}, "queue"),
        ({"unknown": 1}, "unknown"),
        ({"notes": 5}, "notes"),
    ],
)
def test_bad_run_metadata_is_422(client, body, field) -> None:
    r = client.post("/runs", json={"config": small_config(), **body})
    assert r.status_code == 422, r.text
    assert field in [p["field"] for p in r.json()["detail"]]


def test_huge_bodies_are_refused(client) -> None:
    r = client.post("/runs", json={"config": small_config(), "notes": "x" * (2 << 20)})
    assert r.status_code == 413


def test_malformed_json_and_wrong_types_are_4xx(client) -> None:
    r = client.post("/runs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/runs", json=[1, 2, 3])
    assert r.status_code == 422
    r = client.post(
        "/runs", content=b'{"config": {"kl_coef": Infinity}}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "config.kl_coef"


def test_list_filters_and_pagination(server: Server, client) -> None:
    tag = "t" + secrets.token_hex(4)
    ids = [create_run(client, name=f"alpha {tag} {i}", tags=[tag, f"n{i % 2}"])["id"] for i in range(5)]
    ppo = create_run(
        client, config=small_config(algorithm="ppo"), name=f"beta {tag}", tags=[tag], notes="needle in notes"
    )

    page = client.get("/runs", params={"tag": tag, "limit": 2}).json()
    assert page["total"] == 6 and len(page["items"]) == 2
    assert [r["id"] for r in page["items"]] == [ppo["id"], ids[-1]]  # newest first
    page2 = client.get("/runs", params={"tag": tag, "limit": 2, "offset": 4}).json()
    assert [r["id"] for r in page2["items"]] == [ids[1], ids[0]] and page2["total"] == 6
    beyond = client.get("/runs", params={"tag": tag, "offset": 100}).json()
    assert beyond["items"] == [] and beyond["total"] == 6

    assert client.get("/runs", params={"tag": tag, "algorithm": "ppo"}).json()["total"] == 1
    assert client.get("/runs", params=[("tag", tag), ("tag", "n1")]).json()["total"] == 2
    assert client.get("/runs", params={"tag": tag, "q": "NEEDLE"}).json()["items"][0]["id"] == ppo["id"]
    assert client.get("/runs", params={"tag": tag, "q": f"alpha {tag} 3"}).json()["total"] == 1
    assert client.get("/runs", params={"q": "%"}).status_code == 200  # LIKE wildcards are escaped
    assert client.get("/runs", params={"tag": tag, "q": "%"}).json()["total"] == 0
    assert client.get("/runs", params={"tag": tag, "status": "queued"}).json()["total"] == 6
    assert client.get("/runs", params={"tag": tag, "status": "running"}).json()["total"] == 0
    names = [r["name"] for r in client.get("/runs", params={"tag": tag, "order": "name"}).json()["items"]]
    assert names == sorted(names)

    tags = {t["tag"]: t["runs"] for t in client.get("/tags").json()}
    assert tags[tag] == 6

    for params in ({"limit": 0}, {"limit": 100_000}, {"offset": -1}, {"status": "bogus"}, {"offset": 2**40}):
        assert client.get("/runs", params=params).status_code == 422, params


def test_list_includes_latest_metrics_without_n_plus_one(server: Server, client) -> None:
    tag = "m" + secrets.token_hex(4)
    runs = [create_run(client, tags=[tag]) for _ in range(3)]
    with server.db.write_session() as s:
        for i, r in enumerate(runs):
            store.write_metrics(
                s, r["id"], [("reward", step, float(step * (i + 1)), None) for step in range(10)]
            )
            store.write_metrics(s, r["id"], [("kl", 4, 0.5, None)])
    items = client.get("/runs", params={"tag": tag}).json()["items"]
    by_id = {r["id"]: r for r in items}
    for i, r in enumerate(runs):
        assert by_id[r["id"]]["latest"]["reward"] == {"step": 9, "value": 9.0 * (i + 1)}
        assert by_id[r["id"]]["latest"]["kl"] == {"step": 4, "value": 0.5}
    only = client.get("/runs", params={"tag": tag, "latest": "kl"}).json()["items"]
    assert all(set(r["latest"]) == {"kl"} for r in only)

    # the list is served by a constant number of queries, whatever the page size
    from sqlalchemy import event

    from backend.db import Database

    db = Database(server.database_url)
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with db.session() as s:
        page, _ = store.list_runs(s, tags=[tag])
        store.latest_metrics(s, [r.id for r in page])
        _ = [r.tags for r in page]
    db.dispose()
    selects = [q for q in statements if q.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2, selects  # one for the page (with tags and total), one for the latest metrics


def test_get_patch_and_404(client) -> None:
    run = create_run(client, tags=["a"])
    got = client.get(f"/runs/{run['id']}").json()
    assert got["id"] == run["id"] and got["config"]["algorithm"] == "klq" and got["status"] == "queued"
    r = client.patch(
        f"/runs/{run['id']}", json={"tags": ["b", "c", "b"], "notes": "<script>alert(1)</script>"}
    )
    assert r.status_code == 200 and r.json()["tags"] == ["b", "c"]
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["notes"] == "<script>alert(1)</script>"  # stored and returned as plain text
    assert client.patch(f"/runs/{run['id']}", json={"name": "renamed"}).json()["name"] == "renamed"
    assert client.patch(f"/runs/{run['id']}", json={"status": "succeeded"}).status_code == 422
    for path in ("/runs/999999", "/runs/999999/cancel"):
        r = client.get(path) if "cancel" not in path else client.post(path)
        assert r.status_code == 404
    assert client.get("/runs/0").status_code == 422
    assert client.get("/runs/abc").status_code == 422
    assert client.get(f"/runs/{2**40}").status_code == 422
    assert client.patch("/runs/999999", json={"notes": "x"}).status_code == 404


def test_cancel_queued_is_immediate_and_running_is_requested(server: Server, client) -> None:
    queued = create_run(client)
    r = client.post(f"/runs/{queued['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and r.json()["cancel_requested"] and r.json()["finished_at"]
    assert client.post(f"/runs/{queued['id']}/cancel").status_code == 200  # idempotent

    running = create_run(client)
    with server.db.write_session() as s:
        assert store.acquire_lease(s, running["id"], "worker-1", worker_host="h1", worker_gpu="0")
    r = client.post(f"/runs/{running['id']}/cancel").json()
    assert r["status"] == "running" and r["cancel_requested"] and r["worker_host"] == "h1"
    with server.db.write_session() as s:
        hb = store.heartbeat(s, running["id"], "worker-1", iteration=3)
        assert hb.ok and hb.cancel_requested
        store.finish_run(s, running["id"], "cancelled", owner="worker-1")
    assert client.get(f"/runs/{running['id']}").json()["status"] == "cancelled"

    done = create_run(client)
    with server.db.write_session() as s:
        store.acquire_lease(s, done["id"], "w")
        store.finish_run(s, done["id"], "succeeded", owner="w")
    assert client.post(f"/runs/{done['id']}/cancel").status_code == 409


def test_worker_sink_records_provenance_and_get_returns_it(server: Server, client) -> None:
    """The worker's sink stores klq.provenance.collect() of the training process in runs.provenance (a
    fenced write: refused once another worker holds the lease); GET /runs/{id} returns it, the list not."""
    from klq.provenance import collect
    from worker.sink import DatabaseSink, LeaseLost

    run = create_run(client)
    assert client.get(f"/runs/{run['id']}").json()["provenance"] is None  # not started yet
    with server.db.write_session() as s:
        assert store.acquire_lease(s, run["id"], "worker-1")
    provenance = collect()
    DatabaseSink(server.db, run["id"], "worker-1").log_provenance(provenance)
    got = client.get(f"/runs/{run['id']}").json()["provenance"]
    assert got == provenance  # every field round-trips through the JSON column and RunDetail
    assert got["packages"]["torch"] and got["host"]

    with server.db.write_session() as s:  # a worker that lost the lease writes nothing
        store.release_lease(s, run["id"], "worker-1")
        assert store.acquire_lease(s, run["id"], "worker-2")
    with pytest.raises(LeaseLost):
        DatabaseSink(server.db, run["id"], "worker-1").log_provenance({**provenance, "host": "zombie"})
    DatabaseSink(server.db, run["id"], "worker-2").log_provenance(
        {**provenance, "device": "cuda:1", "gpu": "H100"}
    )
    got = client.get(f"/runs/{run['id']}").json()["provenance"]
    assert (got["host"], got["device"], got["gpu"]) == (
        provenance["host"],
        "cuda:1",
        "H100",
    )  # the latest start's
    listed = next(r for r in client.get("/runs").json()["items"] if r["id"] == run["id"])
    assert "provenance" not in listed  # pages of runs stay small


def test_clone_with_overrides(server: Server, client) -> None:
    src = create_run(client, name="source", tags=["x"], notes="n", config=small_config(kl_coef=0.1))
    before = set(server.broker_messages())
    r = client.post(
        f"/runs/{src['id']}/clone",
        json={"overrides": {"kl_coef": 0.2, "train.total_episodes": 128, "rollout": {"temperature": 0.7}}},
    )
    assert r.status_code == 201, r.text
    clone = r.json()
    assert clone["parent_id"] == src["id"] and clone["name"] == "source (clone)" and clone["tags"] == ["x"]
    cfg = clone["config"]
    assert (
        cfg["kl_coef"] == 0.2
        and cfg["train"]["total_episodes"] == 128
        and cfg["rollout"]["temperature"] == 0.7
    )
    assert cfg["train"]["batch_size"] == 8  # untouched keys kept
    assert any(_message_args(p)[1] == [clone["id"]] for p in set(server.broker_messages()) - before)

    named = client.post(f"/runs/{src['id']}/clone", json={"name": "mine", "tags": [], "queue": "cpu"}).json()
    assert named["name"] == "mine" and named["tags"] == [] and named["queue"] == "cpu"

    for overrides, field in [
        ({"train.batch_size": 3}, "overrides.train"),
        ({"train.nope": 1}, "overrides.train.nope"),
        ({"model.policy": "/root/x"}, "overrides.model.policy"),
        ({"kl_coef": "high"}, "overrides.kl_coef"),
        ({"train": 5, "train.batch_size": 8}, "overrides"),
    ]:
        r = client.post(f"/runs/{src['id']}/clone", json={"overrides": overrides})
        assert r.status_code == 422, (overrides, r.text)
        assert field in [p["field"] for p in r.json()["detail"]], (overrides, r.json())
    assert client.post("/runs/999999/clone", json={}).status_code == 404


def test_delete_removes_all_rows(server: Server, client) -> None:
    run = create_run(client)
    rid = run["id"]
    with server.db.write_session() as s:
        store.write_metrics(s, rid, [("loss", i, 1.0 / (i + 1), None) for i in range(50)])
        store.write_samples(s, rid, [{"step": 0, "prompt_id": "p", "prompt": "q", "response": "a"}])
        store.add_checkpoint(s, rid, 10, str(server.data_dir / "runs" / str(rid)))
        store.create_judgement(s, run_a_id=rid, num_prompts=2, judge={"backend": "gold"})
    assert client.delete(f"/runs/{rid}").status_code == 204
    assert client.get(f"/runs/{rid}").status_code == 404
    assert client.delete(f"/runs/{rid}").status_code == 404
    from sqlalchemy import func, select

    from backend.models import Checkpoint, Judgement, Metric, MetricLatest, RunTag, Sample

    with server.db.session() as s:
        for model in (Metric, MetricLatest, Sample, Checkpoint, RunTag):
            assert s.scalar(select(func.count()).select_from(model).where(model.run_id == rid)) == 0, model
        assert s.scalar(select(func.count()).select_from(Judgement).where(Judgement.run_a_id == rid)) == 0
        assert s.get(Run, rid) is None

    running = create_run(client)
    with server.db.write_session() as s:
        store.acquire_lease(s, running["id"], "w")
    assert client.delete(f"/runs/{running['id']}").status_code == 409
    assert client.delete(f"/runs/{running['id']}", params={"force": "true"}).status_code == 204
