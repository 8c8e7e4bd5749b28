"""Experiments through the API on SQLite and PostgreSQL: validation, preview, expansion into runs, the
derived status, the judging claim, cancel, delete, and the results (intervals over seeds, pooled win-rates,
frontier, compute, curves, CSV) checked against values this file computes itself from the rows it writes
(the rows are written through backend.store, as a worker writes them)."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from backend_testkit import Server, small_config
from sqlalchemy import event, update

from backend import store
from backend.models import Judgement, Run

# Two-sided 95% Student-t quantiles (tables): df 1, 2, 3.
T95 = {1: 12.706204736174705, 2: 4.302652729749464, 3: 3.182446305284263}
Z95 = 1.959963984540054
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def body(name: str = "exp", **extra) -> dict:
    b = {
        "name": name,
        "base": small_config(),
        "grid": {"algorithms": ["klq", "ppo"], "kl_coefs": [0.02, 0.05], "seeds": [1, 2]},
        "judge": {"backend": "gold", "num_prompts": 4},
        "tags": ["study"],
    }
    b.update(extra)
    return b


def create(client, **extra) -> dict:
    r = client.post("/experiments", json=body(**extra))
    assert r.status_code == 201, r.text
    return r.json()


def fields(r) -> set[str]:
    assert r.status_code == 422, r.text
    return {p["field"] for p in r.json()["detail"]}


def set_runs(server: Server, run_ids, **values) -> None:
    with server.db.write_session() as s:
        s.execute(update(Run).where(Run.id.in_(list(run_ids))).values(**values))
        s.commit()


def set_judgements(server: Server, ids, **values) -> None:
    with server.db.write_session() as s:
        s.execute(update(Judgement).where(Judgement.id.in_(list(ids))).values(**values))
        s.commit()


def claim(server: Server, experiment_id: int) -> list[int]:
    """What a worker does when the last run of an experiment ends."""
    with server.db.write_session() as s:
        return [j.id for j in store.claim_judging(s, experiment_id)]


def train_messages(server: Server) -> list[int]:
    out = []
    for p in server.broker_messages():
        msg = json.loads(p.read_text())
        if msg["headers"]["task"] == "klq.train_run":
            out.append(json.loads(base64.b64decode(msg["body"]))[0][0])  # args: [run_id]
    return out


# --- validation and preview ------------------------------------------------------------------------------


def test_invalid_bodies_are_422_naming_the_field(client) -> None:
    def post(**extra):
        return client.post("/experiments", json=body(**extra))

    assert fields(post(grid={"kl_coefs": [0.05, 0.05]})) == {"grid.kl_coefs"}
    assert fields(post(grid={"kl_coefs": [0.05], "seeds": [1, 1]})) == {"grid.seeds"}
    assert fields(post(grid={"kl_coefs": [0.05], "algorithms": ["klq", "trpo"]})) == {"grid.algorithms.1"}
    assert fields(post(grid={"kl_coefs": [0.0]})) == {"grid.kl_coefs.0"}
    assert fields(post(grid={"kl_coefs": []})) == {"grid.kl_coefs"}
    too_big = {"kl_coefs": [0.01 * i for i in range(1, 9)], "seeds": list(range(16))}  # 2 x 8 x 16 = 256
    assert fields(post(grid=too_big)) == {"grid"}
    assert fields(post(base={"train": {"batch_size": 0}})) == {"base.train.batch_size"}
    assert fields(post(base={"nonsense": 1})) == {"base.nonsense"}
    assert fields(post(base=small_config(model={"policy": "/etc/passwd"}))) == {"base.model.policy"}
    assert fields(post(judge={"backend": "gold", "temperature_x": 1})) == {"judge.temperature_x"}
    assert fields(post(judge={"backend": "gold", "num_prompts": 0})) == {"judge.num_prompts"}
    assert fields(post(judge={"backend": "gold", "api_key": "sk-x"})) == {"judge"}
    assert fields(post(queue="nowhere")) == {"queue"}
    assert fields(post(tags=["a,b"])) == {"tags.0"}
    assert all(e["name"] != "exp" for e in client.get("/experiments").json()["items"])  # nothing half-made


def test_preview_resolves_every_run_and_creates_nothing(client) -> None:
    runs_before = client.get("/runs").json()["total"]
    exps_before = client.get("/experiments").json()["total"]
    b = body("pv", grid={"algorithms": ["klq", "ppo"], "kl_coefs": [0.02, 0.1], "seeds": [3, 7, 9]})
    b["base"] = small_config(algorithm="ppo", kl_coef=0.3, seed=5, lam=0.9)
    r = client.post("/experiments/preview", json=b)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["judgements"] == 12 + 2 * 3  # one vs_sft per run, one klq_vs_ppo per (tau, seed)
    got = {(p["algorithm"], p["kl_coef"], p["seed"]): p for p in out["runs"]}
    assert set(got) == {(a, k, s) for a in ("klq", "ppo") for k in (0.02, 0.1) for s in (3, 7, 9)}

    def rest(cfg: dict) -> dict:
        return {k: v for k, v in cfg.items() if k not in ("algorithm", "kl_coef", "seed")}

    for (alg, tau, seed), p in got.items():
        assert p["name"] == f"pv/{alg}-tau{tau!r}-s{seed}"
        cfg = p["config"]
        assert (cfg["algorithm"], cfg["kl_coef"], cfg["seed"]) == (alg, tau, seed)
        assert cfg["lam"] == 0.9 and cfg["train"]["batch_size"] == 8
        assert rest(cfg) == rest(out["runs"][0]["config"])  # identical but for the three grid fields
    one = client.post("/experiments/preview", json=body(grid={"algorithms": ["klq"], "kl_coefs": [0.1]}))
    assert one.json()["judgements"] == 1  # one algorithm: no klq_vs_ppo
    off = client.post("/experiments/preview", json=body(judge={"enabled": False}))
    assert off.status_code == 200 and off.json()["judgements"] == 0
    assert client.get("/runs").json()["total"] == runs_before
    assert client.get("/experiments").json()["total"] == exps_before


def test_group_baseline_runs_sample_groups_of_the_grids_size(client) -> None:
    """RLOO and GRPO need >= 2 responses per prompt: their runs take grid.num_generations (default: the
    base's if enough, else 4); KLQ and PPO keep the base's; batch_size (responses) is the same for all."""

    def sizes(grid: dict, **base) -> dict[str, int]:
        b = body("g", grid={"kl_coefs": [0.1], **grid})
        b["base"] = small_config(**base)
        r = client.post("/experiments/preview", json=b)
        assert r.status_code == 200, r.text
        runs = r.json()["runs"]
        assert {p["config"]["train"]["batch_size"] for p in runs} == {b["base"]["train"]["batch_size"]}
        return {p["algorithm"]: p["config"]["rollout"]["num_generations"] for p in runs}

    everything = client.get("/algorithms").json()
    grouped = {a["name"] for a in everything if a["min_generations"] >= 2}
    assert {"rloo", "grpo"} <= grouped and not {"klq", "ppo"} & grouped
    assert sizes({}) == {a["name"]: 4 if a["name"] in grouped else 1 for a in everything}  # the default: all
    assert sizes({"algorithms": ["klq", "rloo", "grpo"], "num_generations": 2}) == {"klq": 1, "rloo": 2, "grpo": 2}
    got = sizes({"algorithms": ["ppo", "grpo"]}, rollout={"num_generations": 8})
    assert got == {"ppo": 8, "grpo": 8}  # the base's 8 is enough: kept

    b = body("g", grid={"algorithms": ["klq", "rloo"], "kl_coefs": [0.1], "num_generations": 3})
    r = client.post("/experiments/preview", json=b)  # batch_size 8 is not a whole number of groups of 3
    assert fields(r) == {"grid.num_generations"} and "must be divisible" in r.text and "rloo" in r.text
    assert fields(client.post("/experiments", json=b)) == {"grid.num_generations"}
    assert fields(client.post("/experiments/preview", json={**b, "grid": {**b["grid"], "num_generations": 1}})) == {
        "grid.num_generations"
    }


def test_writes_need_a_write_token_and_unknown_ids_are_404(client, anon) -> None:
    assert anon.post("/experiments", json=body()).status_code == 401
    assert anon.get("/experiments").status_code == 401
    for method, path in [
        ("get", "/experiments/999999"),
        ("get", "/experiments/999999/results"),
        ("get", "/experiments/999999/results.csv"),
        ("get", "/experiments/999999/curves"),
        ("post", "/experiments/999999/cancel"),
        ("delete", "/experiments/999999"),
    ]:
        r = getattr(client, method)(path)
        assert r.status_code == 404, (path, r.text)
    assert client.get("/experiments/0").status_code == 422
    assert fields(client.get("/experiments/1/curves", params={"max_points": 2})) == {"max_points"}


# --- creation, status, judging ---------------------------------------------------------------------------


def test_create_queues_every_run_with_its_coordinates(server: Server, client) -> None:
    sent_before = Counter(train_messages(server))  # ids repeat when an earlier module reset the database
    exp = create(client, name="grid")
    assert exp["status"] == "queued" and exp["error"] is None and exp["tags"] == ["study"]
    assert exp["grid"] == {
        "algorithms": ["klq", "ppo"], "kl_coefs": [0.02, 0.05], "seeds": [1, 2], "num_generations": None
    }  # fmt: skip
    assert exp["judge"] == {"backend": "gold", "decoding": "greedy", "enabled": True, "num_prompts": 4}
    assert exp["progress"] == {
        "runs_total": 8, "runs_finished": 0, "runs_failed": 0,
        "judgements_total": 0, "judgements_finished": 0, "judgements_failed": 0,
    }  # fmt: skip
    assert exp["compute"] == {"run_hours": 0.0, "gpu_hours": 0.0, "wall_clock_s": None}
    cells = {(r["algorithm"], r["kl_coef"], r["seed"]) for r in exp["runs"]}
    assert cells == {(a, k, s) for a in ("klq", "ppo") for k in (0.02, 0.05) for s in (1, 2)}
    ids = {r["run_id"] for r in exp["runs"]}
    assert Counter(train_messages(server)) - sent_before == Counter(ids)  # each run sent to the broker once

    listed = client.get("/runs", params={"experiment_id": exp["id"], "limit": 100}).json()
    assert listed["total"] == 8 and {r["id"] for r in listed["items"]} == ids
    assert all(r["experiment_id"] == exp["id"] and r["tags"] == ["study"] for r in listed["items"])
    for r in exp["runs"]:
        run = client.get(f"/runs/{r['run_id']}").json()
        assert run["name"] == f"grid/{r['algorithm']}-tau{r['kl_coef']!r}-s{r['seed']}"
        assert (run["config"]["algorithm"], run["config"]["kl_coef"], run["config"]["seed"]) == (
            r["algorithm"], r["kl_coef"], r["seed"],
        )  # fmt: skip
        assert run["config"]["train"]["batch_size"] == 8 and run["status"] == "queued"
    other = client.post("/runs", json={"config": small_config()}).json()
    assert other["experiment_id"] is None
    assert other["id"] not in {r["id"] for r in listed["items"]}

    page = client.get("/experiments", params={"limit": 1}).json()
    assert page["items"][0]["id"] == exp["id"] and page["total"] >= 1 and page["limit"] == 1


def test_status_follows_the_runs_and_judging_is_claimed_once(server: Server, client) -> None:
    exp = create(client, name="life", grid={"algorithms": ["klq", "ppo"], "kl_coefs": [0.1], "seeds": [4]})
    eid = exp["id"]
    klq, ppo = sorted(exp["runs"], key=lambda r: r["algorithm"])

    def status():
        return client.get(f"/experiments/{eid}").json()

    assert claim(server, eid) == []  # runs still queued: nobody can claim
    set_runs(server, [klq["run_id"]], status="running", started_at=T0)
    assert status()["status"] == "running"
    set_runs(server, [klq["run_id"]], status="succeeded", finished_at=T0 + timedelta(minutes=30))
    assert status()["status"] == "running"  # ppo still queued
    set_runs(server, [ppo["run_id"]], status="succeeded", started_at=T0, finished_at=T0 + timedelta(hours=1))
    s = status()
    assert s["status"] == "judging" and s["judging_started_at"] is None  # about to be judged
    assert s["compute"]["run_hours"] == pytest.approx(1.5) and s["compute"]["wall_clock_s"] == 3600

    first = claim(server, eid)
    assert len(first) == 3 and claim(server, eid) == []  # exactly once
    s = status()
    assert s["status"] == "judging" and s["judging_started_at"] is not None
    kinds = sorted((j["kind"], j["algorithm"], j["run_a"], j["run_b"]) for j in s["judgements"])
    assert kinds == [
        ("klq_vs_ppo", None, klq["run_id"], ppo["run_id"]),
        ("vs_sft", "klq", klq["run_id"], None),
        ("vs_sft", "ppo", ppo["run_id"], None),
    ]
    assert all(j["kl_coef"] == 0.1 and j["seed"] == 4 and j["status"] == "queued" for j in s["judgements"])
    for jid in first:
        j = client.get(f"/judgements/{jid}", params={"include_verdicts": False}).json()
        assert j["judge"] == {"backend": "gold", "decoding": "greedy"}  # no enabled / num_prompts
        assert j["num_prompts"] == 4 and j["seed"] == 0 and j["queue"] == exp["queue"]

    set_judgements(server, first, status="succeeded")
    s = status()
    assert s["status"] == "succeeded" and s["error"] is None
    assert s["progress"]["judgements_finished"] == 3
    set_judgements(server, first[:1], status="failed", error="judge crashed\nTraceback ...")
    s = status()
    assert s["status"] == "failed" and f"judgement {first[0]}" in s["error"] and "judge crashed" in s["error"]
    assert "Traceback" not in s["error"]  # first lines only
    assert client.post(f"/experiments/{eid}/cancel").status_code == 409  # finished


def test_a_failed_run_shows_as_failed_and_fails_the_experiment(server: Server, client) -> None:
    exp = create(client, name="fail", grid={"algorithms": ["klq", "ppo"], "kl_coefs": [0.05], "seeds": [1]})
    eid = exp["id"]
    klq, ppo = sorted(exp["runs"], key=lambda r: r["algorithm"])
    set_runs(
        server, [klq["run_id"]], status="succeeded", started_at=T0, finished_at=T0 + timedelta(seconds=60)
    )
    with server.db.write_session() as s:
        store.write_metrics(s, klq["run_id"], [("objective/scores", 5, 1.5), ("objective/kl", 5, 0.2)])
        store.set_status(s, ppo["run_id"], "running")
        store.finish_run(s, ppo["run_id"], "failed", error="out of GPU memory: tried to allocate 2 GiB")
    assert client.get(f"/experiments/{eid}").json()["status"] == "judging"  # klq vs SFT still to judge
    (jid,) = claim(server, eid)
    res = client.get(f"/experiments/{eid}/results").json()
    assert [(n["kind"], n["algorithm"]) for n in res["not_judged"]] == [
        ("klq_vs_ppo", None),
        ("vs_sft", "ppo"),
    ]
    assert all(f"ppo run {ppo['run_id']} failed" in n["reason"] for n in res["not_judged"])
    set_judgements(server, [jid], status="succeeded")

    s = client.get(f"/experiments/{eid}").json()
    assert s["status"] == "failed" and s["progress"]["runs_failed"] == 1
    assert f"run {ppo['run_id']}" in s["error"] and "out of GPU memory" in s["error"]
    res = client.get(f"/experiments/{eid}/results").json()
    assert res["status"] == "failed"
    rows = {r["algorithm"]: r for r in res["rows"]}
    assert rows["ppo"]["succeeded"] == 0 and rows["ppo"]["runs"] == 1 and rows["ppo"]["reward"]["n"] == 0
    assert rows["ppo"]["failed"] == [
        {
            "run_id": ppo["run_id"],
            "seed": 1,
            "status": "failed",
            "error": "out of GPU memory: tried to allocate 2 GiB",
        }
    ]
    assert rows["klq"]["succeeded"] == 1 and rows["klq"]["reward"]["mean"] == 1.5
    assert rows["klq"]["reward"]["ci_low"] is None  # one seed: no interval
    points = {p["run_id"]: p for p in res["points"]}
    assert points[ppo["run_id"]]["status"] == "failed" and points[ppo["run_id"]]["reward"] is None
    assert res["frontier"] == {"klq": [klq["run_id"]], "ppo": []}


def test_cancel_stops_unfinished_runs_and_judging(server: Server, client) -> None:
    exp = create(client, name="cancel")
    eid = exp["id"]
    ids = [r["run_id"] for r in exp["runs"]]
    set_runs(
        server,
        ids[:1],
        status="running",
        started_at=T0,
        lease_owner="w",
        heartbeat_at=datetime.now(timezone.utc),
    )
    set_runs(server, ids[1:2], status="succeeded", started_at=T0, finished_at=T0 + timedelta(seconds=5))
    r = client.post(f"/experiments/{eid}/cancel")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "cancelled" and out["cancel_requested"]
    statuses = {x["run_id"]: x["status"] for x in out["runs"]}
    assert statuses[ids[0]] == "running" and statuses[ids[1]] == "succeeded"  # its worker stops it
    assert all(statuses[i] == "cancelled" for i in ids[2:])
    assert client.get(f"/runs/{ids[0]}").json()["cancel_requested"] is True
    assert client.post(f"/experiments/{eid}/cancel").status_code == 200  # again: a no-op
    set_runs(server, ids[:1], status="cancelled", finished_at=T0 + timedelta(seconds=9), lease_owner=None)
    assert claim(server, eid) == []  # a cancelled experiment is never judged
    with server.db.session() as s:
        assert eid not in store.experiments_awaiting_judging(s)
    res = client.get(f"/experiments/{eid}/results").json()
    assert res["status"] == "cancelled" and res["win_rates"] == []
    assert any(n["reason"] == "the experiment was cancelled before judging" for n in res["not_judged"])


def test_cancel_also_cancels_its_queued_judgements(server: Server, client) -> None:
    exp = create(client, name="cj", grid={"algorithms": ["klq"], "kl_coefs": [0.05], "seeds": [1, 2]})
    ids = [r["run_id"] for r in exp["runs"]]
    set_runs(server, ids, status="succeeded", started_at=T0, finished_at=T0 + timedelta(seconds=5))
    judgements = claim(server, exp["id"])
    assert len(judgements) == 2
    out = client.post(f"/experiments/{exp['id']}/cancel").json()
    assert out["status"] == "cancelled" and {j["status"] for j in out["judgements"]} == {"cancelled"}


def test_delete_refuses_an_active_experiment_unless_forced(server: Server, client) -> None:
    exp = create(client, name="del", grid={"algorithms": ["klq", "ppo"], "kl_coefs": [0.05], "seeds": [1]})
    eid, ids = exp["id"], [r["run_id"] for r in exp["runs"]]
    r = client.delete(f"/experiments/{eid}")
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    assert client.delete(f"/experiments/{eid}", params={"force": True}).status_code == 204
    assert client.get(f"/experiments/{eid}").status_code == 404
    assert all(client.get(f"/runs/{i}").status_code == 404 for i in ids)

    done = create(client, name="del2", grid={"algorithms": ["klq", "ppo"], "kl_coefs": [0.05], "seeds": [1]})
    ids = [r["run_id"] for r in done["runs"]]
    set_runs(server, ids, status="succeeded", started_at=T0, finished_at=T0 + timedelta(seconds=5))
    with server.db.write_session() as s:
        store.write_metrics(s, ids[0], [("objective/scores", 1, 0.5)])
    judgements = claim(server, done["id"])
    with server.db.write_session() as s:
        store.record_verdicts(s, judgements[0], [{"prompt_id": "p", "order": "ab", "verdict": "A"}])
    set_judgements(server, judgements, status="succeeded")
    assert client.delete(f"/experiments/{done['id']}").status_code == 204
    assert all(client.get(f"/runs/{i}").status_code == 404 for i in ids)
    assert all(client.get(f"/judgements/{j}").status_code == 404 for j in judgements)


# --- results ---------------------------------------------------------------------------------------------


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = T95[n - 1] * sd / math.sqrt(n)
    return m, m - h, m + h


def wilson(p: float, n: int) -> tuple[float, float]:
    c = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    h = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n))
    return c - h, c + h


def combined(ab: str, ba: str) -> str:
    if "invalid" in (ab, ba):
        return "invalid"
    return ab if ab == ba else "tie"


class QueryCounter:
    def __init__(self, engine) -> None:
        self.engine, self.n = engine, 0

    def __enter__(self) -> QueryCounter:
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)

    def _count(self, *args, **kwargs) -> None:
        self.n += 1


def test_results_intervals_win_rates_frontier_compute_curves_and_csv(server: Server, client) -> None:
    rng = random.Random(7)
    taus, seeds = [0.02, 0.05], [1, 2, 3]
    exp = create(client, name="res", grid={"algorithms": ["klq", "ppo"], "kl_coefs": taus, "seeds": seeds})
    eid = exp["id"]
    runs = {(r["algorithm"], r["kl_coef"], r["seed"]): r["run_id"] for r in exp["runs"]}
    failed = runs[("ppo", 0.05, 3)]

    final: dict[int, dict[str, float]] = {}
    iteration: dict[int, float] = {}
    duration: dict[int, float] = {}
    curves: dict[int, dict[int, float]] = {}
    for (alg, _tau, seed), rid in runs.items():
        steps = 20 + seed  # runs of different lengths: the curve's later steps have fewer seeds
        vals = {k: [rng.uniform(-1, 2) for _ in range(steps)] for k in ("scores", "kl", "rlhf", "gold", "it")}
        rows = [("objective/scores", i + 1, vals["scores"][i]) for i in range(steps)]
        rows += [("objective/kl", i + 1, vals["kl"][i]) for i in range(steps)]
        rows += [("objective/rlhf_reward", i + 1, vals["rlhf"][i]) for i in range(steps)]
        rows += [("timing/iteration_s", i + 1, abs(vals["it"][i])) for i in range(steps)]
        if alg == "klq":  # only KLQ logs gold here: PPO's gold cell must be null
            rows += [("objective/gold_scores", i + 1, vals["gold"][i]) for i in range(steps)]
        with server.db.write_session() as s:
            store.write_metrics(s, rid, rows)
        final[rid] = {"reward": vals["scores"][-1], "kl": vals["kl"][-1], "rlhf": vals["rlhf"][-1], "gold": vals["gold"][-1]}  # fmt: skip
        iteration[rid] = sum(abs(v) for v in vals["it"]) / steps
        curves[rid] = dict(enumerate(vals["scores"], start=1))
        duration[rid] = 60.0 * (seed + 1) + (7 if alg == "ppo" else 0)
        gpu = "0,1" if alg == "klq" else "cpu"
        set_runs(server, [rid], status="succeeded", started_at=T0 + timedelta(seconds=seed),
                 finished_at=T0 + timedelta(seconds=seed + duration[rid]), worker_gpu=gpu)  # fmt: skip
    set_runs(server, [failed], status="failed", error="diverged")

    judgements = claim(server, eid)
    assert (
        len(judgements) == 11 + 5
    )  # vs_sft per succeeded run; klq_vs_ppo per (tau, seed) with both succeeded
    detail = client.get(f"/experiments/{eid}").json()
    by_j = {j["judgement_id"]: j for j in detail["judgements"]}
    # verdicts: the same prompt ids in every judgement; some prompts with one order only (pending)
    verdicts: dict[int, dict[str, tuple[str, ...]]] = {}
    for jid in judgements:
        pairs = {}
        for p in range(6):
            ab, ba = rng.choice("AB") if p else "A", rng.choice(["A", "B", "tie", "invalid"])
            pairs[f"p{p}"] = (ab, ba) if p < 5 else (ab,)
        verdicts[jid] = pairs
        rows = [{"prompt_id": pid, "order": o, "verdict": v} for pid, vs in pairs.items() for o, v in zip(("ab", "ba"), vs)]  # fmt: skip
        with server.db.write_session() as s:
            store.record_verdicts(s, jid, rows)
    set_judgements(server, judgements[:-1], status="succeeded")  # the last one still running: pending 1
    set_judgements(server, judgements[-1:], status="running")

    with server.db.session() as s, QueryCounter(server.db.engine) as queries:
        store.experiment_results(s, eid)
    assert queries.n <= 7, f"{queries.n} queries for one experiment's results"

    res = client.get(f"/experiments/{eid}/results").json()
    assert res["status"] == "judging"
    assert [(r["kl_coef"], r["algorithm"]) for r in res["rows"]] == [
        (t, a) for t in taus for a in ("klq", "ppo")
    ]
    for row in res["rows"]:
        ok = [runs[(row["algorithm"], row["kl_coef"], s)] for s in seeds if runs[(row["algorithm"], row["kl_coef"], s)] != failed]  # fmt: skip
        assert row["succeeded"] == len(ok) and row["runs"] == 3 and row["pending"] == 0
        for name, key in (("reward", "reward"), ("kl", "kl"), ("rlhf_reward", "rlhf")):
            xs = [final[r][key] for r in ok]
            mean, low, high = t_interval(xs)
            cell = row[name]
            assert cell["values"] == pytest.approx(xs) and cell["n"] == len(xs)
            assert (cell["mean"], cell["ci_low"], cell["ci_high"]) == pytest.approx(
                (mean, low, high), rel=1e-9
            )
        if row["algorithm"] == "klq":
            assert row["gold"]["mean"] == pytest.approx(t_interval([final[r]["gold"] for r in ok])[0])
        else:
            assert row["gold"] is None
        assert row["wall_clock_s"]["values"] == pytest.approx([duration[r] for r in ok])
        assert row["iteration_s"]["mean"] == pytest.approx(t_interval([iteration[r] for r in ok])[0])
        assert (row["iteration_s"]["ci_low"], row["iteration_s"]["ci_high"]) == pytest.approx(
            t_interval([iteration[r] for r in ok])[1:]
        )
        if row["algorithm"] == "ppo" and row["kl_coef"] == 0.05:
            assert [f["run_id"] for f in row["failed"]] == [failed] and row["failed"][0][
                "error"
            ] == "diverged"

    # frontier by brute force over the succeeded runs of each algorithm
    for alg in ("klq", "ppo"):
        pts = [
            (final[r]["kl"], final[r]["reward"], r)
            for (a, _t, _s), r in runs.items()
            if a == alg and r != failed
        ]
        front = [
            p for p in pts
            if not any(q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1]) for q in pts)
        ]  # fmt: skip
        assert res["frontier"][alg] == [r for _k, _rw, r in sorted(front)]
    assert {p["run_id"]: p["status"] for p in res["points"]}[failed] == "failed"
    assert len(res["points"]) == 12

    # pooled win-rates: prompts keyed per judgement, both orders needed, ties half, invalid left out
    groups: dict[tuple, list[int]] = {}
    for jid in judgements:
        j = by_j[jid]
        groups.setdefault((j["kind"], j["kl_coef"], j["algorithm"]), []).append(jid)
    assert len(res["win_rates"]) == len(groups) == 2 + 4
    for w in res["win_rates"]:
        ids = groups[(w["kind"], w["kl_coef"], w["algorithm"])]
        assert sorted(w["judgements"]) == sorted(ids)
        c = [combined(*vs) for jid in ids for vs in verdicts[jid].values() if len(vs) == 2]
        wins, losses, ties, invalid = (c.count(x) for x in ("A", "B", "tie", "invalid"))
        assert (w["wins"], w["losses"], w["ties"], w["invalid"], w["prompts"]) == (
            wins,
            losses,
            ties,
            invalid,
            len(c),
        )
        n = wins + losses + ties
        assert w["win_rate"] == pytest.approx((wins + ties / 2) / n)
        assert (w["ci_low"], w["ci_high"]) == pytest.approx(wilson((wins + ties / 2) / n, n))
        assert w["pending"] == (1 if judgements[-1] in ids else 0)
    assert [n["kind"] for n in res["not_judged"]] == ["klq_vs_ppo", "vs_sft"]

    # compute: durations (the failed run's too: it used the machine), GPU-hours of the runs on two GPUs,
    # first start to last finish
    assert res["compute"]["run_hours"] == pytest.approx(sum(duration.values()) / 3600)
    klq_runs = [r for (a, _t, _s), r in runs.items() if a == "klq"]
    assert res["compute"]["gpu_hours"] == pytest.approx(2 * sum(duration[r] for r in klq_runs) / 3600)
    ends = [s + duration[r] for (_a, _t, s), r in runs.items()]
    assert res["compute"]["wall_clock_s"] == pytest.approx(max(ends) - 1)

    # curves: mean / min / max over seeds at each step, and the number of seeds there
    cv = client.get(
        f"/experiments/{eid}/curves", params={"key": "objective/scores", "max_points": 1000}
    ).json()
    assert cv["key"] == "objective/scores" and len(cv["curves"]) == 4
    for band in cv["curves"]:
        members = [runs[(band["algorithm"], band["kl_coef"], s)] for s in seeds]
        assert band["runs"] == sorted(members)  # a failed run's logged steps are still shown (and counted)
        assert band["steps"] == list(range(1, 24))
        for i, step in enumerate(band["steps"]):
            xs = [curves[r][step] for r in members if step in curves[r]]
            assert band["seeds_at_step"][i] == len(xs)
            assert band["mean"][i] == pytest.approx(sum(xs) / len(xs))
            assert (band["low"][i], band["high"][i]) == pytest.approx((min(xs), max(xs)))
    small = client.get(f"/experiments/{eid}/curves", params={"max_points": 10}).json()
    assert all(len(b["steps"]) <= 10 and b["steps"][0] == 1 and b["steps"][-1] == 23 for b in small["curves"])
    assert client.get(f"/experiments/{eid}/curves", params={"key": "nope"}).json()["curves"] == []

    # CSV: one line per row, the same numbers as the JSON
    r = client.get(f"/experiments/{eid}/results.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(r.text)))
    assert len(lines) == 4
    for line, row in zip(lines, res["rows"], strict=True):
        assert float(line["kl_coef"]) == row["kl_coef"] and line["algorithm"] == row["algorithm"]
        assert float(line["reward_mean"]) == pytest.approx(row["reward"]["mean"])
        assert float(line["kl_ci_high"]) == pytest.approx(row["kl"]["ci_high"])
        assert int(line["failed"]) == len(row["failed"])
        w = next(w for w in res["win_rates"] if (w["kind"], w["kl_coef"], w["algorithm"]) == ("vs_sft", row["kl_coef"], row["algorithm"]))  # fmt: skip
        assert float(line["vs_sft_win_rate"]) == pytest.approx(w["win_rate"])
    assert lines[1]["gold_mean"] == ""  # ppo: no gold logged


def test_results_length_diagnostics_and_their_csv_columns(server: Server, client) -> None:
    from klq.judge.stats import VERDICT_SCORE, length_controlled_win_rate

    exp = create(client, name="len", grid={"algorithms": ["klq", "ppo"], "kl_coefs": [0.05], "seeds": [1, 2]})
    eid = exp["id"]
    set_runs(server, [r["run_id"] for r in exp["runs"]], status="succeeded", started_at=T0, finished_at=T0)
    judgements = claim(server, eid)
    assert len(judgements) == 4 + 2
    detail = {j["judgement_id"]: j for j in client.get(f"/experiments/{eid}").json()["judgements"]}
    # PPO against SFT: a single valid prompt over both seeds, too few for length diagnostics
    few = [jid for jid in judgements if (detail[jid]["kind"], detail[jid]["algorithm"]) == ("vs_sft", "ppo")]
    texts: dict[int, dict[str, tuple[str, int, int]]] = {}  # jid -> prompt -> (verdict, words A, words B)
    for k, jid in enumerate(judgements):
        texts[jid] = {
            f"p{p}": ("invalid" if p == 0 or (jid in few and (jid, p) != (few[0], 1)) else "AB"[(p + k) % 2],
                      3 + p + k, 6)
            for p in range(5)
        }  # fmt: skip
        rows = [
            {"prompt_id": pid, "order": o, "verdict": v, "response_a": " ".join(["a"] * la), "response_b": "b " * lb}
            for pid, (v, la, lb) in texts[jid].items()
            for o in ("ab", "ba")
        ]  # fmt: skip
        with server.db.write_session() as s:
            store.record_verdicts(s, jid, rows)

    res = client.get(f"/experiments/{eid}/results").json()
    for w in res["win_rates"]:
        # the pooled prompts in (judgement, prompt) order, the valid ones only
        pooled = [texts[jid][pid] for jid in sorted(w["judgements"]) for pid in sorted(texts[jid])]
        valid = [(VERDICT_SCORE[v], la, lb) for v, la, lb in pooled if v != "invalid"]
        if len(valid) < 2:
            assert w["length"] is None and (w["kind"], w["algorithm"]) == ("vs_sft", "ppo")
            continue
        length = w["length"]
        assert length["prompts"] == len(valid)
        assert length["mean_length_a"] == pytest.approx(sum(la for _, la, _ in valid) / len(valid))
        assert length["mean_length_b"] == pytest.approx(6.0)
        assert sum(b["prompts"] for b in length["buckets"]) == len(valid)
        lc = length_controlled_win_rate(*zip(*valid), n_resamples=1000, seed=0)
        assert (length["lc_win_rate"], length["lc_ci_low"], length["lc_ci_high"]) == pytest.approx((lc.win_rate, lc.low, lc.high))
    assert sum(w["length"] is None for w in res["win_rates"]) == 1

    # CSV: the length columns after every win-rate column, one group per pairing; the numbers of the JSON
    text = client.get(f"/experiments/{eid}/results.csv").text
    header = text.splitlines()[0].split(",")
    kinds = [h.removesuffix("_prompts") for h in header if h.endswith("_prompts")]
    assert kinds[0] == "vs_sft" and "klq_vs_ppo" in kinds
    length_columns = [f"{kind}_{c}" for kind in kinds for c in ("lc_win_rate", "lc_ci_low", "lc_ci_high", "mean_length_a", "mean_length_b")]  # fmt: skip
    assert header[-len(length_columns):] == length_columns
    lines = {(float(r["kl_coef"]), r["algorithm"]): r for r in csv.DictReader(io.StringIO(text))}
    for w in res["win_rates"]:
        line = lines[(w["kl_coef"], w["algorithm"] or "klq")]
        for c in ("lc_win_rate", "lc_ci_low", "lc_ci_high", "mean_length_a", "mean_length_b"):
            cell = line[f"{w['kind']}_{c}"]
            assert cell == "" if w["length"] is None else float(cell) == pytest.approx(w["length"][c])
    assert lines[(0.05, "ppo")]["klq_vs_rloo_lc_win_rate"] == ""  # a pairing with no judgement: empty


def test_results_queries_do_not_grow_with_the_grid(server: Server, client) -> None:
    counts = []
    for seeds in ([1], [1, 2, 3, 4, 5, 6, 7, 8]):
        exp = create(
            client, name="n1", grid={"algorithms": ["klq", "ppo"], "kl_coefs": [0.1, 0.2], "seeds": seeds}
        )
        ids = [r["run_id"] for r in exp["runs"]]
        set_runs(server, ids, status="succeeded", started_at=T0, finished_at=T0 + timedelta(seconds=3))
        for rid in ids:
            with server.db.write_session() as s:
                store.write_metrics(s, rid, [("objective/scores", 1, 0.1), ("timing/iteration_s", 1, 0.5)])
        claim(server, exp["id"])
        with server.db.session() as s, QueryCounter(server.db.engine) as q:
            store.experiment_results(s, exp["id"])
        with server.db.session() as s, QueryCounter(server.db.engine) as q2:
            store.list_experiments(s, limit=50)
        counts.append((q.n, q2.n))
    assert counts[0] == counts[1], counts
