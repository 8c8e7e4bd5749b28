"""Token records of samples (issue 14): packed storage, training rollouts beside eval samples, filters and
sorting computed in SQL (checked against values computed here), one prompt across steps, per-token
detail, retention, deletion with the run, fencing, the 422s, and the client's methods. SQLite and
PostgreSQL (the parametrised `server` fixture), through a real uvicorn server."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from backend_testkit import Server, create_run
from sqlalchemy import func, select

from backend import store
from backend.models import Sample, SampleTokens
from klq.client import APIError, Client

PROMPT_IDS = ["p/1 a", "p2", "p3?x=1&y", "p4", "p5", "p6"]  # a slash, a space, query characters


def token_record(rng: random.Random, n: int, names=("logp", "logp_ref", "k1", "value")) -> dict:
    return {
        "token_ids": [rng.randrange(50_000) for _ in range(n)],
        "tokens": [rng.choice(["<script>", " [a](b)", " the", "\n", "é"]) for _ in range(n)],
        "quantities": {name: [rng.uniform(-3, 3) for _ in range(n)] for name in names},
    }


def make_samples(seed: int, step: int, kind: str = "eval", per_prompt: int = 1) -> list[dict]:
    """Samples with random scores, gold scores, KLs and lengths (some gold scores missing), with token records."""
    rng = random.Random(seed * 1000 + step)
    out = []
    for index, pid in enumerate(p for p in PROMPT_IDS for _ in range(per_prompt)):
        n = rng.randrange(1, 12)
        out.append(
            {
                "step": step,
                "prompt_id": pid,
                "prompt": f"prompt {pid}",
                "response": f"response {pid} {step}",
                "kind": kind,
                "sample_index": index if kind == "train" else 0,
                "response_length": n,
                "score": rng.uniform(-1, 1),
                "gold_score": None if rng.random() < 0.2 else rng.uniform(-1, 1),
                "kl": rng.uniform(0, 5),
                "tokens": token_record(rng, n),
            }
        )
    return out


def write(server: Server, run_id: int, samples: list[dict], **kwargs) -> None:
    with server.db.write_session() as s:
        store.write_samples(s, run_id, samples, **kwargs)


def test_filters_and_sorting_match_values_computed_here(server: Server, client) -> None:
    rid = create_run(client)["id"]
    samples = [s for step in (10, 20, 30) for s in make_samples(1, step)]
    write(server, rid, samples)
    write(server, rid, make_samples(1, 20, kind="train", per_prompt=2))  # not among the eval samples

    def listed(**params) -> list[tuple[int, str]]:
        r = client.get(f"/runs/{rid}/samples", params={"limit": 500, **params})
        assert r.status_code == 200, r.text
        return [(x["step"], x["prompt_id"]) for x in r.json()["items"]]

    def gap(s):
        return None if s["gold_score"] is None else s["score"] - s["gold_score"]

    columns = {
        "score": lambda s: s["score"],
        "gold": lambda s: s["gold_score"],
        "kl": lambda s: s["kl"],
        "length": lambda s: s["response_length"],
        "rm_gold_gap": gap,
    }
    for key, value in columns.items():
        for descending in (False, True):
            have = [s for s in samples if value(s) is not None]
            expected = sorted(have, key=value, reverse=descending) + [s for s in samples if value(s) is None]
            got = listed(sort=("-" if descending else "") + key)
            assert [x for x in got[: len(have)]] == [
                (s["step"], s["prompt_id"]) for s in expected[: len(have)]
            ], key
            assert set(got[len(have) :]) == {(s["step"], s["prompt_id"]) for s in samples if value(s) is None}
    # top / bottom k = sort + limit; the RM-gold gap: "reward-model score up, gold down"
    top3 = client.get(f"/runs/{rid}/samples", params={"sort": "-rm_gold_gap", "limit": 3}).json()
    best = sorted((s for s in samples if gap(s) is not None), key=gap, reverse=True)[:3]
    assert [x["score"] - x["gold_score"] for x in top3["items"]] == pytest.approx([gap(s) for s in best])
    assert top3["total"] == len(samples)
    # bounds, each and together, against the same predicate computed here
    bounds = {
        "min_score": -0.2,
        "max_score": 0.6,
        "min_gold": -0.5,
        "max_gold": 0.9,
        "min_kl": 1.0,
        "max_kl": 4.0,
        "min_length": 3,
        "max_length": 9,
    }
    field = {"score": "score", "gold": "gold_score", "kl": "kl", "length": "response_length"}

    def keeps(s, name, bound):
        value = s[field[name.split("_", 1)[1]]]
        return value is not None and (value >= bound if name.startswith("min") else value <= bound)

    for name, bound in bounds.items():
        expected = sorted((s["step"], s["prompt_id"]) for s in samples if keeps(s, name, bound))
        assert listed(**{name: bound}) == expected, name
    expected = sorted(
        (s["step"], s["prompt_id"]) for s in samples if all(keeps(s, n, b) for n, b in bounds.items())
    )
    page = client.get(f"/runs/{rid}/samples", params={**bounds, "sort": "step"}).json()
    assert [(x["step"], x["prompt_id"]) for x in page["items"]] == expected and page["total"] == len(expected)
    assert listed(step=20, sort="-kl") == [
        (20, s["prompt_id"]) for s in sorted(make_samples(1, 20), key=lambda s: -s["kl"])
    ]
    # the training rollouts: kind=train, with their sample index
    train = client.get(
        f"/runs/{rid}/samples", params={"kind": "train", "sort": "-score", "limit": 100}
    ).json()
    assert train["total"] == 2 * len(PROMPT_IDS)
    assert [x["kind"] for x in train["items"]] == ["train"] * train["total"]
    assert sorted(x["sample_index"] for x in train["items"]) == list(range(train["total"]))
    assert [x["score"] for x in train["items"]] == sorted((x["score"] for x in train["items"]), reverse=True)
    first = client.get(f"/runs/{rid}/samples", params={"limit": 1}).json()["items"][0]
    assert first["kind"] == "eval" and first["has_tokens"] is True and first["response_length"] >= 1
    assert client.get(f"/runs/{rid}/samples/steps").json() == [{"step": s, "count": 6} for s in (10, 20, 30)]


def test_token_detail_and_one_prompt_across_steps(server: Server, client) -> None:
    rid = create_run(client)["id"]
    samples = [s for step in (5, 15, 10) for s in make_samples(2, step)]
    samples[0]["tokens"]["quantities"]["value"][0] = float("nan")
    write(server, rid, samples)
    write(server, rid, [{"step": 20, "prompt_id": "p2", "prompt": "x", "response": "no tokens"}])

    across = client.get(f"/runs/{rid}/prompts/p%2F1%20a/samples").json()
    assert [(x["step"], x["prompt_id"]) for x in across] == [(5, "p/1 a"), (10, "p/1 a"), (15, "p/1 a")]
    assert client.get(f"/runs/{rid}/prompts/p%2F1%20a/samples", params={"kind": "train"}).json() == []
    assert client.get(f"/runs/{rid}/prompts/nope/samples").json() == []

    sample = across[0]
    r = client.get(f"/samples/{sample['id']}/tokens")
    assert r.status_code == 200, r.text
    body = r.json()
    stored = samples[0]["tokens"]
    assert body["sample_id"] == sample["id"] and body["run_id"] == rid and body["step"] == 5
    assert body["kind"] == "eval" and body["prompt_id"] == "p/1 a" and body["algorithm"] == "klq"
    assert body["token_ids"] == stored["token_ids"] and body["tokens"] == stored["tokens"]  # text stays text
    assert list(body["quantities"]) == list(stored["quantities"])
    for name, values in stored["quantities"].items():
        for got, want in zip(body["quantities"][name], values, strict=True):
            if math.isnan(want):
                assert got is None  # NaN as null
            else:
                assert got == float(np.float32(want))  # float32, packed
    no_tokens = client.get(f"/runs/{rid}/samples", params={"step": 20}).json()["items"][0]
    assert no_tokens["has_tokens"] is False and no_tokens["response_length"] is None
    assert client.get(f"/samples/{no_tokens['id']}/tokens").status_code == 404
    assert client.get("/samples/2000000000/tokens").status_code == 404
    # several records in one request: the order asked, repeats once, samples without a record left out,
    # each record equal to its own endpoint's
    ids = [x["id"] for x in across][::-1]
    asked = [ids[0], no_tokens["id"], *ids, 2_000_000_000, ids[1]]
    r = client.get("/samples/tokens", params={"sample_id": asked})
    assert r.status_code == 200, r.text
    assert [t["sample_id"] for t in r.json()] == ids
    assert r.json() == [client.get(f"/samples/{i}/tokens").json() for i in ids]
    assert client.get("/samples/tokens", params={"sample_id": [no_tokens["id"]]}).json() == []
    for bad in ({}, {"sample_id": 0}, {"sample_id": "x"}, {"sample_id": list(range(1, 102))}):
        r = client.get("/samples/tokens", params=bad)
        assert r.status_code == 422 and "sample_id" in r.text, (bad, r.text)
    with server.db.session() as s:  # packed: one row per sample, never one per token
        assert s.scalar(select(func.count()).select_from(SampleTokens)) >= len(samples)
        row = s.get(SampleTokens, sample["id"])
        assert len(row.token_ids) == 4 * row.num_tokens and len(row.quantities) == 4 * 4 * row.num_tokens


@pytest.mark.parametrize(
    "params, field",
    [
        ({"sort": "loudness"}, "sort"),
        ({"sort": "--score"}, "sort"),
        ({"kind": "both"}, "kind"),
        ({"min_score": "high"}, "min_score"),
        ({"max_kl": "nan"}, "max_kl"),
        ({"min_gold": "inf"}, "min_gold"),
        ({"min_length": -1}, "min_length"),
        ({"max_length": 2.5}, "max_length"),
        ({"min_score": 0.5, "max_score": 0.1}, "min_score"),
        ({"min_length": 9, "max_length": 3}, "min_length"),
    ],
)
def test_bad_sample_queries_are_422_naming_the_parameter(client, params, field) -> None:
    rid = create_run(client)["id"]
    r = client.get(f"/runs/{rid}/samples", params=params)
    assert r.status_code == 422, r.text
    assert field in r.text
    if "kind" in params:
        assert client.get(f"/runs/{rid}/prompts/p1/samples", params=params).status_code == 422
    assert client.get("/samples/0/tokens").status_code == 422


def test_retention_keeps_last_n_and_every_mth_training_step(server: Server, client) -> None:
    rid = create_run(client)["id"]
    retention = store.TrainRetention(keep_last=4, keep_every=10)
    for step in range(1, 26):  # one write per iteration, as the worker's sink does
        write(server, rid, make_samples(3, step, kind="train", per_prompt=1), retention=retention)
        if step % 8 == 0:
            write(server, rid, make_samples(3, step), retention=retention)  # eval samples: all kept
    kept = {
        x["step"]
        for x in client.get(f"/runs/{rid}/samples", params={"kind": "train", "limit": 500}).json()["items"]
    }
    assert kept == {10, 20, 22, 23, 24, 25}
    evals = {x["step"] for x in client.get(f"/runs/{rid}/samples", params={"limit": 500}).json()["items"]}
    assert evals == {8, 16, 24}
    with server.db.session() as s:  # the pruned samples' token records went with them (cascade)
        sample_ids = set(s.scalars(select(Sample.id).where(Sample.run_id == rid)))
        token_ids = set(s.scalars(select(SampleTokens.sample_id).join(Sample).where(Sample.run_id == rid)))
        assert token_ids == sample_ids and len(sample_ids) == 6 * len(PROMPT_IDS) + 3 * len(PROMPT_IDS)
        orphans = s.scalar(
            select(func.count())
            .select_from(SampleTokens)
            .where(~SampleTokens.sample_id.in_(select(Sample.id)))
        )
        assert orphans == 0
    only_last = store.TrainRetention(keep_last=2, keep_every=0)
    write(server, rid, make_samples(3, 26, kind="train"), retention=only_last)
    kept = {
        x["step"]
        for x in client.get(f"/runs/{rid}/samples", params={"kind": "train", "limit": 500}).json()["items"]
    }
    assert kept == {25, 26}


def test_deleting_a_run_deletes_its_samples_and_token_records(server: Server, client) -> None:
    rid, other = create_run(client)["id"], create_run(client)["id"]
    write(server, rid, make_samples(4, 1) + make_samples(4, 1, kind="train", per_prompt=2))
    write(server, other, make_samples(4, 1))
    with server.db.session() as s:
        before = s.scalar(select(func.count()).select_from(SampleTokens))
    assert client.delete(f"/runs/{rid}").status_code == 204
    with server.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Sample).where(Sample.run_id == rid)) == 0
        assert s.scalar(select(func.count()).select_from(SampleTokens)) == before - 3 * len(PROMPT_IDS)
        assert (
            s.scalar(
                select(func.count())
                .select_from(SampleTokens)
                .where(~SampleTokens.sample_id.in_(select(Sample.id)))
            )
            == 0
        )
    assert client.get(f"/runs/{other}/samples").json()["total"] == len(PROMPT_IDS)


def test_a_worker_without_the_lease_writes_no_samples_or_tokens(server: Server, client) -> None:
    rid = create_run(client)["id"]
    with server.db.write_session() as s:
        assert store.acquire_lease(s, rid, "worker-a")
    write(server, rid, make_samples(5, 1, kind="train"), owner="worker-a")
    with pytest.raises(store.LeaseLost):
        write(server, rid, make_samples(5, 2, kind="train"), owner="worker-b")
    steps = {x["step"] for x in client.get(f"/runs/{rid}/samples", params={"kind": "train"}).json()["items"]}
    assert steps == {1}


def test_client_methods(server: Server, client) -> None:
    rid = create_run(client)["id"]
    samples = [s for step in (10, 20) for s in make_samples(6, step)]
    write(server, rid, samples + make_samples(6, 20, kind="train", per_prompt=2))
    with Client(server.url, token=server.token, timeout=30) as api:
        page = api.list_samples(rid, sort="-kl", limit=2, min_score=-0.5)
        expected = sorted((s for s in samples if s["score"] >= -0.5), key=lambda s: -s["kl"])[:2]
        assert [x["kl"] for x in page["items"]] == pytest.approx([s["kl"] for s in expected])
        latest = api.samples(rid, kind="eval", sort="score", filter={"max_kl": 3.0})
        assert [x["score"] for x in latest] == pytest.approx(
            sorted(s["score"] for s in samples if s["step"] == 20 and s["kl"] <= 3.0)
        )
        train = api.samples(rid, kind="train")
        assert len(train) == 2 * len(PROMPT_IDS) and {x["step"] for x in train} == {20}
        across = api.prompt_samples(rid, "p/1 a")
        assert [x["step"] for x in across] == [10, 20]
        tokens = api.sample_tokens(across[1]["id"])
        assert tokens["token_ids"] == samples[len(PROMPT_IDS)]["tokens"]["token_ids"]
        assert api.samples_tokens([across[1]["id"], across[0]["id"]]) == [tokens, api.sample_tokens(across[0]["id"])]
        with pytest.raises(ValueError, match="min_loudness"):
            api.list_samples(rid, min_loudness=1)
        with pytest.raises(APIError) as missing:
            api.sample_tokens(2_000_000_000)
        assert missing.value.status == 404
        frame = api.samples(rid, 10, as_frame=True)
        assert list(frame["has_tokens"]) == [True] * len(PROMPT_IDS)
