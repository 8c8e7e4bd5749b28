"""End to end in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright): an experiment's
results page served by real processes, the API (uvicorn) and the dashboard (`klq ui`), on a database
seeded as the worker leaves a finished experiment (tests/frontend/frontend_testkit.seed_experiment; the
training itself is covered by tests/worker's experiment test). Checks that the results table, the
reward-vs-KL frontier plot and the win-rates are shown, and that a failed run's error stays text.
Screenshots go to test-artifacts/e2e/."""

from __future__ import annotations

from frontend_testkit import (
    CHROMIUM_MARKS,
    SeededExperiment,
    UiStack,
    chromium_browser,
    open_browser_tab,
    seed_experiment,
    shot,
    stack_fixture,
    wait_idle,
)

pytestmark = CHROMIUM_MARKS
Stack = UiStack[SeededExperiment]


stack = stack_fixture("fe-exp-e2e", seed_experiment, "experiments-ui.log")


def test_experiment_results_page(stack: Stack) -> None:
    exp = stack.seeded
    with stack.api.client() as c:
        results = c.get(f"/experiments/{exp.id}/results").json()
    klq_vs_ppo = next(w for w in results["win_rates"] if w["kind"] == "klq_vs_ppo" and w["kl_coef"] == 0.05)

    # tall: Streamlit scrolls inside its own container, so a screenshot shows what fits the viewport
    with chromium_browser() as browser, open_browser_tab(browser, height=3200) as page:
        # the list, then the experiment's page
        page.goto(stack.ui_url + "/experiments")
        page.get_by_role("heading", name="Experiments").wait_for()
        page.get_by_text("2 experiment(s)").wait_for()  # the table itself is drawn on a canvas
        wait_idle(page)
        shot(page, "20-experiments-list")
        page.get_by_role("tab", name="New experiment").click()
        page.get_by_text("16 run(s) will be queued, then 28 judgement(s)").wait_for()  # 4 algorithms x 2 x 2
        wait_idle(page)
        shot(page, "20b-experiments-new")

        page.goto(f"{stack.ui_url}/experiments?experiment={exp.id}")
        page.get_by_role("heading", name=f"#{exp.id} study").wait_for()
        wait_idle(page)
        metrics = page.get_by_test_id("stMetric")
        assert "failed" in metrics.filter(has_text="Status").inner_text()
        assert "8/8" in metrics.filter(has_text="Runs finished").inner_text()
        assert "10/10" in metrics.filter(has_text="Judgements").inner_text()

        # the results table: one per tau (canvas-drawn data frames), with their headings
        for tau in ("0.05", "0.1"):
            page.get_by_text(f"τ = {tau}", exact=True).wait_for()
        assert page.get_by_test_id("stDataFrame").count() >= 4  # 2 taus, win-rates, not judged
        page.get_by_text("1 run(s) at τ = 0.1 failed or were cancelled").wait_for()

        # the win-rates (chart with CIs) and the reward-vs-KL frontier plot
        page.get_by_role("heading", name="Win-rates").wait_for()
        page.get_by_role("heading", name="Reward vs KL").wait_for()
        charts = page.get_by_test_id("stVegaLiteChart")
        charts.nth(1).wait_for()
        assert charts.count() == 2
        for i in range(2):  # drawn: Vega renders into a canvas (or an svg) inside the chart element
            charts.nth(i).locator("canvas, svg").first.wait_for()
            box = charts.nth(i).bounding_box()
            assert box and box["width"] > 300 and box["height"] > 100, box
        page.get_by_text("8 run(s) plotted, ").wait_for()
        page.get_by_text("on their algorithm's Pareto frontier").wait_for()
        headline = metrics.filter(has_text="KLQ vs PPO, τ = 0.05")
        assert f"{100 * klq_vs_ppo['win_rate']:.1f}%" in headline.inner_text()
        low, high = 100 * klq_vs_ppo["ci_low"], 100 * klq_vs_ppo["ci_high"]
        page.get_by_text(f"95% CI {low:.1f}–{high:.1f}% · 6 wins, 2 losses, 0 ties").wait_for()
        page.get_by_role("button", name="Download results (CSV)").wait_for()
        page.get_by_role("button", name="Download results (JSON)").wait_for()
        shot(page, "21-experiment-results")

        # the experiment's error (which run failed) is text, never markup
        error = page.get_by_test_id("stCode").filter(has_text="failed").first
        error.wait_for()
        assert page.locator("[data-testid=stMain] b", has_text="not html").count() == 0

        # seed-averaged curves with their band, and the runs with the failed one's error as text
        page.get_by_role("tab", name="Curves").click()
        wait_idle(page)
        page.get_by_test_id("stVegaLiteChart").nth(1).wait_for()
        shot(page, "22-experiment-curves")
        page.get_by_role("tab", name="Runs").click()
        wait_idle(page)
        page.get_by_test_id("stExpander").filter(has_text="failed").first.click()
        markup = page.get_by_test_id("stCode").filter(has_text="<b>not html</b>").first
        markup.wait_for()
        assert page.locator("[data-testid=stMain] b", has_text="not html").count() == 0
        shot(page, "23-experiment-runs")
