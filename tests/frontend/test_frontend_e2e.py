"""End to end in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against real
processes: the API (uvicorn), a worker (`klq worker`) training on the built-in task, and the dashboard
(`klq ui`). Launch a run from the form, watch its curve grow, cancel it from its page, open the Samples page,
judge and compare two runs. Screenshots of every page go to test-artifacts/e2e/.

Nothing here depends on how fast the machine is: the launched run is far longer than any test
(FORM_ITERATIONS), so its curve is seen growing however slow the page's polling and however fast the
training; the test ends it with the page's Cancel button once the growth (and a first eval's samples)
has been seen, and goes on with the cancelled run's data."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from backend_testkit import Server, free_port, served_database
from frontend_testkit import (
    ARTIFACTS,
    CHROMIUM_MARKS,
    chromium_browser,
    shot,
    spawn_cli,
    stop_cli,
    wait_idle,
    wait_ui,
)

from backend import store

pytestmark = CHROMIUM_MARKS

FORM_ITERATIONS = 100_000  # never reached: the run is cancelled once its curve has been seen growing
XSS = "<script>alert('xss')</script> <b>bold</b> <img src=x onerror=alert(1)>"
REST_CONFIG = {  # the second run, queued over REST: PPO, a few iterations
    "algorithm": "ppo",
    "task": {"name": "builtin", "num_eval_prompts": 8},
    "rollout": {"response_length": 12},
    "train": {
        "total_episodes": 6 * 16,
        "batch_size": 16,
        "minibatch_size": 16,
        "micro_batch_size": 16,
        "num_epochs": 1,
        "learning_rate": 3.0e-4,
    },
    "eval_interval": 2,
    "checkpoint_interval": 8,
}


@dataclass
class Stack:
    api: Server
    ui_url: str
    worker: subprocess.Popen
    ui: subprocess.Popen
    logs: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, builtin_assets: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("fe-e2e")
    data = tmp / "data"
    shutil.copytree(builtin_assets, data / "assets" / "builtin")
    try:
        with served_database("sqlite", tmp, data) as api:
            env = dict(api.env, KLQ_PRINT_INITIAL_TOKEN="false")
            worker = spawn_cli(
                ["worker", "--queues", "gpu,cpu", "--concurrency", "1", "--loglevel", "WARNING"],
                env,
                data / "worker.log",
            )
            port = free_port()
            ui = spawn_cli(["ui", "--port", str(port), "--api-url", api.url], env, data / "ui.log")
            ui_url = f"http://127.0.0.1:{port}"
            try:
                wait_ui(ui, ui_url, data / "ui.log")
                yield Stack(api, ui_url, worker, ui, data)
            finally:
                for proc in (ui, worker):
                    stop_cli(proc)
    finally:  # the logs once every process has stopped
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name in ("worker.log", "ui.log", "server.log"):
            with contextlib.suppress(OSError):
                shutil.copy(data / name, ARTIFACTS / name)


@pytest.fixture(scope="module")
def browser(stack: Stack):
    with chromium_browser() as b:
        yield b


def set_number(scope, label: str, value) -> None:
    box = scope.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    wait_idle(scope.page if hasattr(scope, "page") else scope)


def points_of(page, key: str = "objective/scores") -> int | None:
    """The number of points of ``key`` the Run page says it holds (all of them: "N points (of M)" when
    the page holds a downsampled series)."""
    text = page.locator("[data-testid=stCaptionContainer]").all_inner_texts()
    for t in text:
        m = re.search(re.escape(key) + r": (\d+) points(?: \(of (\d+)\))?", t)
        if m:
            return int(m.group(2) or m.group(1))
    return None


def run_state(api: Server, run_id: int) -> dict:
    with api.client() as c:
        return c.get(f"/runs/{run_id}").json()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll until ``predicate()`` is truthy and return its value; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return value


def wait_run(api: Server, run_id: int, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    with api.client() as c:
        while True:
            run = c.get(f"/runs/{run_id}").json()
            if run["status"] in ("succeeded", "failed", "cancelled"):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} did not finish: {run}")
            time.sleep(1)


def test_launch_watch_samples_compare(stack: Stack, browser) -> None:
    t0 = time.monotonic()

    def phase(name: str) -> None:  # shown with pytest -s
        print(f"[e2e {time.monotonic() - t0:6.1f}s] {name}", flush=True)

    # tall: Streamlit scrolls inside its own container, so a screenshot shows what fits the viewport
    page = browser.new_page(viewport={"width": 1440, "height": 2400})
    page.set_default_timeout(30_000)

    # Runs (empty) and Launch
    page.goto(stack.ui_url + "/")
    page.get_by_role("heading", name="Runs").wait_for()
    wait_idle(page)
    page.goto(stack.ui_url + "/launch")
    page.get_by_role("heading", name="Launch a run").wait_for()
    page.get_by_label("total_episodes", exact=True).wait_for()
    page.get_by_role("button", name="Queue run").wait_for()
    wait_idle(page)
    shot(page, "01-launch-empty")

    # start from the built-in KLQ preset, made tiny
    page.get_by_test_id("stSelectbox").filter(has_text="Start from").click()
    page.get_by_role("option", name="configs/builtin-klq.yaml").click()
    wait_idle(page)
    page.get_by_label("name", exact=True).first.fill("e2e-form-run")
    page.get_by_label("name", exact=True).first.press("Enter")
    wait_idle(page)
    training = page.get_by_test_id("stExpander").filter(has_text="Training")
    for label, value in (("total_episodes", FORM_ITERATIONS * 16), ("batch_size", 16), ("num_epochs", 1)):
        set_number(training, label, value)
    set_number(page, "eval_interval", 2)
    set_number(page.get_by_test_id("stExpander").filter(has_text="Task"), "num_eval_prompts", 8)
    shot(page, "02-launch-filled")
    phase("form filled")
    page.get_by_role("button", name="Queue run").click()

    # the Run page: the chart appears and its number of points grows
    page.get_by_role("heading", name="Run", exact=True).wait_for()
    page.get_by_text("queued on 'gpu'").wait_for()
    with stack.api.client() as c:
        runs = c.get("/runs", params={"q": "e2e-form-run"}).json()["items"]
    assert len(runs) == 1, runs
    form_run = runs[0]
    with stack.api.client() as c:
        cfg = c.get(f"/runs/{form_run['id']}").json()["config"]
        assert cfg["train"]["total_episodes"] == FORM_ITERATIONS * 16
        assert cfg["train"]["batch_size"] == 16 and cfg["eval_interval"] == 2
        rest = c.post("/runs", json={"config": REST_CONFIG, "name": "e2e-rest-ppo", "queue": "cpu"}).json()

    # The run goes on until it is cancelled below, so the page sees its curve grow whatever the speed of
    # the machine (generous timeout: a loaded machine starts the worker's child slowly).
    seen: list[int] = []

    def grown() -> bool:
        n = points_of(page)
        if n is not None and (not seen or n != seen[-1]):
            seen.append(n)
            if len(seen) == 1:
                page.get_by_test_id("stVegaLiteChart").first.wait_for()
                shot(page, "03-run-first-points")
        if len(seen) < 2:
            run = run_state(stack.api, form_run["id"])
            assert run["status"] in ("queued", "running"), (run, f"points seen: {seen}")
        return len(seen) >= 2

    wait_until(grown, 600, "the Run page to show the curve growing")
    assert seen == sorted(seen) and seen[-1] > seen[0], f"points seen: {seen}"
    page.get_by_test_id("stVegaLiteChart").nth(3).wait_for()  # reward, KL, rlhf_reward, losses, ...
    shot(page, "04-run-grown")
    phase("curve grew")

    # held-out samples of a first eval (eval_interval 2) for the Samples page, then cancel it on its page
    with stack.api.client() as c:
        wait_until(lambda: c.get(f"/runs/{form_run['id']}/samples/steps").json(), 600, "the first samples")
    page.get_by_role("button", name="Cancel run").click()
    form_done = wait_run(stack.api, form_run["id"])
    assert form_done["status"] == "cancelled" and form_done["error"] is None, form_done
    assert seen[-1] <= form_done["iteration"] < FORM_ITERATIONS, (seen, form_done)
    page.get_by_test_id("stMetric").filter(has_text="Status").filter(has_text="cancelled").wait_for()
    shot(page, "04a-run-cancelled")
    phase("run cancelled from its page")
    assert wait_run(stack.api, rest["id"])["status"] == "succeeded"
    phase("both runs finished")

    # the Logs tab: the training log the worker's child process wrote, as text
    page.get_by_role("tab", name="Logs").click()
    ended = f"cancelled after {form_done['iteration']} iterations"
    page.get_by_test_id("stCode").filter(has_text=ended).wait_for()
    page.get_by_role("button", name="Download the whole log").wait_for()
    shot(page, "04b-run-log")
    phase("training log shown")

    # Samples: both runs side by side; a response with markup (written as a worker would) stays text
    a, b = form_run["id"], rest["id"]
    with stack.api.db.write_session() as s, stack.api.client() as c:
        for rid in (a, b):
            step = c.get(f"/runs/{rid}/samples/steps").json()[-1]["step"]
            store.write_samples(
                s,
                rid,
                [
                    {
                        "step": step,
                        "prompt_id": "zz-markup",
                        "prompt": "<i>prompt</i>",
                        "response": XSS,
                        "score": 0.0,
                    }
                ],
            )
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{stack.ui_url}/samples?runs={a},{b}")
    page.get_by_role("heading", name="Samples & judgements").wait_for()
    wait_idle(page)
    page.get_by_test_id("stCode").first.wait_for()
    assert page.get_by_test_id("stCode").count() >= 3  # a prompt and the two runs' responses, at least
    markup = page.get_by_test_id("stCode").filter(has_text="<script>alert('xss')</script>").first
    markup.wait_for()
    assert "<b>bold</b>" in markup.inner_text()
    assert page.locator("[data-testid=stMain] b", has_text="bold").count() == 0  # no element made from it
    assert page.locator("[data-testid=stMain] i", has_text="prompt").count() == 0
    assert not dialogs
    markup.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "05b-samples-markup-as-text.png"))
    shot(page, "05-samples")
    phase("samples")
    # launch a judgement (the gold judge) from the Samples page and watch it to its win-rate
    page.get_by_role("tab", name="Judgements").click()
    wait_idle(page)
    prompts = page.get_by_label("Held-out prompts", exact=True)
    prompts.fill("4")
    prompts.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Queue judgement").click()
    page.get_by_text("queued.").first.wait_for()
    with stack.api.client() as c:
        judgement = c.get("/judgements").json()["items"][0]
    assert (judgement["run_a"], judgement["run_b"], judgement["num_prompts"]) == (a, b, 4)
    page.get_by_role("tab", name="Judgements").click()
    # the label exactly: the length-controlled metrics beside it have "win rate of A" and "95% CI" in theirs
    metric = page.get_by_test_id("stMetric").filter(has=page.get_by_text("Win rate of A", exact=True))
    metric.wait_for(timeout=600_000)
    with stack.api.client() as c:
        judgement = c.get(f"/judgements/{judgement['id']}").json()
    assert judgement["status"] == "succeeded", judgement
    assert f"{100 * judgement['result']['win_rate']:.1f}%" in metric.inner_text()
    ci = page.get_by_test_id("stMetric").filter(has=page.get_by_text("95% CI", exact=True)).inner_text()
    assert f"{100 * judgement['result']['ci_low']:.1f}" in ci
    shot(page, "06-judgement-result")
    phase("judgement done")
    page.get_by_role("tab", name="Side by side").click()
    page.get_by_text("Judge:").first.wait_for()  # verdicts beside the prompts

    # Compare: overlaid curves, reward vs KL, config diff
    page.goto(f"{stack.ui_url}/compare?runs={a},{b}")
    page.get_by_role("heading", name="Compare runs").wait_for()
    wait_idle(page)
    page.get_by_test_id("stVegaLiteChart").first.wait_for()
    shot(page, "07-compare-curves")
    page.get_by_role("tab", name="Reward vs KL").click()
    page.get_by_text("on the Pareto frontier").wait_for()
    shot(page, "08-compare-reward-vs-kl")
    page.get_by_role("tab", name="Config diff").click()
    page.get_by_text("field(s) differ").wait_for()
    shot(page, "09-compare-config-diff")
    phase("compare done")

    # the Runs page with both runs, and a finished run's page
    page.goto(stack.ui_url + "/")
    page.get_by_text("2 run(s)").wait_for()  # the table itself is drawn on a canvas
    wait_idle(page)
    shot(page, "10-runs")
    page.goto(f"{stack.ui_url}/run?run={a}")
    page.get_by_test_id("stVegaLiteChart").first.wait_for()
    wait_idle(page)
    shot(page, "11-run-finished")
    page.close()
