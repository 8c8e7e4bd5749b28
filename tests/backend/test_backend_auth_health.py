"""Auth (bearer tokens, hashed, scopes), health and Prometheus metrics on a real server."""

from __future__ import annotations

import hashlib
import secrets
import stat

from backend_testkit import Server, create_run, small_config
from sqlalchemy import select

from backend import migrate
from backend.models import ApiToken


def _token(client, scopes: list[str]) -> str:
    r = client.post("/tokens", json={"name": f"t-{secrets.token_hex(4)}", "scopes": scopes})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def test_first_token_was_created_printed_and_saved_privately(server: Server) -> None:
    token_file = server.data_dir / "api_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert server.token.startswith("klq_") and len(server.token) > 40
    assert server.token in server.log()  # printed at first start
    with server.db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.name == "admin"))
        assert row.token_hash == hashlib.sha256(server.token.encode()).hexdigest()
        assert set(row.scope_list) == {"read", "write", "admin"}
        for t in s.scalars(select(ApiToken)):
            assert server.token not in (t.token_hash, t.prefix, t.name)


def test_reads_need_a_token_and_bad_tokens_are_401(server: Server, anon, client) -> None:
    r = anon.get("/runs")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    for bad in ("klq_nope", "x" * 500, server.token + "x"):
        assert anon.get("/runs", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
    assert anon.get("/runs", headers={"Authorization": f"Basic {server.token}"}).status_code == 401
    assert anon.post("/runs", json={"config": small_config()}).status_code == 401
    assert anon.get("/health").status_code == 200  # no token needed
    assert client.get("/runs").status_code == 200


def test_scopes(server: Server, client) -> None:
    read, write = _token(client, ["read"]), _token(client, ["write"])
    run = create_run(client)
    with server.client(token=read) as ro:
        assert ro.get("/runs").status_code == 200
        assert ro.get(f"/runs/{run['id']}").status_code == 200
        before = client.get("/runs", params={"limit": 1}).json()["total"]
        for method, path, body in [
            ("POST", "/runs", {"config": small_config()}),
            ("PATCH", f"/runs/{run['id']}", {"notes": "x"}),
            ("POST", f"/runs/{run['id']}/cancel", None),
            ("POST", f"/runs/{run['id']}/clone", {}),
            ("DELETE", f"/runs/{run['id']}", None),
            ("POST", "/judgements", {"run_a": run["id"]}),
            ("POST", "/tokens", {"name": "evil", "scopes": ["admin"]}),
            ("GET", "/tokens", None),
        ]:
            r = ro.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.status_code)
        assert client.get("/runs", params={"limit": 1}).json()["total"] == before
        assert client.get(f"/runs/{run['id']}").json()["status"] == "queued"
        assert ro.get("/tokens/me").json()["scopes"] == ["read"]
    with server.client(token=write) as rw:
        assert rw.post("/runs", json={"config": small_config()}).status_code == 201
        assert rw.post("/tokens", json={"name": "x", "scopes": ["read"]}).status_code == 403  # admin only
        assert rw.get("/tokens/me").json()["scopes"] == ["read", "write"]


def test_token_management(server: Server, client, anon) -> None:
    name = f"ci-{secrets.token_hex(3)}"
    created = client.post("/tokens", json={"name": name, "scopes": ["write"]}).json()
    assert created["scopes"] == ["read", "write"] and created["token"].startswith(created["prefix"])
    assert client.post("/tokens", json={"name": name}).status_code == 409
    assert client.post("/tokens", json={"name": "x", "scopes": ["root"]}).status_code == 422
    assert client.post("/tokens", json={"name": "", "scopes": ["read"]}).status_code == 422
    listed = client.get("/tokens").json()
    assert any(t["name"] == name for t in listed)
    assert all("token" not in t and "token_hash" not in t for t in listed)

    with server.client(token=created["token"]) as c:
        assert c.get("/runs").status_code == 200
    me = [t for t in client.get("/tokens").json() if t["name"] == name][0]
    assert me["last_used_at"] is not None
    revoked = client.delete(f"/tokens/{me['id']}").json()
    assert revoked["revoked"]
    with server.client(token=created["token"]) as c:
        assert c.get("/runs").status_code == 401
    assert client.delete("/tokens/999999").status_code == 404
    assert anon.get("/tokens/me").status_code == 401


def test_health_and_prometheus(server: Server, client, anon) -> None:
    h = anon.get("/health")
    assert h.status_code == 200
    assert h.json()["status"] == "ok" and h.json()["database"] == "ok" and h.json()["revision"] == migrate.head_revision()
    create_run(client)
    client.get("/runs/999999")
    text = anon.get(server.url + "/metrics").text
    assert "klq_http_requests_total" in text
    assert 'route="/api/v1/runs/{run_id}",status="404"' in text
    assert 'klq_runs{status="queued"}' in text
    assert "klq_http_request_duration_seconds_bucket" in text


def test_openapi_documents_the_api(anon) -> None:
    spec = anon.get("/openapi.json").json()
    paths = spec["paths"]
    for p in (
        "/api/v1/runs",
        "/api/v1/metrics/series",
        "/api/v1/runs/{run_id}/events",
        "/api/v1/samples/compare",
        "/api/v1/runs/{run_id}/checkpoints/final/download",
        "/api/v1/judgements/{judgement_id}",
        "/api/v1/tokens",
    ):
        assert p in paths, p
    assert "BearerToken" in spec["components"]["securitySchemes"]
    assert "RunConfig" in spec["components"]["schemas"]
