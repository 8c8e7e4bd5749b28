"""klq.client.Client against a real stack: a uvicorn API server and a real `klq worker` process on SQLite
and kombu's filesystem broker (tests/worker's testkit), training tiny runs on the built-in task."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "worker"))

from worker_testkit import Stack, make_stack, tiny_config, wait_for  # noqa: E402

from klq.client import (  # noqa: E402
    APIConnectionError,
    APIError,
    Client,
    JudgementFailedError,
    RunFailedError,
    WaitTimeout,
)

pytestmark = pytest.mark.slow

ITERATIONS = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, builtin_assets: Path) -> Iterator[Stack]:
    gen = make_stack("client", "sqlite", tmp_path_factory.mktemp("client-stack"), builtin_assets)
    s = next(gen)
    s.start_worker("main")
    try:
        yield s
    finally:
        for _ in gen:
            pass


@pytest.fixture
def api(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    for var in ("KLQ_API_TOKEN", "KLQ_API_URL"):
        monkeypatch.delenv(var, raising=False)
    with Client(stack.server.url, token=stack.server.token, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def finished(stack: Stack) -> dict[str, int]:
    """Two runs trained to success through the client (a KLQ run from a YAML file, a PPO run from a dict),
    shared by the tests that read finished runs."""
    with Client(stack.server.url, token=stack.server.token) as c:
        return _train_two(stack, c)


def _train_two(stack: Stack, c: Client) -> dict[str, int]:
    path = stack.data_dir / "tiny-klq.yaml"
    path.write_text(yaml.safe_dump(tiny_config(ITERATIONS, checkpoint_interval=ITERATIONS, eval_interval=3)))
    klq = c.create_run(path, name="client-klq", tags=["client"], overrides={"seed": 1})
    ppo = c.create_run(tiny_config(ITERATIONS, checkpoint_interval=ITERATIONS, eval_interval=3),
                       name="client-ppo", overrides={"algorithm": "ppo", "train.learning_rate": 1e-4})
    assert klq["status"] == "queued" and klq["config"]["seed"] == 1 and klq["tags"] == ["client"]
    assert ppo["config"]["algorithm"] == "ppo" and ppo["config"]["train"]["learning_rate"] == 1e-4
    seen: list[str] = []
    try:
        done = c.wait_for_run(klq["id"], timeout=180, poll_interval=0.3, on_update=lambda r: seen.append(r["status"]))
        done_ppo = c.wait_for_runs([ppo["id"]], timeout=180, poll_interval=0.3)[0]
    except (RunFailedError, WaitTimeout) as err:
        raise AssertionError(f"{err}\n{stack.diagnostics()}") from err
    assert done["status"] == done_ppo["status"] == "succeeded"
    assert done["iteration"] == ITERATIONS and done["finished_at"]
    assert seen[-1] == "succeeded" and seen == sorted(seen, key=["queued", "running", "succeeded"].index)
    return {"klq": klq["id"], "ppo": ppo["id"]}


def test_token_and_url_resolution(stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KLQ_API_TOKEN", raising=False)
    monkeypatch.setenv("KLQ_API_URL", stack.server.url + "/api/v1")
    # <data_dir>/api_token, the file the API wrote at its first start
    with Client(data_dir=stack.data_dir) as c:
        assert c.base_url == stack.server.url and c.token == stack.server.token
        assert c.me()["name"]
    # $KLQ_DATA_DIR
    monkeypatch.setenv("KLQ_DATA_DIR", str(stack.data_dir))
    with Client() as c:
        assert c.token == stack.server.token
    # $KLQ_API_TOKEN wins over the file; an explicit token wins over both
    monkeypatch.setenv("KLQ_API_TOKEN", "klq_not-a-token")
    with Client() as c:
        assert c.token == "klq_not-a-token"
        with pytest.raises(APIError) as err:
            c.list_runs()
        assert err.value.status == 401
    with Client(token=stack.server.token) as c:
        assert c.list_runs(limit=1)["limit"] == 1
    # no token anywhere: reads need one by default
    monkeypatch.delenv("KLQ_API_TOKEN")
    with Client(data_dir=tmp_path) as c:
        assert c.token is None
        with pytest.raises(APIError) as err:
            c.list_runs()
        assert err.value.status == 401
    # default URL, and an unreachable server
    monkeypatch.delenv("KLQ_API_URL")
    with Client(token="x") as c:
        assert c.base_url == "http://127.0.0.1:8000"
    with Client("http://127.0.0.1:9", token="x", timeout=2) as c, pytest.raises(APIConnectionError):
        c.get_run(1)


def test_invalid_config_names_the_field(api: Client) -> None:
    with pytest.raises(APIError) as err:
        api.create_run(tiny_config(), overrides={"train.minibatch_size": 5})
    assert err.value.status == 422
    assert any(field.startswith("config") for field in err.value.field_errors), err.value.field_errors
    with pytest.raises(APIError) as err:
        api.get_run(10**6)
    assert err.value.status == 404


def test_runs_list_get_and_wait(api: Client, finished: dict[str, int]) -> None:
    ids = {r["id"] for r in api.iter_runs(page_size=1)}
    assert set(finished.values()) <= ids
    page = api.list_runs(status=["succeeded"], tag=["client"])
    assert [r["id"] for r in page["items"]] == [finished["klq"]]
    run = api.get_run(finished["ppo"])
    assert run["name"] == "client-ppo" and run["algorithm"] == "ppo"
    # waiting on a finished run returns at once
    assert api.wait_for_run(finished["klq"], timeout=5)["status"] == "succeeded"


def test_metrics_frames(api: Client, finished: dict[str, int]) -> None:
    run_id = finished["klq"]
    keys = ["objective/scores", "objective/kl"]
    long = api.metrics(run_id, keys)
    assert list(long.columns) == ["step", "key", "value"]
    assert set(long["key"]) == set(keys)
    for key in keys:
        assert long.loc[long["key"] == key, "step"].tolist() == list(range(1, ITERATIONS + 1))
    assert long["value"].dtype == "float64" and long["value"].notna().all()

    wide = api.metrics(run_id, keys, wide=True)
    assert list(wide.columns) == keys and list(wide.index) == list(range(1, ITERATIONS + 1))
    scores = long[long["key"] == "objective/scores"].set_index("step")["value"]
    pd.testing.assert_series_equal(wide["objective/scores"], scores, check_names=False)

    # downsampled series: same points while the run is shorter than max_points
    down = api.metrics(run_id, keys, max_points=100, wall_time=True)
    assert list(down.columns) == ["step", "key", "value", "wall_time"]
    pd.testing.assert_frame_equal(down[["step", "key", "value"]], long)
    assert down["wall_time"].notna().all()

    # all keys; several runs
    every = api.metrics(run_id)
    assert set(keys) < set(every["key"]) == {k["key"] for k in api.metric_keys(run_id)}
    both = api.metrics([finished["klq"], finished["ppo"]], "objective/scores")
    assert list(both.columns) == ["run_id", "step", "key", "value"]
    assert both.groupby("run_id").size().to_dict() == {finished["klq"]: ITERATIONS, finished["ppo"]: ITERATIONS}
    both_wide = api.metrics([finished["klq"], finished["ppo"]], ["objective/scores"], wide=True, max_points=50)
    assert set(both_wide.columns) == {(finished["klq"], "objective/scores"), (finished["ppo"], "objective/scores")}
    assert api.metrics(run_id, ["no/such-key"]).empty


def test_samples(api: Client, finished: dict[str, int]) -> None:
    run_id = finished["klq"]
    steps = [s["step"] for s in api.sample_steps(run_id)]
    assert steps and max(steps) == ITERATIONS
    latest = api.samples(run_id)
    assert latest and {s["step"] for s in latest} == {ITERATIONS}
    assert all(s["prompt"] and isinstance(s["response"], str) and s["score"] is not None for s in latest)
    everything = api.samples(run_id, "all")
    assert len(everything) == sum(s["count"] for s in api.sample_steps(run_id)) > len(latest)
    first = api.samples(run_id, min(steps), as_frame=True)
    assert isinstance(first, pd.DataFrame) and set(first["step"]) == {min(steps)}
    assert {"prompt", "response", "score", "gold_score", "kl"} <= set(first.columns)
    assert len(list(api.iter_samples(run_id, page_size=3))) == len(everything)


def test_judge_waits_for_a_win_rate(api: Client, finished: dict[str, int]) -> None:
    judgement = api.judge(finished["klq"], finished["ppo"], num_prompts=4, timeout=180, poll_interval=0.3)
    assert judgement["status"] == "succeeded", judgement
    result = judgement["result"]
    assert result["win_rate"] is not None and 0 <= result["win_rate"] <= 1
    assert result["wins_a"] + result["wins_b"] + result["ties"] + result["invalid"] == 4
    again = api.wait_for_judgement(judgement["id"], timeout=5, include_verdicts=True)
    assert len(again["verdicts"]) == 8  # both presentation orders
    queued = api.judge(finished["klq"], num_prompts=2, wait=False)  # against the SFT policy
    assert queued["status"] == "queued" and queued["run_b"] is None
    done = api.wait_for_judgement(queued["id"], timeout=180, poll_interval=0.3)
    assert done["status"] == "succeeded" and done["result"]["win_rate"] is not None


def test_failed_run_raises_with_its_error(api: Client, stack: Stack) -> None:
    missing = stack.data_dir / "models" / "no-such-model"
    run = api.create_run(tiny_config(2), overrides={"model.policy": str(missing)})
    with pytest.raises(RunFailedError) as err:
        api.wait_for_run(run["id"], timeout=120, poll_interval=0.3)
    assert err.value.run["status"] == "failed" and err.value.run["id"] == run["id"]
    assert "model.policy" in err.value.error and str(missing) in str(err.value)
    # or returned as it is
    assert api.wait_for_run(run["id"], timeout=5, raise_on_failure=False)["status"] == "failed"
    # a failed judgement raises too (the failed run has no checkpoint to judge)
    try:
        judgement = api.judge(run["id"], num_prompts=2, timeout=120, poll_interval=0.3)
    except JudgementFailedError as jerr:
        assert jerr.judgement["status"] == "failed" and jerr.error
    except APIError as aerr:  # or the API refuses it up front
        assert aerr.status in (409, 422)
    else:
        raise AssertionError(f"judging a failed run succeeded: {judgement}")


def test_cancel_and_timeout(api: Client, stack: Stack) -> None:
    long = 100_000  # iterations: only the cancel below ends it, however fast the machine trains
    run = api.create_run(tiny_config(long, checkpoint_interval=100))
    with pytest.raises(WaitTimeout) as err:
        api.wait_for_run(run["id"], timeout=0.5, poll_interval=0.1)
    assert err.value.last is not None and err.value.last["status"] in ("queued", "running")
    # wait until it trains, then cancel it
    def training() -> bool:
        state = api.get_run(run["id"])
        assert state["status"] in ("queued", "running"), (state, stack.diagnostics(run["id"]))
        return state["status"] == "running" and state["iteration"] >= 1

    wait_for(training, 120, f"run {run['id']} to train")
    cancelled = api.cancel_run(run["id"])
    assert cancelled["cancel_requested"]
    final = api.wait_for_run(run["id"], timeout=300, poll_interval=0.2)
    assert final["status"] == "cancelled" and final["error"] is None
    assert 1 <= final["iteration"] < long

