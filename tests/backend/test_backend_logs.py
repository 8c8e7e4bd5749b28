"""Logs of runs and judgements (GET /runs/{id}/logs, GET /judgements/{id}/logs): tail, offset paging across
appends, the byte cap, the text download, 404s that say why, decoding, auth; and backend.logfiles' paging
against a plain reading of random logs."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from backend_testkit import Server, create_run

from backend import logfiles, store

HTML = "<script>alert('x')</script> <b>bold</b>"


def _log(server: Server, run_id: int) -> Path:
    path = server.data_dir / "runs" / str(run_id) / "train.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def _start(server: Server, run_id: int) -> None:
    with server.db.write_session() as s:
        store.set_status(s, run_id, "running")


def test_tail_and_offset_paging_follow_a_live_log(server: Server, client) -> None:
    rid = create_run(client)["id"]
    r = client.get(f"/runs/{rid}/logs")
    assert r.status_code == 404 and r.json()["detail"] == f"run {rid} has no log yet: it has not started"
    _start(server, rid)
    r = client.get(f"/runs/{rid}/logs")
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert f"not on this server's data directory (KLQ_DATA_DIR={server.data_dir.resolve()})" in detail
    assert f"runs/{rid}/train.log" in detail

    path = _log(server, rid)
    _append(path, b"".join(f"line {i}\n".encode() for i in range(300)) + b"partial")
    page = client.get(f"/runs/{rid}/logs").json()  # default: the last 200 whole lines
    assert page["lines"] == [f"line {i}" for i in range(100, 300)]
    assert page["size"] == path.stat().st_size and page["offset"] == page["size"] - len("partial")
    assert page["start"] == len(b"".join(f"line {i}\n".encode() for i in range(100)))
    assert not page["truncated"]
    assert client.get(f"/runs/{rid}/logs", params={"tail": 3}).json()["lines"] == [
        "line 297",
        "line 298",
        "line 299",
    ]
    end = client.get(f"/runs/{rid}/logs", params={"tail": 0}).json()
    assert end["lines"] == [] and end["offset"] == page["offset"]

    # following by offset: every line once, an unfinished line only once it is whole
    first = client.get(f"/runs/{rid}/logs", params={"offset": 0}).json()
    assert first["lines"] == [f"line {i}" for i in range(300)] and first["offset"] == page["offset"]
    again = client.get(f"/runs/{rid}/logs", params={"offset": first["offset"]}).json()
    assert again["lines"] == [] and again["offset"] == first["offset"]
    _append(path, b" and done\nprogress 10%\rprogress 100%\r\nnext")
    more = client.get(f"/runs/{rid}/logs", params={"offset": again["offset"]}).json()
    assert more["lines"] == ["partial and done", "progress 100%"]  # \r overwrites, as on a terminal
    assert more["start"] == again["offset"] and more["offset"] == path.stat().st_size - len("next")
    # once the run has ended, a last line without its newline is returned too
    with server.db.write_session() as s:
        store.finish_run(s, rid, "failed", error="boom")
    last = client.get(f"/runs/{rid}/logs", params={"offset": more["offset"]}).json()
    assert last["lines"] == ["next"] and last["offset"] == last["size"] == path.stat().st_size
    assert client.get(f"/runs/{rid}/logs", params={"tail": 1}).json()["lines"] == ["next"]
    # an offset past the end (a client holding a stale one): nothing, and the end to continue from
    past = client.get(f"/runs/{rid}/logs", params={"offset": 10**9}).json()
    assert past["lines"] == [] and past["offset"] == past["size"]


def test_pages_are_capped_at_a_mebibyte(server: Server, client) -> None:
    rid = create_run(client)["id"]
    _start(server, rid)
    path = _log(server, rid)
    lines = [f"{i:06d} " + "x" * 90 for i in range(15_000)]  # ~1.5 MiB
    _append(path, "".join(line + "\n" for line in lines).encode())
    got, offset, pages = [], 0, 0
    while True:
        page = client.get(f"/runs/{rid}/logs", params={"offset": offset}).json()
        assert page["offset"] - page["start"] <= logfiles.MAX_PAGE_BYTES
        got += page["lines"]
        offset, pages = page["offset"], pages + 1
        if not page["truncated"]:
            break
    assert pages == 2 and got == lines and offset == path.stat().st_size
    tail = client.get(f"/runs/{rid}/logs", params={"tail": 5000}).json()  # 5000 lines: ~480 KiB
    assert tail["lines"] == lines[-5000:] and not tail["truncated"]
    _append(path, b"".join(b"y" * 999 + b"\n" for _ in range(2000)))  # the last 5000 lines: ~2.5 MB
    tail = client.get(f"/runs/{rid}/logs", params={"tail": 5000}).json()
    assert tail["truncated"] and 0 < len(tail["lines"]) < 5000
    assert all(line == "y" * 999 for line in tail["lines"])  # whole lines only
    assert tail["offset"] - tail["start"] <= logfiles.MAX_PAGE_BYTES
    assert client.get(f"/runs/{rid}/logs", params={"tail": 5001}).status_code == 422
    r = client.get(f"/runs/{rid}/logs", params={"tail": 5, "offset": 0})
    assert r.status_code == 422 and "either tail or offset" in r.json()["message"]
    assert client.get(f"/runs/{rid}/logs", params={"offset": -1}).status_code == 422


def test_download_decoding_and_plain_text(server: Server, client) -> None:
    rid = create_run(client)["id"]
    _start(server, rid)
    path = _log(server, rid)
    raw = f"start {HTML}\n".encode() + b"bad \xff\xfe bytes\n" + "é€ ok\n".encode() + b"unfinished"
    _append(path, raw)
    page = client.get(f"/runs/{rid}/logs")
    assert page.headers["content-type"].startswith("application/json")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.json()["lines"] == [f"start {HTML}", "bad \ufffd\ufffd bytes", "é€ ok"]

    r = client.get(f"/runs/{rid}/logs", params={"format": "text"})
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert f'filename="klq-run-{rid}-train.log"' in r.headers["content-disposition"]
    assert r.content == raw.decode("utf-8", errors="replace").encode()  # the whole file, valid UTF-8
    assert client.get(f"/runs/{rid}/logs", params={"format": "text", "tail": 2}).text == "é€ ok\nunfinished"
    assert client.get(f"/runs/{rid}/logs", params={"format": "text", "offset": 6}).text.startswith(HTML)
    # a large log streams whole (no cap on the download)
    _append(path, b"\n" + b"".join(b"%07d\n" % i for i in range(300_000)))  # 2.4 MB
    with client.stream("GET", f"/runs/{rid}/logs", params={"format": "text"}) as s:
        body = b"".join(s.iter_bytes())
    assert len(body) == path.stat().st_size + 4  # two invalid bytes, each now U+FFFD (3 bytes)
    assert body.endswith(b"0299999\n")
    assert client.get(f"/runs/{rid}/logs", params={"format": "csv"}).status_code == 422


def test_judgement_logs_and_404s(server: Server, client) -> None:
    rid = create_run(client)["id"]
    with server.db.write_session() as s:
        jid = store.create_judgement(
            s, run_a_id=rid, num_prompts=4, judge={"backend": "gold"}, queue="gpu"
        ).id
    r = client.get(f"/judgements/{jid}/logs")
    assert (
        r.status_code == 404 and r.json()["detail"] == f"judgement {jid} has no log yet: it has not started"
    )
    with server.db.write_session() as s:
        store.set_judgement_status(s, jid, "running")
    r = client.get(f"/judgements/{jid}/logs")
    assert r.status_code == 404 and f"judgements/{jid}/judge.log" in r.json()["detail"]
    path = server.data_dir / "judgements" / str(jid) / "judge.log"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"judging 4 prompts\nverdict 1/4\n")
    assert client.get(f"/judgements/{jid}/logs").json()["lines"] == ["judging 4 prompts", "verdict 1/4"]
    r = client.get(f"/judgements/{jid}/logs", params={"format": "text"})
    assert r.text == "judging 4 prompts\nverdict 1/4\n"
    assert f'filename="klq-judgement-{jid}-judge.log"' in r.headers["content-disposition"]

    assert client.get("/judgements/999999/logs").json()["detail"] == "judgement 999999 not found"
    assert client.get("/runs/999999/logs").json()["detail"] == "run 999999 not found"
    assert client.get("/runs/999999/logs", params={"format": "text"}).status_code == 404
    assert client.get("/runs/0/logs").status_code == 422
    # a run cancelled before it started never has a log
    cancelled = create_run(client)["id"]
    client.post(f"/runs/{cancelled}/cancel")
    r = client.get(f"/runs/{cancelled}/logs")
    assert (
        r.status_code == 404
        and r.json()["detail"] == f"run {cancelled} has no log: it never started (cancelled)"
    )
    # a log that is a symbolic link is not followed
    linked = create_run(client)["id"]
    _start(server, linked)
    secret = server.data_dir.parent / "secret.txt"
    secret.write_text("secret\n")
    os.symlink(secret, _log(server, linked))
    r = client.get(f"/runs/{linked}/logs")
    assert r.status_code == 404 and "not served" in r.json()["detail"] and "secret" not in r.text
    assert "secret\n" not in client.get(f"/runs/{linked}/logs", params={"format": "text"}).text


def test_logs_need_a_token(server: Server, client, anon) -> None:
    rid = create_run(client)["id"]
    _start(server, rid)
    _append(_log(server, rid), b"hello\n")
    for url in (f"/runs/{rid}/logs", "/judgements/1/logs"):
        for params in ({}, {"format": "text"}):
            assert anon.get(url, params=params).status_code == 401
    with server.db.write_session() as s:
        _, token = store.create_token(s, "reader", ["read"])
    with server.client(token=token) as reader:
        assert reader.get(f"/runs/{rid}/logs").json()["lines"] == ["hello"]
    spec = anon.get("/openapi.json").json()
    for path in ("/api/v1/runs/{run_id}/logs", "/api/v1/judgements/{judgement_id}/logs"):
        op = spec["paths"][path]["get"]
        assert {p["name"] for p in op["parameters"]} >= {"tail", "offset", "format"}
        assert set(op["responses"]["200"]["content"]) == {"application/json", "text/plain"}
    assert "LogPage" in spec["components"]["schemas"]


# --- backend.logfiles against a plain reading -------------------------------------------------------------


def _random_log(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(0, 60)):
        parts.append(b"w" * rng.choice([0, 1, 5, 40, 300]) + rng.choice([b"\n", b"\n", b"\r\n", b"\xc3"]))
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(40))
def test_pages_match_a_plain_reading(seed: int, tmp_path: Path, monkeypatch) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(logfiles, "MAX_PAGE_BYTES", rng.choice([64, 512, 1 << 20]))
    monkeypatch.setattr(logfiles, "_BLOCK", rng.choice([7, 64, 1 << 16]))
    data = _random_log(rng)
    path = tmp_path / "train.log"
    path.write_bytes(data)
    cap = logfiles.MAX_PAGE_BYTES
    for finished in (False, True):
        end = len(data) if finished else data.rfind(b"\n") + 1
        long_partial = len(data) - end >= cap  # an unfinished line longer than a page comes in pieces
        with logfiles.open_log(path, tmp_path) as f:
            # offset paging returns every byte once, in whole lines (but for lines longer than a page)
            got, offset = [], 0
            while True:
                page = logfiles.read_page(f, finished=finished, offset=offset)
                assert page.start == offset and page.offset - page.start <= cap
                assert page.lines == logfiles.decode_lines(data[page.start : page.offset])
                got.append(data[page.start : page.offset])
                offset = page.offset
                if not page.truncated:
                    break
            assert b"".join(got) == data[:offset]
            assert offset == end or (long_partial and offset > end)
            # the tail: the last n lines, or as many whole ones as fit under the cap
            for n in (0, 1, 3, 1000):
                page = logfiles.read_page(f, finished=finished, tail=n)
                assert page.offset == end or (long_partial and page.offset == len(data))
                whole = logfiles.decode_lines(data[: page.offset])
                assert page.lines == logfiles.decode_lines(data[page.start : page.offset])
                if not page.truncated:
                    assert page.lines == (whole[-n:] if n else [])
                else:
                    assert len(page.lines) < n and page.offset - page.start <= cap
                    starts_a_line = page.start == 0 or data[page.start - 1] == ord("\n")
                    assert starts_a_line or b"\n" not in data[page.start : page.offset - 1]
                    assert starts_a_line <= (page.lines == whole[-len(page.lines) :])
        assert io.BytesIO(b"".join(logfiles.stream_text(logfiles.open_log(path, tmp_path)))).read() == (
            data.decode("utf-8", errors="replace").encode()
        )
