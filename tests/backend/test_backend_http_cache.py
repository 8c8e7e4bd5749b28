"""Conditional GETs (ETag / If-None-Match -> 304) and the response cache of the polled read endpoints: a
change to the data changes the answer and its ETag at once, whoever commits it (here: this test process,
not the server); a 304 has no body; authorisation comes first. On SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
from backend_testkit import Server, create_run

from backend import store


def _get(client: httpx.Client, path: str, params=None, etag: str | None = None) -> httpx.Response:
    headers = {"If-None-Match": etag} if etag else {}
    return client.get(path, params=params, headers=headers)


def _revalidates(client: httpx.Client, path: str, params=None) -> tuple[str, httpx.Response]:
    """GET, then the same GET with its ETag: 304, no body, the same ETag. Returns (etag, first response)."""
    first = _get(client, path, params)
    assert first.status_code == 200, first.text
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and first.headers["cache-control"] == "no-cache"
    again = _get(client, path, params, etag)
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    # a list of tags, weak form included, also matches; another tag does not
    assert _get(client, path, params, f'"x", W/{etag}').status_code == 304
    other = _get(client, path, params, '"not-it"')
    assert other.status_code == 200 and other.content == first.content and other.headers["etag"] == etag
    return etag, first


def test_run_list_and_run_etags_follow_the_data(server: Server, client) -> None:
    rid = create_run(client, name="etag-a")["id"]
    with server.db.write_session() as s:
        store.write_metrics(s, rid, [("loss", 1, 0.5, None)])
    etag, first = _revalidates(client, "/runs", {"limit": 50})
    run_etag, run_first = _revalidates(client, f"/runs/{rid}")
    assert run_first.json()["latest"]["loss"]["value"] == 0.5

    # a metric written by another process (this one, not the server): new latest value, new ETags
    with server.db.write_session() as s:
        store.write_metrics(s, rid, [("loss", 2, 0.25, None)])
    after = _get(client, "/runs", {"limit": 50}, etag)
    assert after.status_code == 200 and after.headers["etag"] != etag
    mine = next(r for r in after.json()["items"] if r["id"] == rid)
    assert mine["latest"]["loss"] == {"step": 2, "value": 0.25}
    run_after = _get(client, f"/runs/{rid}", etag=run_etag)
    assert run_after.status_code == 200 and run_after.json()["latest"]["loss"]["value"] == 0.25

    # through the API too: a rename
    new_etag = run_after.headers["etag"]
    assert client.patch(f"/runs/{rid}", json={"name": "etag-b"}).status_code == 200
    renamed = _get(client, f"/runs/{rid}", etag=new_etag)
    assert renamed.status_code == 200 and renamed.json()["name"] == "etag-b"
    assert renamed.headers["etag"] != new_etag
    # a deleted run: 404, not a cached answer
    assert client.delete(f"/runs/{rid}").status_code == 204
    assert _get(client, f"/runs/{rid}", etag=renamed.headers["etag"]).status_code == 404


def test_series_and_samples_etags_follow_the_data(server: Server, client) -> None:
    rid, other = create_run(client)["id"], create_run(client)["id"]
    with server.db.write_session() as s:
        store.write_metrics(s, rid, [("loss", i, float(i), None) for i in range(100)])
        store.write_samples(
            s, rid, [{"step": 10, "prompt_id": "p0", "prompt": "a", "response": "b", "score": 1.0}]
        )
    params = {"run_id": rid, "key": "loss", "max_points": 50}
    etag, first = _revalidates(client, "/metrics/series", params)
    samples_etag, _ = _revalidates(client, f"/runs/{rid}/samples")

    # a write elsewhere changes the data version but not this body: still 304 (the ETag is the body's)
    with server.db.write_session() as s:
        store.write_metrics(s, other, [("loss", 1, 1.0, None)])
    assert _get(client, "/metrics/series", params, etag).status_code == 304

    # a rewritten value of this series (same step, same number of points): a new body and ETag
    with server.db.write_session() as s:
        store.write_metrics(s, rid, [("loss", 99, -1.0, None)])
    changed = _get(client, "/metrics/series", params, etag)
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert changed.json()["series"][0]["values"][-1] == -1.0

    with server.db.write_session() as s:
        store.write_samples(
            s, rid, [{"step": 20, "prompt_id": "p0", "prompt": "c", "response": "d", "score": 0.0}]
        )
    page = _get(client, f"/runs/{rid}/samples", etag=samples_etag)
    assert page.status_code == 200 and page.json()["total"] == 2


def test_authorisation_comes_before_the_cache(server: Server, client, anon) -> None:
    rid = create_run(client)["id"]
    etag = client.get(f"/runs/{rid}").headers["etag"]
    assert client.get(f"/runs/{rid}").status_code == 200  # now cached
    r = anon.get(f"/runs/{rid}", headers={"If-None-Match": etag})
    assert r.status_code == 401 and "etag" not in r.headers
