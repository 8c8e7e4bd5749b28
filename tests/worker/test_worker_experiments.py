"""An experiment end to end through a real `klq worker` (issue #8's done-criterion, and issue 15's: all four
algorithms): the default grid of every registered algorithm (KLQ, PPO, RLOO, GRPO) x 1 tau x 2 seeds with
tiny budgets is trained (RLOO and GRPO sampling groups of 4 responses per prompt), the worker that ends the
last run queues the judgements itself (gold judge, 4 prompts; KLQ against each other algorithm), and the results table, frontier and win-rates agree with values computed here from
the stored rows (metrics through /runs, verdicts through /judgements/{id}/verdicts). Also: the reaper starts
the judging of an experiment whose last run ended without a worker (cancelled through the API).

sqlite-fs stack only: the PostgreSQL paths of the same code are covered by tests/backend, and this test is
the most expensive of the suite (8 trainings and 14 judgements in child processes)."""

from __future__ import annotations

import math
import time

import pytest
from worker_testkit import Stack, tiny_config, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("stack", ["sqlite-fs"], indirect=True)]

ALGORITHMS = ["klq", "ppo", "rloo", "grpo"]
T95_DF1 = 12.706204736174705  # two-sided 95% Student-t quantile, 1 degree of freedom (two seeds)
Z95 = 1.959963984540054


def wilson(p: float, n: int) -> tuple[float, float]:
    c = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    h = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n))
    return c - h, c + h


def combined(ab: str, ba: str) -> str:
    if "invalid" in (ab, ba):
        return "invalid"
    return ab if ab == ba else "tie"


def wait_experiment(stack: Stack, client, eid: int, timeout: float) -> dict:
    exp: dict = {}

    def done() -> bool:
        nonlocal exp
        exp = client.get(f"/experiments/{eid}").json()
        return exp["status"] in ("succeeded", "failed", "cancelled")

    try:
        wait_for(done, timeout, f"experiment {eid} to finish", interval=0.5)
    except AssertionError as err:
        raise AssertionError(f"{err}; last state {exp}\n{stack.diagnostics()}") from None
    return exp


def test_experiment_trains_judges_itself_and_reports(
    stack: Stack, client, main_worker, extra_workers
) -> None:
    started = time.monotonic()
    # A second worker on the same queue: each task is mostly a child process starting (one core), so two
    # workers halve the wall time on a 2-core machine. It joins whenever it is ready.
    extra_workers.append(stack.start_worker("main", wait=False))
    base = tiny_config(
        iterations=2,
        checkpoint_interval=2,
        eval_interval=2,
        task={"num_eval_prompts": 4},
        train={"total_episodes": 16, "batch_size": 8, "minibatch_size": 8, "micro_batch_size": 8},
    )
    r = client.post(
        "/experiments",
        json={
            "name": "e2e",
            "base": base,
            "grid": {"kl_coefs": [0.1], "seeds": [1, 2]},  # algorithms: all of them (the default)
            "judge": {"backend": "gold", "num_prompts": 4},
            "queue": stack.queues["main"],
        },
    )
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    exp = wait_experiment(stack, client, eid, 600)
    elapsed = time.monotonic() - started
    print(f"experiment of 8 runs and 14 judgements: {elapsed:.0f} s")

    assert exp["status"] == "succeeded", (exp["error"], stack.diagnostics())
    assert exp["judging_started_at"] is not None
    assert {r["status"] for r in exp["runs"]} == {"succeeded"} and len(exp["runs"]) == 8
    assert sorted(r["algorithm"] for r in exp["runs"]) == sorted(ALGORITHMS * 2)
    groups = {r["algorithm"]: client.get(f"/runs/{r['run_id']}").json()["config"]["rollout"]["num_generations"]
              for r in exp["runs"]}  # fmt: skip
    assert groups == {"klq": 1, "ppo": 1, "rloo": 4, "grpo": 4}
    assert sorted(j["kind"] for j in exp["judgements"]) == (
        ["klq_vs_grpo"] * 2 + ["klq_vs_ppo"] * 2 + ["klq_vs_rloo"] * 2 + ["vs_sft"] * 8
    )
    assert all(j["status"] == "succeeded" and j["completed"] == j["total"] == 8 for j in exp["judgements"])
    assert exp["progress"]["runs_finished"] == 8 and exp["progress"]["judgements_finished"] == 14

    # the stored rows, read through the public API
    final: dict[int, dict[str, float]] = {}
    for run in exp["runs"]:
        keys = {k["key"]: k for k in client.get(f"/runs/{run['run_id']}/metrics/keys").json()}
        assert keys["objective/scores"]["last_step"] == 2
        final[run["run_id"]] = {k: keys[k]["last_value"] for k in ("objective/scores", "objective/kl")}
    cell = {(r["algorithm"], r["kl_coef"], r["seed"]): r["run_id"] for r in exp["runs"]}

    res = client.get(f"/experiments/{eid}/results").json()
    assert res["status"] == "succeeded" and res["not_judged"] == []
    assert [(row["kl_coef"], row["algorithm"]) for row in res["rows"]] == [(0.1, a) for a in sorted(ALGORITHMS)]
    for row in res["rows"]:
        ids = [cell[(row["algorithm"], row["kl_coef"], s)] for s in (1, 2)]
        assert row["succeeded"] == 2 and row["failed"] == [] and row["pending"] == 0
        for name, key in (("reward", "objective/scores"), ("kl", "objective/kl")):
            xs = [final[i][key] for i in ids]
            mean = sum(xs) / 2
            half = T95_DF1 * abs(xs[0] - xs[1]) / math.sqrt(2) / math.sqrt(2)  # s = |x1 - x2| / sqrt(2)
            assert row[name]["values"] == pytest.approx(xs)
            assert (row[name]["mean"], row[name]["ci_low"], row[name]["ci_high"]) == pytest.approx(
                (mean, mean - half, mean + half), rel=1e-9, abs=1e-12
            )
        assert row["gold"] is not None and row["gold"]["n"] == 2  # the built-in task logs its gold reward
        assert row["iteration_s"]["n"] == 2 and row["iteration_s"]["mean"] > 0
        assert all(v > 0 for v in row["wall_clock_s"]["values"])

    for alg in ALGORITHMS:
        pts = [(final[i]["objective/scores"], final[i]["objective/kl"], i) for (a, _t, _s), i in cell.items() if a == alg]  # fmt: skip
        front = [
            (kl, i) for reward, kl, i in pts
            if not any(k2 <= kl and r2 >= reward and (k2 < kl or r2 > reward) for r2, k2, _ in pts)
        ]  # fmt: skip
        assert res["frontier"][alg] == [i for _kl, i in sorted(front)]

    # win-rates pooled over the seeds, from the verdicts
    by_group: dict[tuple, list[int]] = {}
    for j in exp["judgements"]:
        by_group.setdefault((j["kind"], j["kl_coef"], j["algorithm"]), []).append(j["judgement_id"])
    assert len(res["win_rates"]) == len(by_group) == 3 + 4  # KLQ vs 3 others; each algorithm vs its SFT
    for w in res["win_rates"]:
        ids = by_group[(w["kind"], w["kl_coef"], w["algorithm"])]
        outcomes = []
        for jid in ids:
            page = client.get(f"/judgements/{jid}/verdicts", params={"limit": 100}).json()
            per_prompt: dict[str, dict[str, str]] = {}
            for v in page["items"]:
                per_prompt.setdefault(v["prompt_id"], {})[v["order"]] = v["verdict"]
            assert len(per_prompt) == 4
            outcomes += [combined(p["ab"], p["ba"]) for p in per_prompt.values()]
        wins, losses, ties, invalid = (outcomes.count(x) for x in ("A", "B", "tie", "invalid"))
        assert (w["wins"], w["losses"], w["ties"], w["invalid"]) == (wins, losses, ties, invalid)
        assert w["prompts"] == 4 * len(ids) == 8 and sorted(w["judgements"]) == sorted(ids)
        n = wins + losses + ties
        assert w["win_rate"] == pytest.approx((wins + ties / 2) / n)
        assert (w["ci_low"], w["ci_high"]) == pytest.approx(wilson((wins + ties / 2) / n, n))

    curves = client.get(f"/experiments/{eid}/curves", params={"key": "objective/scores"}).json()["curves"]
    assert len(curves) == 4 and all(c["steps"] == [1, 2] and c["seeds_at_step"] == [2, 2] for c in curves)
    csv_lines = client.get(f"/experiments/{eid}/results.csv").text.strip().splitlines()
    assert len(csv_lines) == 5
    assert client.get("/runs", params={"experiment_id": eid}).json()["total"] == 8


def test_reaper_starts_judging_when_the_last_run_ended_without_a_worker(
    stack: Stack, client, main_worker
) -> None:
    """The run is queued where no worker listens and cancelled through the API: no worker ever ends it,
    so only the reaper (of the main worker, every second here) can close the experiment's judging step."""
    r = client.post(
        "/experiments",
        json={
            "name": "reaped",
            "base": tiny_config(iterations=1),
            "grid": {"algorithms": ["klq"], "kl_coefs": [0.1], "seeds": [1]},
            "queue": stack.queues["idle"],
        },
    )
    assert r.status_code == 201, r.text
    exp = r.json()
    assert client.post(f"/runs/{exp['runs'][0]['run_id']}/cancel").json()["status"] == "cancelled"
    claimed = wait_for(
        lambda: client.get(f"/experiments/{exp['id']}").json()["judging_started_at"], 30, "the reaper's claim"
    )
    assert claimed
    after = client.get(f"/experiments/{exp['id']}").json()
    assert after["status"] == "failed" and after["judgements"] == []  # nothing succeeded, nothing to judge
    assert "cancelled" in after["error"]
