"""A server using Redis as the broker (and open reads): a created run lands in the Redis list of its queue.

Keys are isolated with a per-test-session kombu ``global_keyprefix`` and removed afterwards, so parallel
test sessions (and workers using the same Redis) never see each other's messages.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator

import pytest
from backend_testkit import REDIS_URL, Server, create_run, small_config, start_server, stop_server

from backend import migrate

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> Iterator[tuple[Server, object, str]]:
    conn = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        conn.ping()
    except redis.RedisError as err:
        pytest.skip(f"Redis at {REDIS_URL} is unreachable ({err})")
    prefix = f"klqtest-{secrets.token_hex(6)}:"
    tmp = tmp_path_factory.mktemp("redis-server")
    url = f"sqlite:///{tmp / 'klq.db'}"
    migrate.upgrade(url)
    srv = start_server(
        "sqlite",
        url,
        tmp / "data",
        KLQ_BROKER_URL=REDIS_URL,
        KLQ_BROKER_TRANSPORT_OPTIONS=json.dumps({"global_keyprefix": prefix}),
        KLQ_AUTH_REQUIRED_FOR_READS="false",
    )
    try:
        yield srv, conn, prefix
    finally:
        stop_server(srv)
        for key in conn.scan_iter(match=prefix + "*"):
            conn.delete(key)
        conn.close()


def _tasks(conn, key: str) -> list[tuple[str, list]]:
    out = []
    for raw in conn.lrange(key, 0, -1):
        msg = json.loads(raw)
        out.append((msg["headers"]["task"], json.loads(base64.b64decode(msg["body"]))[0]))
    return out


def test_run_and_judgement_are_queued_on_redis(redis_server) -> None:
    srv, conn, prefix = redis_server
    with srv.client() as client:
        run = create_run(client)
        cpu_run = create_run(client, queue="cpu")
        j = client.post("/judgements", json={"run_a": run["id"], "num_prompts": 4}).json()
    gpu = _tasks(conn, prefix + "gpu")
    assert ("klq.train_run", [run["id"]]) in gpu and ("klq.run_judgement", [j["id"]]) in gpu
    assert ("klq.train_run", [cpu_run["id"]]) in _tasks(conn, prefix + "cpu")
    assert not list((srv.data_dir / "broker").glob("**/*.msg"))  # nothing in the filesystem broker
    assert conn.llen("gpu") == 0 or ("klq.train_run", [run["id"]]) not in _tasks(conn, "gpu")


def test_reads_open_when_configured_but_writes_still_need_a_token(redis_server) -> None:
    srv, _conn, _prefix = redis_server
    with srv.client(token=None) as anon:
        assert anon.get("/runs").status_code == 200
        assert anon.get("/runs/999999").status_code == 404
        assert anon.post("/runs", json={"config": small_config()}).status_code == 401
        assert anon.get("/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert anon.get("/tokens").status_code == 401


def test_broker_down_marks_the_run_failed_with_503(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'klq.db'}"
    migrate.upgrade(url)
    srv = start_server("sqlite", url, tmp_path / "data", KLQ_BROKER_URL="redis://127.0.0.1:1/0")
    try:
        with srv.client() as client:
            r = client.post("/runs", json={"config": small_config()})
            assert r.status_code == 503 and "could not be queued" in r.json()["detail"]
            run = client.get(f"/runs/{r.json()['run_id']}").json()
            assert run["status"] == "failed" and "could not be queued" in run["error"]
    finally:
        stop_server(srv)


def test_broker_down_marks_an_experiments_runs_failed_with_503(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'klq.db'}"
    migrate.upgrade(url)
    srv = start_server("sqlite", url, tmp_path / "data", KLQ_BROKER_URL="redis://127.0.0.1:1/0")
    try:
        with srv.client() as client:
            grid = {"algorithms": ["klq", "ppo"], "kl_coefs": [0.1, 0.2, 0.3], "seeds": [1, 2]}
            r = client.post("/experiments", json={"base": small_config(), "grid": grid})
            assert r.status_code == 503 and "12 of its 12 runs could not be queued" in r.json()["detail"]
            exp = client.get(f"/experiments/{r.json()['experiment_id']}").json()
            assert {run["status"] for run in exp["runs"]} == {"failed"}
            assert all("could not be queued" in run["error"] for run in exp["runs"])
            assert exp["status"] == "failed" and exp["error"].startswith(
                "12 of its 12 runs could not be queued"
            )
            assert exp["error"].endswith("and 8 more")  # the experiment's reason, then 4 of the 12 runs
    finally:
        stop_server(srv)
