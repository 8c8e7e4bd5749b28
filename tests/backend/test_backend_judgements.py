"""Judgements: create (queued as klq.run_judgement), verdict storage, win-rate with a Wilson CI."""

from __future__ import annotations

import base64
import json

import pytest
from backend_testkit import Server, create_run

from backend import store
from backend.winrate import summarize_rows, wilson_interval


def test_wilson_interval_hand_computed() -> None:
    # p = 0.7, n = 10, z = 1.959964: centre = (p + z^2/2n) / (1 + z^2/n), half-width as in klq.judge.stats
    low, high = wilson_interval(7, 10)
    assert low == pytest.approx(0.396778, abs=1e-6) and high == pytest.approx(0.892209, abs=1e-6)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.277533, abs=1e-6)
    assert wilson_interval(50, 100) == pytest.approx((0.403832, 0.596168), abs=1e-6)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def _rows(pairs: dict[str, tuple[str, str]]) -> list[tuple[str, str, str]]:
    return [(pid, order, v) for pid, (ab, ba) in pairs.items() for order, v in (("ab", ab), ("ba", ba))]


def test_win_rate_counts_ties_half_and_ignores_invalid() -> None:
    pairs = {f"a{i}": ("A", "A") for i in range(6)}
    pairs |= {f"b{i}": ("B", "B") for i in range(2)}
    pairs |= {"t0": ("tie", "tie"), "t1": ("A", "B")}  # an explicit tie and a position-inconsistent pair
    pairs |= {f"x{i}": ("invalid", "A") for i in range(5)}
    s = summarize_rows(_rows(pairs))
    assert (s.wins_a, s.wins_b, s.ties, s.invalid) == (6, 2, 2, 5)
    assert s.win_rate == pytest.approx(0.7)
    assert (s.ci_low, s.ci_high) == pytest.approx(wilson_interval(7, 10))
    assert s.position_consistency == pytest.approx(9 / 10)
    assert summarize_rows(_rows({"p": ("invalid", "invalid")})).win_rate is None
    assert summarize_rows([("p", "ab", "A")]).n == 0  # one order only: still pending


def test_position_swap_cancels_a_judge_that_always_says_first() -> None:
    # "ab": A shown first, the judge picks the first -> A; "ba": B shown first -> B
    s = summarize_rows(_rows({f"p{i}": ("A", "B") for i in range(20)}))
    assert s.win_rate == 0.5 and s.position_consistency == 0.0 and s.ties == 20


def _judgement_messages(server: Server) -> list[tuple[str, list]]:
    out = []
    for p in server.broker_messages():
        msg = json.loads(p.read_text())
        out.append((msg["headers"]["task"], json.loads(base64.b64decode(msg["body"]))[0]))
    return out


def test_create_get_and_verdicts(server: Server, client) -> None:
    a, b = create_run(client)["id"], create_run(client)["id"]
    r = client.post(
        "/judgements",
        json={
            "run_a": a,
            "run_b": b,
            "step_a": 100,
            "num_prompts": 3,
            "judge": {"backend": "openai", "model": "gpt-4o-mini", "template": "summarization"},
            "queue": "cpu",
        },
    )
    assert r.status_code == 201, r.text
    j = r.json()
    assert (
        j["status"] == "queued"
        and j["run_a"] == a
        and j["run_b"] == b
        and j["step_a"] == 100
        and j["step_b"] is None
    )
    assert j["judge"]["model"] == "gpt-4o-mini" and j["total"] == 6 and j["result"]["win_rate"] is None
    assert ("klq.run_judgement", [j["id"]]) in _judgement_messages(server)

    with server.db.write_session() as s:
        assert store.acquire_judgement(s, j["id"], "w")
        verdicts = [
            {
                "prompt_id": "p1",
                "order": "ab",
                "verdict": "A",
                "prompt": "q1",
                "response_a": "ra",
                "response_b": "rb",
                "raw_output": "1",
            },
            {"prompt_id": "p1", "order": "ba", "verdict": "A", "raw_output": "2"},
            {"prompt_id": "p2", "order": "ab", "verdict": "B"},
            {"prompt_id": "p2", "order": "ba", "verdict": "tie"},
            {"prompt_id": "p3", "order": "ab", "verdict": "invalid", "raw_output": "I cannot decide"},
            {"prompt_id": "p3", "order": "ba", "verdict": "A"},
            {"prompt_id": "p4", "order": "ab", "verdict": "B"},  # its swapped order is not in yet
        ]
        store.record_verdicts(s, j["id"], verdicts)
        store.record_verdicts(s, j["id"], verdicts[:2])  # a retry never double-counts
        with pytest.raises(ValueError):
            store.record_verdicts(s, j["id"], [{"prompt_id": "p9", "order": "xy", "verdict": "A"}])

    got = client.get(f"/judgements/{j['id']}").json()
    res = got["result"]
    # p1: A/A -> A; p2: B/tie -> tie (inconsistent); p3: invalid/A -> invalid; p4: pending
    assert (res["wins_a"], res["wins_b"], res["ties"], res["invalid"]) == (1, 0, 1, 1)
    assert res["win_rate"] == pytest.approx(1.5 / 2)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(wilson_interval(1.5, 2))
    assert res["position_consistency"] == 0.5  # p1 agrees, p2 does not, p3 has no valid pair
    assert got["completed"] == 7 and got["status"] == "running" and got["verdicts_total"] == 7
    assert got["verdicts"][0] == {
        "id": got["verdicts"][0]["id"],
        "prompt_id": "p1",
        "prompt": "q1",
        "response_a": "ra",
        "response_b": "rb",
        "order": "ab",
        "verdict": "A",
        "raw_output": "1",
        "voter": None,  # a judge's verdict: no human voter, no comment
        "comment": None,
    }
    page = client.get(f"/judgements/{j['id']}/verdicts", params={"limit": 2, "offset": 4}).json()
    assert page["total"] == 7 and [(v["prompt_id"], v["order"]) for v in page["items"]] == [
        ("p3", "ab"),
        ("p3", "ba"),
    ]
    assert client.get(f"/judgements/{j['id']}", params={"include_verdicts": False}).json()["verdicts"] is None

    listed = client.get("/judgements", params={"run_id": b}).json()
    assert [x["id"] for x in listed["items"]] == [j["id"]]
    assert client.get("/judgements", params={"status": "running", "run_id": a}).json()["total"] == 1

    assert client.delete(f"/judgements/{j['id']}").status_code == 409  # running
    with server.db.write_session() as s:
        store.set_judgement_status(s, j["id"], "succeeded")
    assert client.post(f"/judgements/{j['id']}/cancel").status_code == 409
    assert client.delete(f"/judgements/{j['id']}").status_code == 204
    assert client.get(f"/judgements/{j['id']}").status_code == 404


def test_judgement_against_reference_and_cancel(client) -> None:
    a = create_run(client)["id"]
    j = client.post("/judgements", json={"run_a": a, "num_prompts": 8}).json()
    assert j["run_b"] is None and j["judge"]["backend"] == "gold" and j["queue"] == "gpu"
    c = client.post(f"/judgements/{j['id']}/cancel").json()
    assert c["status"] == "cancelled" and c["cancel_requested"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"run_a": 999_999}, "run_a"),
        ({"run_a": "RUN", "num_prompts": 1}, "run_a"),
        ({"num_prompts": 0}, "num_prompts"),
        ({"num_prompts": 10**9}, "num_prompts"),
        ({"judge": {"backend": "openai", "api_key": "sk-secret"}}, "judge"),
        ({"judge": {"backend": "openai", "headers": {"Authorization": "x"}}}, "judge"),
        ({"judge": {"backend": "openai", "base_url": "http://evil"}}, "judge"),
        ({"judge": {"backend": "openai", "whatever": 1}}, "judge.whatever"),
        ({"judge": {"backend": "gold", "max_tokens": 5}}, "judge"),
        ({"judge": {"backend": "local_hf"}}, "judge"),
        ({"judge": {"backend": "openai", "template": "no placeholders"}}, "judge"),
        ({"judge": {"backend": "magic"}}, "judge.backend"),
        ({"judge": {"backend": "local_hf", "model": "/etc"}}, "judge.model"),
        ({"queue": "nope"}, "queue"),
    ],
)
def test_bad_judgements_are_422_and_store_nothing(client, body, field) -> None:
    a = create_run(client)["id"]
    before = client.get("/judgements").json()["total"]
    r = client.post("/judgements", json={"run_a": a, **body})
    assert r.status_code == 422, r.text
    assert field in [p["field"] for p in r.json()["detail"]], r.json()
    assert "sk-secret" not in r.text
    assert client.get("/judgements").json()["total"] == before


# --- length diagnostics ----------------------------------------------------------------------------------


def _words(n: int, word: str) -> str:
    return " ".join([word] * n)


def _record(server: Server, run_a: int, run_b: int, prompts: dict[str, tuple[str, str, int, int]]) -> int:
    """A judgement with, per prompt id, (verdict of "ab", verdict of "ba", words of A's response, words of
    B's); a verdict of None leaves that order unstored (the prompt is pending)."""
    with server.db.write_session() as s:
        j = store.create_judgement(s, run_a_id=run_a, run_b_id=run_b, num_prompts=len(prompts), judge={"backend": "gold"})
        rows = [
            {"prompt_id": pid, "order": order, "verdict": v, "prompt": "q",
             "response_a": _words(la, "alpha") + "\n", "response_b": "  " + _words(lb, "beta")}
            for pid, (ab, ba, la, lb) in prompts.items()
            for order, v in (("ab", ab), ("ba", ba))
            if v is not None
        ]  # fmt: skip
        store.record_verdicts(s, j.id, rows)
        return j.id


def test_length_diagnostics_of_a_judgement(server: Server, client) -> None:
    from klq.judge.stats import length_controlled_win_rate

    a, b = create_run(client)["id"], create_run(client)["id"]
    # d = words of A - words of B: -6, -4, -2, 0, 2, 4, 6, 8 over the 8 valid prompts (B has 10 words)
    prompts = {
        "p0": ("B", "B", 4, 10), "p1": ("A", "A", 6, 10),      # d -6: B wins, d -4: A wins
        "p2": ("B", "B", 8, 10), "p3": ("tie", "tie", 10, 10), # d -2: B, d 0: tie
        "p4": ("A", "B", 12, 10), "p5": ("A", "A", 14, 10),    # d 2: position-inconsistent -> tie, d 4: A
        "p6": ("A", "A", 16, 10), "p7": ("A", "A", 18, 10),    # d 6, d 8: A
        "x0": ("invalid", "A", 40, 1),                          # invalid: left out of every length number
        "x1": ("A", None, 50, 1),                               # one order only: pending, left out
    }  # fmt: skip
    jid = _record(server, a, b, prompts)
    length = client.get(f"/judgements/{jid}", params={"include_verdicts": False}).json()["result"]["length"]

    valid = [prompts[f"p{i}"] for i in range(8)]
    assert length["unit"] == "words" and length["prompts"] == 8
    assert length["mean_length_a"] == pytest.approx(sum(v[2] for v in valid) / 8)  # 11
    assert length["mean_length_b"] == pytest.approx(10.0)
    # the quartiles of d (linear interpolation): -6 + 1.75 * 2 = -2.5, (0 + 2) / 2 = 1, 4 + 0.25 * 2 = 4.5
    assert [(k["low"], k["high"], k["prompts"]) for k in length["buckets"]] == [
        (None, -2.5, 2), (-2.5, 1.0, 2), (1.0, 4.5, 2), (4.5, None, 2)
    ]  # fmt: skip
    # A's score per bucket (ties half): {B, A} = 1/2, {B, tie} = 0.5/2, {tie, A} = 1.5/2, {A, A} = 2/2
    successes = [1.0, 0.5, 1.5, 2.0]
    for bucket, wins, diffs in zip(length["buckets"], successes, [(-6, -4), (-2, 0), (2, 4), (6, 8)], strict=True):
        assert bucket["win_rate"] == pytest.approx(wins / 2)
        assert bucket["mean_diff"] == pytest.approx(sum(diffs) / 2)
        assert (bucket["ci_low"], bucket["ci_high"]) == pytest.approx(wilson_interval(wins, 2))
    # the length-controlled rate is the library's fit on the same prompts (in prompt-id order)
    score = {"A": 1.0, "B": 0.0, "tie": 0.5}
    scores = [0.0, 1.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0]
    assert [score.get(v[0]) if v[0] == v[1] else 0.5 for v in valid] == scores
    lc = length_controlled_win_rate(scores, [v[2] for v in valid], [v[3] for v in valid], n_resamples=1000, seed=0)
    assert length["lc_win_rate"] == pytest.approx(lc.win_rate)
    assert (length["lc_ci_low"], length["lc_ci_high"]) == pytest.approx((lc.low, lc.high))
    assert length["length_preference"] == pytest.approx(lc.phi) and lc.phi > 0  # here A wins when longer
    assert length["length_scale"] == pytest.approx(lc.length_scale)

    # the list has it only when asked; a judgement without two valid prompts has none
    few = _record(server, a, b, {"p0": ("A", "A", 3, 2), "p1": ("invalid", "invalid", 3, 2)})
    listed = {j["id"]: j for j in client.get("/judgements", params={"run_id": a}).json()["items"]}
    assert listed[jid]["result"]["length"] is None
    asked = {j["id"]: j for j in client.get("/judgements", params={"run_id": a, "include_length": True}).json()["items"]}
    assert asked[jid]["result"]["length"] == length and asked[few]["result"]["length"] is None
    assert client.get(f"/judgements/{few}").json()["result"]["length"] is None
    assert client.get(f"/judgements/{jid}", params={"include_length": False}).json()["result"]["length"] is None


def test_length_control_equals_the_raw_rate_when_length_is_unrelated(server: Server, client) -> None:
    a, b = create_run(client)["id"], create_run(client)["id"]
    # every length difference (-6 .. 6) has the same record, 3 A wins and 1 B win: raw win-rate 0.75
    prompts = {
        f"d{d + 6:02d}-{k}": ("A", "A", 10 + d, 10) if k < 3 else ("B", "B", 10 + d, 10)
        for d in (-6, -3, 0, 3, 6)
        for k in range(4)
    }
    jid = _record(server, a, b, prompts)
    got = client.get(f"/judgements/{jid}").json()["result"]
    assert got["win_rate"] == pytest.approx(0.75)
    assert got["length"]["lc_win_rate"] == pytest.approx(0.75, abs=1e-3)
    assert got["length"]["length_preference"] == pytest.approx(0.0, abs=1e-3)
    assert got["length"]["lc_ci_low"] < 0.75 < got["length"]["lc_ci_high"]


def test_length_diagnostics_of_a_page_take_one_query(server: Server, client) -> None:
    from test_backend_experiments import QueryCounter

    a, b = create_run(client)["id"], create_run(client)["id"]
    ids = [_record(server, a, b, {f"p{i}": ("A", "B", i, 2) for i in range(3)}) for _ in range(4)]
    counts = []
    for some in (ids[:1], ids):
        with server.db.session() as s:
            judgements = [store.get_judgement(s, i) for i in some]
            with QueryCounter(server.db.engine) as q:
                lengths = store.judgement_lengths(s, judgements)
        counts.append(q.n)
        assert set(lengths) == set(some) and all(v is not None for v in lengths.values())
    assert counts[0] == counts[1]
