"""GET /leaderboard on SQLite and PostgreSQL: Bradley-Terry ratings of the judged policies recover the order
of the strengths the verdicts were drawn from (written through backend.store, as a worker writes them), per
run and per (algorithm, tau) of an experiment, with the reference policy as the anchor; the judge, tag and
experiment filters; one query; 422 naming the bad filter."""

from __future__ import annotations

import math
import secrets
from itertools import combinations

import pytest
from backend_testkit import Server, create_run, small_config
from test_backend_experiments import QueryCounter

from backend import store
from klq.judge.stats import ELO_PER_LOGIT

REFERENCE = "reference:builtin:sft"  # the reference player of runs on the default model config


def _outcomes(logit_a: float, logit_b: float, n: int) -> list[str]:
    """n combined verdicts of A against B as close to P(A wins) = sigmoid(logit_a - logit_b) as whole
    prompts allow: round(n * p) wins for A, the rest for B (deterministic, so the ratings are too)."""
    wins = round(n / (1 + math.exp(logit_b - logit_a)))
    return ["A"] * wins + ["B"] * (n - wins)


def _judge(
    server: Server, run_a: int, run_b: int | None, outcomes: list[str], judge: dict | None = None
) -> int:
    """A judgement whose prompts end with these verdicts (both orders agree), plus one invalid prompt and
    one with a single order stored (pending): neither may count."""
    rows = [
        {"prompt_id": f"p{i:03d}", "order": order, "verdict": v, "response_a": "a", "response_b": "b"}
        for i, v in enumerate(outcomes)
        for order in ("ab", "ba")
    ]
    rows += [
        {"prompt_id": "invalid", "order": "ab", "verdict": "invalid"},
        {"prompt_id": "invalid", "order": "ba", "verdict": "A"},
        {"prompt_id": "pending", "order": "ab", "verdict": "A"},
    ]
    with server.db.write_session() as s:
        j = store.create_judgement(
            s, run_a_id=run_a, run_b_id=run_b, num_prompts=len(outcomes) + 2, judge=judge or {"backend": "gold"}
        )
        store.record_verdicts(s, j.id, rows)
        return j.id


def _board(client, **params) -> dict:
    r = client.get("/leaderboard", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_ratings_recover_known_strengths(server: Server, client) -> None:
    tag = f"lb-{secrets.token_hex(3)}"
    cells = {"s3": ("klq", 0.05, 1.2), "s2": ("ppo", 0.05, 0.4), "s1": ("klq", 0.1, -0.4), "s0": ("ppo", 0.1, -1.2)}
    runs = {
        name: create_run(client, name=name, tags=[tag], config=small_config(algorithm=alg, kl_coef=tau))["id"]
        for name, (alg, tau, _) in cells.items()
    }
    strength = {runs[n]: cells[n][2] for n in cells}
    per_judgement = 40
    for a, b in combinations(runs.values(), 2):
        _judge(server, a, b, _outcomes(strength[a], strength[b], per_judgement))
    for a in runs.values():  # each against its reference (SFT) policy, of strength 0
        _judge(server, a, None, _outcomes(strength[a], 0.0, per_judgement))
    # not counted: another judge's verdicts, and a run without the tag
    _judge(server, runs["s0"], runs["s3"], ["A"] * 30, judge={"backend": "openai", "model": "m1"})
    outsider = create_run(client, name="outsider")["id"]
    _judge(server, outsider, runs["s3"], ["A"] * 30)

    board = _board(client, judge_backend="gold", tag=tag)
    expected = [f"run:{runs['s3']}", f"run:{runs['s2']}", REFERENCE, f"run:{runs['s1']}", f"run:{runs['s0']}"]
    assert [p["player"] for p in board["players"]] == expected
    assert board["anchor"] == REFERENCE and board["judgements"] == 10
    assert board["comparisons"] == 10 * per_judgement and board["group_by"] == "run" and board["tag"] == [tag]
    by_key = {p["player"]: p for p in board["players"]}
    ref = by_key[REFERENCE]
    assert ref["rating"] == pytest.approx(1000.0) and (ref["ci_low"], ref["ci_high"]) == pytest.approx((1000, 1000))
    assert ref["kind"] == "reference" and ref["reference"] == "builtin:sft"
    assert ref["run_ids"] == sorted(runs.values()) and ref["comparisons"] == 4 * per_judgement
    for name, rid in runs.items():
        p = by_key[f"run:{rid}"]
        assert p["kind"] == "run" and p["run_ids"] == [rid] and p["step"] is None
        assert (p["algorithm"], p["kl_coef"]) == cells[name][:2] and p["label"] == f"#{rid} {name}"
        assert p["comparisons"] == 4 * per_judgement == p["wins"] + p["ties"] + p["losses"]
        # the Elo gap to the reference is the strength in logits on the Elo scale, up to whole-prompt rounding
        assert p["rating"] - 1000 == pytest.approx(ELO_PER_LOGIT * strength[rid], abs=45)
        assert p["ci_low"] < p["rating"] < p["ci_high"]
    wins_s3 = sum(_outcomes(strength[runs["s3"]], strength[r], per_judgement).count("A") for r in runs.values() if r != runs["s3"])
    assert by_key[f"run:{runs['s3']}"]["wins"] == wins_s3 + _outcomes(1.2, 0.0, per_judgement).count("A")

    # grouped by (algorithm, tau): one run per cell here, so the same ratings under other keys
    grouped = _board(client, judge_backend="gold", tag=tag, group_by="algorithm_tau")
    assert [p["player"] for p in grouped["players"]] == [
        "algorithm_tau:klq@0.05", "algorithm_tau:ppo@0.05", REFERENCE, "algorithm_tau:klq@0.1", "algorithm_tau:ppo@0.1"
    ]  # fmt: skip
    assert [p["rating"] for p in grouped["players"]] == pytest.approx([p["rating"] for p in board["players"]])

    # the other judge: only its judgement, filtered by model too
    other = _board(client, judge_backend="openai", tag=tag)
    assert [p["player"] for p in other["players"]] == [f"run:{runs['s0']}", f"run:{runs['s3']}"]
    assert other["anchor"] is None and other["comparisons"] == 30
    assert other["players"][0]["rating"] + other["players"][1]["rating"] == pytest.approx(2000)  # mean 1000
    assert _board(client, judge_backend="openai", judge_model="m1", tag=tag)["comparisons"] == 30
    nothing = _board(client, judge_backend="openai", judge_model="m2", tag=tag)
    assert nothing["players"] == [] and nothing["comparisons"] == 0 and nothing["anchor"] is None
    assert _board(client, judge_backend="local_hf", tag=tag)["players"] == []

    # as many queries for the rows of one judgement as for those of ten
    counts = []
    for backend, judgements in (("openai", 1), ("gold", 10)):
        with server.db.session() as s, QueryCounter(server.db.engine) as q:
            rows = store.leaderboard_rows(s, judge_backend=backend, tags=[tag])
        assert len({row.judgement_id for row in rows}) == judgements
        counts.append(q.n)
    assert counts[0] == counts[1] and len(rows) == 10 * (2 * per_judgement + 3)


def test_experiment_ratings_per_algorithm_and_tau(server: Server, client) -> None:
    r = client.post(
        "/experiments",
        json={"base": small_config(), "grid": {"algorithms": ["klq", "ppo"], "kl_coefs": [0.05, 0.1], "seeds": [1, 2]}},
    )
    assert r.status_code == 201, r.text
    exp = r.json()
    strength = {("klq", 0.05): 1.0, ("ppo", 0.05): 0.3, ("klq", 0.1): -0.3, ("ppo", 0.1): -1.0}
    cell = {x["run_id"]: (x["algorithm"], x["kl_coef"]) for x in exp["runs"]}
    per_judgement = 20
    for seed in (1, 2):
        ids = [x["run_id"] for x in exp["runs"] if x["seed"] == seed]
        for a, b in combinations(ids, 2):
            _judge(server, a, b, _outcomes(strength[cell[a]], strength[cell[b]], per_judgement))
        for a in ids:
            _judge(server, a, None, _outcomes(strength[cell[a]], 0.0, per_judgement))
    # two seeds of one cell compared: the same player under algorithm_tau, so left out there
    same = [x["run_id"] for x in exp["runs"] if (x["algorithm"], x["kl_coef"]) == ("klq", 0.05)]
    _judge(server, same[0], same[1], ["A"] * 10)
    # a judgement reaching outside the experiment does not count
    _judge(server, create_run(client)["id"], same[0], ["A"] * 10)

    board = _board(client, judge_backend="gold", experiment_id=exp["id"], group_by="algorithm_tau")
    assert [p["player"] for p in board["players"]] == [
        "algorithm_tau:klq@0.05", "algorithm_tau:ppo@0.05", REFERENCE, "algorithm_tau:klq@0.1", "algorithm_tau:ppo@0.1"
    ]  # fmt: skip
    assert board["experiment_id"] == exp["id"] and board["comparisons"] == 2 * 10 * per_judgement
    for p in board["players"]:
        if p["kind"] == "algorithm_tau":
            runs_of_cell = sorted(rid for rid, c in cell.items() if c == (p["algorithm"], p["kl_coef"]))
            assert p["run_ids"] == runs_of_cell and p["comparisons"] == 2 * 4 * per_judgement
            assert p["label"] == f"{p['algorithm']} τ={p['kl_coef']:g}"

    per_run = _board(client, judge_backend="gold", experiment_id=exp["id"])
    assert len(per_run["players"]) == 9 and per_run["comparisons"] == 2 * 10 * per_judgement + 10
    ranked = [p["player"] for p in per_run["players"]]
    assert ranked.index(f"run:{same[0]}") < ranked.index(REFERENCE)  # both seeds of the best cell above SFT


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "judge_backend"),
        ({"judge_backend": "magic"}, "judge_backend"),
        ({"judge_backend": "gold", "group_by": "seed"}, "group_by"),
        ({"judge_backend": "gold", "experiment_id": 0}, "experiment_id"),
        ({"judge_backend": "gold", "experiment_id": 999_999}, "experiment_id"),
        ({"judge_backend": "gold", "tag": "a,b"}, "tag.0"),
        ({"judge_backend": "gold", "judge_model": ""}, "judge_model"),
    ],
)
def test_bad_filters_are_422_naming_the_field(client, params, field) -> None:
    r = client.get("/leaderboard", params=params)
    assert r.status_code == 422, r.text
    assert field in [p["field"] for p in r.json()["detail"]], r.json()


def test_leaderboard_needs_a_read_token(anon) -> None:
    assert anon.get("/leaderboard", params={"judge_backend": "gold"}).status_code == 401
