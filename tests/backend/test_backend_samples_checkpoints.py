"""Samples (paging, aligned comparison, export, plain text) and checkpoints (list, zip download)."""

from __future__ import annotations

import csv
import io
import json
import random
import zipfile

from backend_testkit import Server, create_run

from backend import store
from klq.client import Client

HTML = "<b>bold</b> & <script>alert('x')</script>"


def _samples(step: int, ids: list[str], tag: str) -> list[dict]:
    return [
        {
            "step": step,
            "prompt_id": pid,
            "prompt": f"prompt {pid}",
            "response": f"{tag} says {pid} {HTML}",
            "score": 0.5,
            "kl": 0.1,
        }
        for pid in ids
    ]


def test_samples_paged_per_run_and_step(server: Server, client) -> None:
    rid = create_run(client)["id"]
    with server.db.write_session() as s:
        store.write_samples(s, rid, _samples(10, [f"p{i:02d}" for i in range(30)], "a"))
        store.write_samples(s, rid, _samples(20, [f"p{i:02d}" for i in range(30)], "a"))
        # idempotent per (run, step, prompt): a retried write replaces
        store.write_samples(
            s, rid, [{**_samples(20, ["p00"], "a")[0], "response": "again", "gold_score": float("nan")}]
        )
    page = client.get(f"/runs/{rid}/samples", params={"step": 20, "limit": 7, "offset": 0}).json()
    assert page["total"] == 30 and len(page["items"]) == 7
    assert page["items"][0]["prompt_id"] == "p00" and page["items"][0]["response"] == "again"
    assert page["items"][0]["gold_score"] is None
    assert client.get(f"/runs/{rid}/samples").json()["total"] == 60
    last = client.get(f"/runs/{rid}/samples", params={"step": 10, "limit": 7, "offset": 28}).json()
    assert [x["prompt_id"] for x in last["items"]] == ["p28", "p29"]
    steps = client.get(f"/runs/{rid}/samples/steps").json()
    assert steps == [{"step": 10, "count": 30}, {"step": 20, "count": 30}]
    # plain text: HTML is data inside JSON strings, never markup
    r = client.get(f"/runs/{rid}/samples", params={"step": 10, "limit": 1})
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.json()["items"][0]["response"].endswith(HTML)
    assert client.get("/runs/999999/samples").status_code == 404
    assert client.get(f"/runs/{rid}/samples", params={"limit": 5000}).status_code == 422


def test_compare_aligns_runs_on_prompt_ids(server: Server, client) -> None:
    a, b, c = (create_run(client)["id"] for _ in range(3))
    with server.db.write_session() as s:
        store.write_samples(s, a, _samples(10, ["p1", "p2", "p3"], "a10"))
        store.write_samples(s, a, _samples(50, ["p1", "p2", "p3", "p4"], "a50"))
        store.write_samples(s, b, _samples(40, ["p2", "p3", "p4"], "b40"))
        store.write_samples(s, c, _samples(40, ["p3"], "c40"))
    r = client.get("/samples/compare", params=[("run_id", a), ("run_id", b)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["runs"] == [{"run_id": a, "step": 50}, {"run_id": b, "step": 40}]  # each run's latest step
    assert body["total"] == 3 and [i["prompt_id"] for i in body["items"]] == ["p2", "p3", "p4"]
    p2 = body["items"][0]
    assert p2["prompt"] == "prompt p2"
    assert [x["response"].split()[0] for x in p2["samples"]] == ["a50", "b40"]

    chosen = client.get(
        "/samples/compare", params=[("run_id", a), ("run_id", b), ("step", 10), ("step", 40)]
    ).json()
    assert [i["prompt_id"] for i in chosen["items"]] == ["p2", "p3"]
    assert chosen["items"][0]["samples"][0]["response"].startswith("a10")

    union = client.get(
        "/samples/compare",
        params=[("run_id", a), ("run_id", b), ("run_id", c), ("mode", "union"), ("limit", 2), ("offset", 1)],
    ).json()
    assert union["total"] == 4 and [i["prompt_id"] for i in union["items"]] == ["p2", "p3"]
    assert union["items"][0]["samples"][2] is None and union["items"][1]["samples"][2]["response"].startswith(
        "c40"
    )

    same_step = client.get("/samples/compare", params=[("run_id", b), ("run_id", c), ("step", 40)]).json()
    assert [i["prompt_id"] for i in same_step["items"]] == ["p3"]
    none = client.get("/samples/compare", params=[("run_id", a), ("run_id", b), ("step", 999)]).json()
    assert none["total"] == 0 and none["items"] == []

    assert client.get("/samples/compare", params={"run_id": a}).status_code == 422  # two or more runs
    assert client.get("/samples/compare", params=[("run_id", a), ("run_id", a)]).status_code == 422
    assert (
        client.get(
            "/samples/compare", params=[("run_id", a), ("run_id", b), ("step", 1), ("step", 2), ("step", 3)]
        ).status_code
        == 422
    )
    assert client.get("/samples/compare", params=[("run_id", a), ("run_id", 999_999)]).status_code == 404


def test_compare_sorted_by_where_the_runs_disagree(server: Server, client) -> None:
    """sort=score_spread / gold_spread / ...: each prompt's largest minus smallest value over the runs,
    computed here from the values written; prompts with fewer than two values last either way."""
    rng = random.Random(3)
    runs = [create_run(client)["id"] for _ in range(3)]
    prompts = [f"q{i:02d}" for i in range(12)]
    written: dict[tuple[int, str], dict] = {}
    with server.db.write_session() as s:
        for rid in runs:
            rows = []
            for pid in prompts:
                if rid == runs[2] and pid in ("q03", "q07"):
                    continue  # the third run lacks two prompts (union mode shows them)
                row = {"step": 7, "prompt_id": pid, "prompt": f"prompt {pid}", "response": f"r {rid} {pid}",
                       "score": round(rng.uniform(-2, 2), 3), "gold_score": round(rng.uniform(-1, 1), 3),
                       "kl": 0.1}  # fmt: skip
                if pid == "q05":
                    row["gold_score"] = None  # no gold anywhere for q05 except one run
                    if rid == runs[0]:
                        row["gold_score"] = 0.25
                written[(rid, pid)] = row
                rows.append(row)
            store.write_samples(s, rid, rows, commit=False)
        s.commit()

    def spread(pid: str, field: str) -> float | None:
        rows = [written[(r, pid)] for r in runs if (r, pid) in written]
        got = [row[field] for row in rows if row[field] is not None]
        return max(got) - min(got) if len(got) >= 2 else None

    def expected(field: str, descending: bool, ids: list[str]) -> list[str]:
        with_value = [p for p in ids if spread(p, field) is not None]
        without = [p for p in ids if spread(p, field) is None]
        with_value.sort(key=lambda p: (-spread(p, field) if descending else spread(p, field), p))
        return with_value + without

    base = [("run_id", r) for r in runs]
    common = [p for p in prompts if p not in ("q03", "q07")]
    for sort, field in (("score_spread", "score"), ("-score_spread", "score"), ("-gold_spread", "gold_score")):
        for mode, ids in (("intersection", common), ("union", prompts)):
            body = client.get("/samples/compare", params=[*base, ("sort", sort), ("mode", mode)]).json()
            want = expected(field, sort.startswith("-"), ids)
            assert [i["prompt_id"] for i in body["items"]] == want, (sort, mode)
            assert body["total"] == len(ids)
    # paging follows the order
    page = client.get("/samples/compare", params=[*base, ("sort", "-score_spread"), ("limit", 3), ("offset", 2)])
    assert [i["prompt_id"] for i in page.json()["items"]] == expected("score", True, common)[2:5]
    assert expected("gold_score", True, common)[-1] == "q05"  # gold in one run only: no spread, last
    bad = client.get("/samples/compare", params=[*base, ("sort", "loudness")])
    assert bad.status_code == 422 and "sort" in bad.text
    with Client(server.url, token=server.token, timeout=30) as api:
        got = api.compare_samples(runs, sort="-score_spread", limit=4)
        assert [i["prompt_id"] for i in got["items"]] == expected("score", True, common)[:4]


def test_samples_export(server: Server, client) -> None:
    rid = create_run(client)["id"]
    with server.db.write_session() as s:
        store.write_samples(s, rid, _samples(1, [f"q{i}" for i in range(1200)], "x"))
        store.write_samples(s, rid, _samples(2, ["q0"], "y"))
    r = client.get(f"/runs/{rid}/samples/export")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) == 1201 and lines[0]["prompt_id"] == "q0" and lines[0]["response"].endswith(HTML)
    r = client.get(f"/runs/{rid}/samples/export", params={"format": "csv", "step": 2})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 1 and rows[0]["response"].startswith("y says")
    assert "step-2" in r.headers["content-disposition"]


def _fake_policy(path, with_state: bool = True) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    (path / "model.safetensors").write_bytes(b"\x00\x01" * 300_000)
    (path / "tokenizer.json").write_text("{}")
    if with_state:
        (path / "optimizer.pt").write_bytes(b"state")
        (path / "value").mkdir(exist_ok=True)
        (path / "value" / "model.safetensors").write_bytes(b"v")


def test_checkpoints_list_and_download_final_zip(server: Server, client) -> None:
    rid = create_run(client)["id"]
    run_dir = server.data_dir / "runs" / str(rid)
    _fake_policy(run_dir / "ckpt-50")
    _fake_policy(run_dir / "ckpt-100")
    with server.db.write_session() as s:
        store.add_checkpoint(s, rid, 50, run_dir / "ckpt-50")
        assert client.get(f"/runs/{rid}/checkpoints/final/download").status_code == 404  # none final yet
        store.add_checkpoint(s, rid, 100, run_dir / "ckpt-100", is_final=True)
        store.add_checkpoint(s, rid, 100, run_dir / "ckpt-100", is_final=True)  # idempotent
    ckpts = client.get(f"/runs/{rid}/checkpoints").json()
    assert [(c["step"], c["is_final"]) for c in ckpts] == [(50, False), (100, True)]

    r = client.get(f"/runs/{rid}/checkpoints/final/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert f"klq-run-{rid}-step-100.zip" in r.headers["content-disposition"]
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert zf.testzip() is None
    names = sorted(zf.namelist())
    folder = f"klq-run-{rid}-step-100"
    assert names == [f"{folder}/config.json", f"{folder}/model.safetensors", f"{folder}/tokenizer.json"]
    assert zf.read(f"{folder}/model.safetensors") == b"\x00\x01" * 300_000

    by_id = client.get(f"/runs/{rid}/checkpoints/{ckpts[0]['id']}/download")
    assert (
        by_id.status_code == 200
        and f"klq-run-{rid}-step-50/config.json" in zipfile.ZipFile(io.BytesIO(by_id.content)).namelist()
    )
    assert client.get(f"/runs/{rid}/checkpoints/999999/download").status_code == 404
    assert client.get("/runs/999999/checkpoints").status_code == 404

    # a directory with a policy/ sub-folder serves that; missing files and paths outside the data dir are 404
    _fake_policy(run_dir / "ckpt-150" / "policy", with_state=False)
    (run_dir / "ckpt-150" / "optimizer.pt").write_bytes(b"x")
    with server.db.write_session() as s:
        c150 = store.add_checkpoint(s, rid, 150, run_dir / "ckpt-150")
        gone = store.add_checkpoint(s, rid, 200, run_dir / "missing")
        outside = store.add_checkpoint(s, rid, 250, "/etc")
    names = zipfile.ZipFile(
        io.BytesIO(client.get(f"/runs/{rid}/checkpoints/{c150.id}/download").content)
    ).namelist()
    assert sorted(n.split("/", 1)[1] for n in names) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert client.get(f"/runs/{rid}/checkpoints/{gone.id}/download").status_code == 404
    assert client.get(f"/runs/{rid}/checkpoints/{outside.id}/download").status_code == 404
