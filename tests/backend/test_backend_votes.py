"""Human votes: voting sessions (judgements with judge backend "human") from an automatic judgement's pairs
or from two runs' stored samples, the blind ballot, votes and their reveal, resuming, 422s and 409s, that
no worker ever takes one, and the agreement of automatic judges with the votes (hand-computed values)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from types import SimpleNamespace

import pytest
from backend_testkit import Server, create_run

from backend import store
from backend.agreement import agreement_rows, matched_labels
from backend.winrate import wilson_interval
from klq.judge.stats import rater_agreement

BALLOT_PAIR_KEYS = {"prompt_id", "position", "prompt", "left", "right"}


def _token(client, scopes=("read", "write")) -> tuple[str, str]:
    name = f"voter-{secrets.token_hex(3)}"
    r = client.post("/tokens", json={"name": name, "scopes": list(scopes)})
    assert r.status_code == 201, r.text
    return name, r.json()["token"]


def _runs(client) -> tuple[dict, dict]:
    tag = secrets.token_hex(3)
    return create_run(client, name=f"alpha-{tag}"), create_run(client, name=f"beta-{tag}")


def _automatic(server: Server, client, a: int, b: int, combined: dict[str, tuple[str, str]]) -> int:
    """An automatic (gold) judgement of runs a and b with verdict rows ``{prompt_id: (ab, ba)}``; prompt
    p's responses are 'A says <p>' and 'B says <p>'."""
    r = client.post("/judgements", json={"run_a": a, "run_b": b, "num_prompts": len(combined)})
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    rows = [
        {
            "prompt_id": pid,
            "order": order,
            "verdict": v,
            "prompt": f"question {pid}",
            "response_a": f"A says {pid}",
            "response_b": f"B says {pid}",
        }
        for pid, (ab, ba) in combined.items()
        for order, v in (("ab", ab), ("ba", ba))
    ]
    with server.db.write_session() as s:
        assert store.acquire_judgement(s, jid, "w")
        store.record_verdicts(s, jid, rows)
        store.set_judgement_status(s, jid, "succeeded", owner="w")
    return jid


def _choice(pair: dict, policy: str) -> str:
    """The screen side of the response of policy 'A' or 'B' (or 'tie')."""
    if policy == "tie":
        return "tie"
    wanted = f"{policy} says {pair['prompt_id']}"
    assert wanted in (pair["left"], pair["right"])
    return "left" if pair["left"] == wanted else "right"


def test_vote_flow_blind_resumable_and_final(server: Server, client) -> None:
    run_a, run_b = _runs(client)
    a, b = run_a["id"], run_b["id"]
    auto = _automatic(
        server, client, a, b, {"p0": ("A", "A"), "p1": ("B", "B"), "p2": ("A", "B"), "p3": ("A", "A")}
    )
    messages = len(server.broker_messages())
    r = client.post("/judgements", json={"judge": {"backend": "human"}, "source_judgement": auto})
    assert r.status_code == 201, r.text
    h = r.json()
    hid = h["id"]
    assert h["status"] == "running" and h["judge"] == {"backend": "human"} and h["queue"] == "human"
    assert (h["run_a"], h["run_b"], h["source_judgement"], h["total"], h["completed"]) == (a, b, auto, 4, 0)
    assert len(server.broker_messages()) == messages  # never sent to a worker

    alice_name, alice_token = _token(client)
    plan = {"p0": "A", "p1": "A", "p2": "tie", "p3": "A"}  # the human's votes, by policy
    voted: dict[str, dict] = {}
    with server.client(token=alice_token) as alice:
        got = alice.get(f"/judgements/{hid}/ballot/next")
        assert got.status_code == 200, got.text
        ballot = got.json()
        pair = ballot["pair"]
        # blind: the prompt, the two texts by side and the pair's key; no run, name, id or side of A
        assert set(pair) == BALLOT_PAIR_KEYS and set(ballot) == {
            "judgement_id",
            "status",
            "completed",
            "total",
            "pair",
        }
        assert run_a["name"] not in got.text and run_b["name"] not in got.text
        assert pair["position"] == 1 and ballot["completed"] == 0 and ballot["total"] == 4
        order = store.ballot_order(hid, pair["prompt_id"])
        a_text, b_text = f"A says {pair['prompt_id']}", f"B says {pair['prompt_id']}"
        assert (pair["left"], pair["right"]) == ((a_text, b_text) if order == "ab" else (b_text, a_text))
        assert alice.get(f"/judgements/{hid}/ballot/next").json() == ballot  # a reload shows the same

        pid = pair["prompt_id"]
        vote = alice.post(
            f"/judgements/{hid}/votes",
            json={"prompt_id": pid, "choice": _choice(pair, plan[pid]), "comment": "<b>clearer</b> [x](y)"},
        )
        assert vote.status_code == 201, vote.text
        reveal = vote.json()
        voted[pid] = reveal
        assert reveal["verdict"] == plan[pid] and reveal["voter"] == alice_name
        assert reveal["comment"] == "<b>clearer</b> [x](y)"
        names = {reveal["left"]["policy"]: reveal["left"], reveal["right"]["policy"]: reveal["right"]}
        assert names["A"]["run_name"] == run_a["name"] and names["A"]["run_id"] == a
        assert names["B"]["run_name"] == run_b["name"] and names["B"]["run_id"] == b
        assert reveal["left"]["policy"] == ("A" if order == "ab" else "B")
        assert (reveal["status"], reveal["completed"], reveal["total"]) == ("running", 1, 4)

    # a second voter resumes where the first stopped; a second vote on a voted pair is refused
    again = client.post(f"/judgements/{hid}/votes", json={"prompt_id": pid, "choice": "tie"})
    assert again.status_code == 409 and alice_name in again.json()["detail"]
    seen = {pid}
    while True:
        ballot = client.get(f"/judgements/{hid}/ballot/next").json()
        if ballot["pair"] is None:
            break
        pair = ballot["pair"]
        assert pair["prompt_id"] not in seen and pair["position"] == len(seen) + 1
        seen.add(pair["prompt_id"])
        v = client.post(
            f"/judgements/{hid}/votes",
            json={"prompt_id": pair["prompt_id"], "choice": _choice(pair, plan[pair["prompt_id"]])},
        )
        assert v.status_code == 201, v.text
        voted[pair["prompt_id"]] = v.json()
    assert seen == set(plan) and ballot["status"] == "succeeded" and ballot["completed"] == 4
    assert voted[pair["prompt_id"]]["status"] == "succeeded"
    late = client.post(f"/judgements/{hid}/votes", json={"prompt_id": "p0", "choice": "tie"})
    assert late.status_code == 409 and "succeeded" in late.json()["detail"]

    # the human judgement's summary comes from its votes, as any judgement's from its verdicts
    got = client.get(f"/judgements/{hid}").json()
    res = got["result"]
    assert (res["wins_a"], res["wins_b"], res["ties"], res["invalid"]) == (3, 0, 1, 0)
    assert res["win_rate"] == pytest.approx(3.5 / 4)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(wilson_interval(3.5, 4))
    assert res["position_consistency"] is None and got["completed"] == got["total"] == 4
    by_prompt = {v["prompt_id"]: v for v in got["verdicts"]}
    assert by_prompt[pid]["voter"] == alice_name and by_prompt[pid]["comment"] == "<b>clearer</b> [x](y)"
    assert {v["voter"] for p, v in by_prompt.items() if p != pid} == {"admin"}
    assert all(v["order"] == store.ballot_order(hid, p) for p, v in by_prompt.items())

    # agreement on the four shared pairs, by hand: the judge says A, B, tie (A/B inconsistent), A; the human
    # A, A, tie, A. p_o = 3/4; p_e = (2*3 + 1*0 + 1*1) / 16 = 7/16; kappa = (3/4 - 7/16) / (9/16) = 5/9
    for jid in (auto, hid):
        rows = client.get(f"/judgements/{jid}").json()["agreement"]
        assert len(rows) == 1, rows
        ag = rows[0]
        assert (ag["automatic_judgement"], ag["human_judgement"], ag["n"], ag["excluded"]) == (
            auto,
            hid,
            4,
            0,
        )
        assert ag["voters"] == sorted({alice_name, "admin"}) and ag["judge"]["backend"] == "gold"
        assert ag["agreement"] == pytest.approx(0.75)
        assert (ag["agreement_low"], ag["agreement_high"]) == pytest.approx(wilson_interval(3, 4))
        assert ag["kappa"] == pytest.approx(5 / 9)
        assert ag["labels"] == ["A", "B", "tie"] and ag["confusion"] == [[2, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert (
        client.get(f"/judgements/{auto}", params={"include_agreement": "false"}).json()["agreement"] is None
    )

    # the leaderboard of the human votes: one comparison per vote
    board = client.get("/leaderboard", params={"judge_backend": "human"}).json()
    assert board["comparisons"] >= 4 and any(a in p["run_ids"] for p in board["players"])


def test_session_from_runs_samples_subset_and_close(server: Server, client) -> None:
    run_a, run_b = _runs(client)
    a, b = run_a["id"], run_b["id"]
    with server.db.write_session() as s:
        for rid, who in ((a, "a"), (b, "b")):
            samples = [
                {"step": step, "prompt_id": f"q{i}", "prompt": f"prompt {i}", "response": f"{who}{step}-{i}"}
                for step in (10, 20)
                for i in range(6 if rid == a else 5)  # q5 only in run a: not a pair
            ]
            # training rollouts recorded at the same steps and prompts are no pairs: only eval samples are
            rollouts = [
                {"step": step, "prompt_id": f"q{i}", "prompt": f"prompt {i}", "response": f"t{who}{step}-{i}-{k}",
                 "kind": "train", "sample_index": k}
                for step in (10, 20)
                for i in range(5)
                for k in range(2)
            ]  # fmt: skip
            store.write_samples(s, rid, samples + rollouts)
    r = client.post("/judgements", json={"judge": {"backend": "human"}, "run_a": a, "run_b": b, "step_b": 10})
    assert r.status_code == 201, r.text
    h = r.json()
    assert (h["step_a"], h["step_b"], h["total"], h["source_judgement"]) == (20, 10, 5, None)
    ballot = client.get(f"/judgements/{h['id']}/ballot/next").json()["pair"]
    i = ballot["prompt_id"][1:]
    assert ballot["prompt"] == f"prompt {i}" and {ballot["left"], ballot["right"]} == {f"a20-{i}", f"b10-{i}"}

    sub = client.post(
        "/judgements",
        json={
            "judge": {"backend": "human"},
            "run_a": a,
            "run_b": b,
            "prompt_ids": ["q1", "q3", "q4"],
            "num_prompts": 2,
            "seed": 5,
        },
    ).json()
    assert sub["total"] == 2
    first = client.get(f"/judgements/{sub['id']}/ballot/next").json()["pair"]
    assert first["prompt_id"] in {"q1", "q3", "q4"}
    assert (
        client.post(f"/judgements/{sub['id']}/votes", json={"prompt_id": "q0", "choice": "left"}).status_code
        == 422
    )
    closed = client.post(f"/judgements/{sub['id']}/close")
    assert closed.status_code == 200 and closed.json()["status"] == "succeeded"
    assert client.get(f"/judgements/{sub['id']}/ballot/next").json()["pair"] is None
    assert client.post(f"/judgements/{sub['id']}/close").status_code == 409

    other = client.post("/judgements", json={"judge": {"backend": "human"}, "run_a": a, "run_b": b}).json()
    cancelled = client.post(f"/judgements/{other['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"  # no worker to wait for


def test_a_human_judgement_is_never_claimed_or_requeued(server: Server, client) -> None:
    a, b = (r["id"] for r in _runs(client))
    auto = _automatic(server, client, a, b, {"p0": ("A", "A")})
    hid = client.post("/judgements", json={"judge": {"backend": "human"}, "source_judgement": auto}).json()[
        "id"
    ]
    with server.db.write_session() as s:
        assert hid not in store.requeue_stale_judgements(s, stale_after=timedelta(seconds=0))
        assert not store.acquire_judgement(s, hid, "worker-1", stale_after=timedelta(seconds=0))
    got = client.get(f"/judgements/{hid}").json()
    assert got["status"] == "running" and got["judge"] == {"backend": "human"}
    # an automatic judgement is not a ballot
    assert client.get(f"/judgements/{auto}/ballot/next").status_code == 409
    assert (
        client.post(f"/judgements/{auto}/votes", json={"prompt_id": "p0", "choice": "tie"}).status_code == 409
    )
    assert client.post(f"/judgements/{auto}/close").status_code == 409
    assert client.get("/judgements/999999/ballot/next").status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({"queue": "gpu"}, "queue"),
        ({"run_a": "A"}, "run_a"),
        ({"source_judgement": None, "run_a": None}, "run_a"),
        ({"source_judgement": None, "run_a": "A"}, "run_b"),
        ({"source_judgement": 999999}, "source_judgement"),
        ({"source_judgement": "HUMAN"}, "source_judgement"),
        ({"source_judgement": "EMPTY"}, "source_judgement"),
        ({"prompt_ids": ["p0", "nope"]}, "prompt_ids.1"),
        ({"prompt_ids": []}, "prompt_ids"),
        ({"judge": {"backend": "human", "model": "x"}}, "judge"),
        ({"judge": {"backend": "human", "decoding": "sampled"}}, "judge"),
        ({"source_judgement": None, "run_a": "NOSAMPLES", "run_b": "B"}, "run_a"),
        ({"source_judgement": None, "step_a": 7, "run_a": "A", "run_b": "B"}, "step_a"),
        ({"judge": {"backend": "gold"}, "source_judgement": "AUTO", "run_a": "A"}, "source_judgement"),
        ({"judge": {"backend": "gold"}, "source_judgement": None}, "run_a"),
    ],
)
def test_bad_sessions_are_422_naming_the_field(server: Server, client, body: dict, field: str) -> None:
    a, b = (r["id"] for r in _runs(client))
    empty = create_run(client)["id"]
    with server.db.write_session() as s:
        store.write_samples(s, a, [{"step": 1, "prompt_id": "p0", "prompt": "q", "response": "r"}])
        store.write_samples(s, b, [{"step": 1, "prompt_id": "p0", "prompt": "q", "response": "s"}])
    auto = _automatic(server, client, a, b, {"p0": ("A", "A")})
    human = client.post("/judgements", json={"judge": {"backend": "human"}, "source_judgement": auto}).json()[
        "id"
    ]
    unjudged = client.post("/judgements", json={"run_a": a, "run_b": b}).json()["id"]
    names = {"A": a, "B": b, "NOSAMPLES": empty, "HUMAN": human, "EMPTY": unjudged, "AUTO": auto}
    full = {"judge": {"backend": "human"}, "source_judgement": auto, **body}
    full = {k: names.get(v, v) if isinstance(v, str) else v for k, v in full.items() if v is not None}
    before = client.get("/judgements", params={"limit": 1}).json()["total"]
    r = client.post("/judgements", json=full)
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["detail"]], r.json()
    assert client.get("/judgements", params={"limit": 1}).json()["total"] == before


@pytest.mark.parametrize(
    "vote, field",
    [
        ({"prompt_id": "p0", "choice": "A"}, "choice"),
        ({"prompt_id": "p0", "choice": "left", "comment": "x" * 2001}, "comment"),
        ({"prompt_id": "p0", "choice": "left", "voter": "me"}, "voter"),
        ({"prompt_id": "p9", "choice": "left"}, "prompt_id"),
        ({"choice": "left"}, "prompt_id"),
    ],
)
def test_bad_votes_are_422_naming_the_field(server: Server, client, vote: dict, field: str) -> None:
    a, b = (r["id"] for r in _runs(client))
    auto = _automatic(server, client, a, b, {"p0": ("A", "A")})
    hid = client.post("/judgements", json={"judge": {"backend": "human"}, "source_judgement": auto}).json()[
        "id"
    ]
    r = client.post(f"/judgements/{hid}/votes", json=vote)
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["detail"]], r.json()
    assert client.get(f"/judgements/{hid}").json()["completed"] == 0


def test_votes_need_a_write_token(server: Server, client) -> None:
    a, b = (r["id"] for r in _runs(client))
    auto = _automatic(server, client, a, b, {"p0": ("A", "A")})
    hid = client.post("/judgements", json={"judge": {"backend": "human"}, "source_judgement": auto}).json()[
        "id"
    ]
    _name, read_only = _token(client, scopes=("read",))
    with server.client(token=read_only) as ro:
        assert ro.get(f"/judgements/{hid}/ballot/next").status_code == 200
        assert (
            ro.post(f"/judgements/{hid}/votes", json={"prompt_id": "p0", "choice": "tie"}).status_code == 403
        )


def test_an_experiment_cannot_be_judged_by_humans(client) -> None:
    r = client.post(
        "/experiments/preview",
        json={
            "base": {},
            "grid": {"algorithms": ["klq"], "kl_coefs": [0.05], "seeds": [1]},
            "judge": {"backend": "human"},
        },
    )
    assert r.status_code == 422 and "judge" in [d["field"] for d in r.json()["detail"]], r.text


# ------------------------------------------------------------------------------------------ pure agreement


def test_kappa_and_agreement_by_hand() -> None:
    # judge: A A B B tie A A B; human: A B B B tie A tie B. p_o = 6/8; judge A=4 B=3 tie=1, human A=2 B=4 tie=2:
    # p_e = (4*2 + 3*4 + 1*2) / 64 = 22/64; kappa = (48/64 - 22/64) / (42/64) = 26/42 = 13/21
    judge = ["A", "A", "B", "B", "tie", "A", "A", "B"]
    human = ["A", "B", "B", "B", "tie", "A", "tie", "B"]
    ra = rater_agreement(judge, human)
    assert ra.n == 8 and ra.excluded == 0
    assert ra.agreement == pytest.approx(0.75) and ra.kappa == pytest.approx(13 / 21)
    assert (ra.agreement_low, ra.agreement_high) == pytest.approx(wilson_interval(6, 8))
    assert ra.confusion == [[2, 1, 1], [0, 3, 0], [0, 0, 1]]
    # five copies: the same p_o, p_e and kappa; the bootstrap interval (every resample defined) holds it
    big = rater_agreement(judge * 5, human * 5)
    assert big.kappa == pytest.approx(13 / 21) and big.kappa_low < 13 / 21 < big.kappa_high
    assert (big.agreement_low, big.agreement_high) == pytest.approx(wilson_interval(30, 40))


def _auto_rows(labels: dict[str, str]) -> list[tuple]:
    return [
        (pid, order, v, f"A says {pid}", f"B says {pid}")
        for pid, v in labels.items()
        for order in ("ab", "ba")
    ]


def test_matched_labels_turn_crossed_votes_and_skip_other_responses() -> None:
    auto = _auto_rows({"p0": "A", "p1": "B", "p2": "tie", "p3": "invalid"})
    auto.append(("p4", "ab", "A", "A says p4", "B says p4"))  # its other order is not in: no combined verdict
    # a human judgement of the same runs the other way round: its A is the judge's B
    human = [
        ("p0", "ba", "B", "B says p0", "A says p0"),  # prefers the judge's A
        ("p1", "ab", "B", "B says p1", "A says p1"),  # prefers the judge's A
        ("p2", "ab", "tie", "B says p2", "A says p2"),
        ("p3", "ab", "A", "B says p3", "A says p3"),
        ("p4", "ab", "A", "B says p4", "A says p4"),
        ("p5", "ab", "A", "other", "texts"),  # not judged automatically
    ]
    labels = matched_labels(auto, human)
    assert labels == (("A", "B", "tie", "invalid"), ("A", "A", "tie", "B"))
    other = [("p0", "ab", "A", "A says p0", "a different B")]  # same prompt, other responses
    assert matched_labels(auto, other) == ((), ())

    judgements = {
        1: SimpleNamespace(id=1, judge={"backend": "gold"}),
        2: SimpleNamespace(id=2, judge={"backend": "human"}),
        3: SimpleNamespace(id=3, judge={"backend": "human"}),  # shares no pair: no row
    }
    rows = {1: auto, 2: human, 3: other}
    out = agreement_rows(1, judgements, rows, {2: ["alice"], 3: ["bob"]})
    assert [(o.automatic_judgement, o.human_judgement) for o in out] == [(1, 2)]
    assert out[0].n == 3 and out[0].excluded == 1 and out[0].voters == ["alice"]
    assert out[0].agreement == pytest.approx(2 / 3)
    # p_o = 2/3; judge A=1 B=1 tie=1, human A=2 B=0 tie=1: p_e = (1*2 + 0 + 1*1) / 9 = 1/3; kappa = 1/2
    assert out[0].kappa == pytest.approx(0.5)
    assert agreement_rows(2, judgements, rows, {2: ["alice"]})[0].model_dump() == out[0].model_dump()


def test_concurrent_votes_on_one_pair_store_one(server: Server, client) -> None:
    """Eight voters send their vote on the same pair at once: exactly one is stored (201), the others are
    409, whatever the interleaving (the judgement's row is locked from the check to the commit)."""
    from concurrent.futures import ThreadPoolExecutor

    a, b = (r["id"] for r in _runs(client))
    auto = _automatic(server, client, a, b, {"p0": ("A", "A"), "p1": ("B", "B")})
    hid = client.post("/judgements", json={"judge": {"backend": "human"}, "source_judgement": auto}).json()[
        "id"
    ]
    pid = client.get(f"/judgements/{hid}/ballot/next").json()["pair"]["prompt_id"]

    def vote(choice: str) -> int:
        with server.client() as c:
            return c.post(f"/judgements/{hid}/votes", json={"prompt_id": pid, "choice": choice}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(vote, ["left", "right", "tie", "left"] * 2))
    assert sorted(codes) == [201] + [409] * 7, codes
    got = client.get(f"/judgements/{hid}").json()
    assert got["completed"] == 1 and got["verdicts_total"] == 1 and got["status"] == "running"
