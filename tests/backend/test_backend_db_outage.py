"""A database outage seen by a real uvicorn server on a private PostgreSQL server (a real PostgreSQL the test
stops and starts again): while it is down every request is answered quickly with 503 and a message saying
so (never a 500, never a hang), the health check says the database is down, and once it is back the same
server process answers 200 again by itself (its pool replaces the connections the restart dropped)."""

from __future__ import annotations

import time

import httpx
import pytest
from backend_testkit import (  # noqa: F401  (private_postgres is a fixture)
    PrivatePostgres,
    create_run,
    private_postgres,
    start_server,
    stop_server,
)

from backend import migrate

pytestmark = pytest.mark.postgres

# A hung request would take the client's whole timeout (30 s) or the pool's (30 s); an answer from a server
# that knows the database is away takes milliseconds. The bound is far from both on any machine.
ANSWER_BOUND_S = 15.0


def _timed(call) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def _wait_until_ok(client: httpx.Client, path: str, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(path)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_database_outage_is_503_and_recovers(private_postgres: PrivatePostgres, tmp_path) -> None:  # noqa: F811
    migrate.upgrade(private_postgres.url)
    server = start_server(
        "postgres", private_postgres.url, tmp_path / "data", KLQ_AUTH_REQUIRED_FOR_READS="false"
    )
    try:
        with server.client() as client, server.client(token=None) as anon:
            run_id = create_run(client)["id"]
            assert client.get(f"/runs/{run_id}").status_code == 200

            private_postgres.stop()  # "fast": ends every session, as a restart does
            calls = {
                # with a token: the token lookup is the first query
                "GET /runs (token)": lambda: client.get("/runs"),
                "GET /runs/{id} (token)": lambda: client.get(f"/runs/{run_id}"),
                "POST /runs (token)": lambda: client.post("/runs", json={"config": {}}),
                # anonymous reads: the route's own session is the first query
                "GET /runs (anonymous)": lambda: anon.get("/runs"),
                "GET /runs/{id}/metrics/keys (anonymous)": lambda: anon.get(f"/runs/{run_id}/metrics/keys"),
            }
            times = {}
            for name, call in calls.items():
                response, times[name] = _timed(call)
                assert response.status_code == 503, (name, response.status_code, response.text, server.log())
                detail = response.json()["detail"]
                assert detail.startswith("the database is unavailable: ") and detail.endswith("; retry later")
                assert int(response.headers["Retry-After"]) > 0
                assert times[name] < ANSWER_BOUND_S, (name, times[name])
            health, times["GET /health"] = _timed(lambda: anon.get("/health"))
            assert health.status_code == 503, health.text
            assert health.json()["status"] == "error" and health.json()["database"].startswith("unavailable")
            print(f"\nanswer times while the database was down: { {k: round(v, 3) for k, v in times.items()} }")
            assert "Traceback" not in server.log(), server.log()

            private_postgres.start()
            assert _wait_until_ok(client, f"/runs/{run_id}").status_code == 200
            assert _wait_until_ok(anon, "/health").json()["database"] == "ok"
            assert anon.get("/runs").json()["total"] == 1
            assert create_run(client)["id"] > run_id  # writes too
            assert server.proc.poll() is None  # the same server process throughout
    finally:
        stop_server(server)


def test_a_request_session_whose_database_went_away_closes_without_raising(
    private_postgres: PrivatePostgres,  # noqa: F811
) -> None:
    """The race the server test above can hit on a loaded machine, made deterministic: a request's session
    has begun its transaction when the database stops, so closing it (a ROLLBACK on a dead connection) fails
    too. The request dependency logs that in one line instead of raising it into the ASGI server."""
    from types import SimpleNamespace

    from sqlalchemy import text

    from backend.db import Database
    from backend.deps import read_session, write_session

    db = Database(private_postgres.url)
    try:
        for dependency in (read_session, write_session):
            request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(db=db)))
            scope = dependency(request)
            session = next(scope)
            assert session.execute(text("SELECT 1")).scalar_one() == 1  # the transaction has begun
            private_postgres.stop()
            try:
                scope.close()  # FastAPI ends the dependency after the response: the session's close runs
            finally:
                private_postgres.start()
    finally:
        db.dispose()
