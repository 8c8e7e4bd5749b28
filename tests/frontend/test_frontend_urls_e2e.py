"""Every page's URL, and every link the dashboard itself makes, opens its page in a real headless Chromium
(Debian's /usr/bin/chromium driven by Playwright) against real processes: the API (uvicorn) and the
dashboard (`klq ui`), on a database seeded as workers leave it (tests/frontend/frontend_testkit). A URL
that Streamlit cannot resolve shows its "Page not found" dialog and runs the main page instead; each
visit here checks that no such dialog appears and that the page's own heading is shown."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from backend_testkit import Server
from frontend_testkit import (
    CHROMIUM_MARKS,
    Seeded,
    SeededExperiment,
    UiStack,
    seed,
    seed_experiment,
    stack_fixture,
    tab_fixtures,
    wait_idle,
)

pytestmark = CHROMIUM_MARKS

NOT_FOUND = "Page not found"  # the title of Streamlit's dialog for a URL path no page answers
HEADINGS = {  # url path -> the page's heading (its st.title)
    "": "Runs",
    "runs": "Runs",
    "launch": "Launch a run",
    "run": "Run",
    "compare": "Compare runs",
    "samples": "Samples & judgements",
    "experiments": "Experiments",
    "leaderboard": "Leaderboard",
    "vote": "Vote",
}


Stack = UiStack[tuple[Seeded, SeededExperiment]]


def seed_with_experiment(api: Server) -> tuple[Seeded, SeededExperiment]:
    return seed(api), seed_experiment(api)


stack = stack_fixture("fe-urls", seed_with_experiment, "urls-ui.log")
browser, tab = tab_fixtures(height=1600)


def path_of(url: str) -> str:
    return urlsplit(url).path.strip("/")


def assert_shows(page, heading: str) -> None:
    """The page has finished its script run, shows ``heading``, and no "Page not found" dialog."""
    page.get_by_role("heading", name=heading, exact=True).first.wait_for()
    wait_idle(page)
    assert page.get_by_text(NOT_FOUND, exact=True).count() == 0, f"{page.url}: {NOT_FOUND}"
    page.get_by_role("heading", name=heading, exact=True).first.wait_for()


def visit(page, url: str, heading: str) -> None:
    page.goto(url)
    assert_shows(page, heading)


def test_an_unknown_path_shows_not_found(stack: Stack, tab) -> None:
    """The check itself: what Streamlit does with a path no page answers (so the checks below can fail)."""
    tab.goto(stack.ui_url + "/no-such-page")
    tab.get_by_text(NOT_FOUND, exact=True).wait_for()


def test_every_page_url_opens_its_page(stack: Stack, tab) -> None:
    for path, heading in HEADINGS.items():
        visit(tab, f"{stack.ui_url}/{path}", heading)
        assert path_of(tab.url) == path, tab.url  # served where it was asked for, not redirected


def test_page_urls_with_their_query_parameters(stack: Stack, tab) -> None:
    (s, experiment), base = stack.seeded, stack.ui_url
    label = f"#{s.klq} seed-klq (KLQ)"
    visit(tab, f"{base}/run?run={s.klq}", "Run")
    assert tab.get_by_role("combobox", name="Run", exact=True).input_value() == label
    for path, heading in (("compare", "Compare runs"), ("samples", "Samples & judgements")):
        visit(tab, f"{base}/{path}?runs={s.klq},{s.ppo}", heading)
        chosen = tab.get_by_test_id("stMultiSelect").first
        assert label in chosen.inner_text() and f"#{s.ppo} seed-ppo (PPO)" in chosen.inner_text()
    visit(tab, f"{base}/launch?clone={s.klq}", "Launch a run")
    tab.get_by_text(f"Pre-filled from run #{s.klq}").wait_for()
    visit(tab, f"{base}/experiments?experiment={experiment.id}", "Experiments")
    tab.get_by_role("heading", name=f"#{experiment.id} study").wait_for()


def follow(page, click, heading: str, path: str) -> str:
    """Click a control of the dashboard that opens another page; check where it went, then open that
    URL afresh, as a user reloading it, bookmarking it or sharing it does. Returns the URL."""
    click()
    page.get_by_role("heading", name=heading, exact=True).first.wait_for()
    page.wait_for_url(lambda u: path_of(u) == path)
    assert_shows(page, heading)
    url = page.url
    visit(page, url, heading)
    assert page.url == url
    return url


def select_runs(page, labels: list[str]) -> None:
    """Pick runs in the Runs page's "Selected runs" box (the table is drawn on a canvas), by typing: the
    list of options shows only some at a time."""
    box = page.get_by_test_id("stMultiSelect").filter(has_text="Selected runs")
    for label in labels:
        box.get_by_role("combobox").fill(label)
        page.get_by_role("option", name=label, exact=True).click()
        wait_idle(page)
    page.keyboard.press("Escape")
    for label in labels:
        box.get_by_text(label, exact=True).wait_for()


def button(page, name: str):
    """Clicks the st.button labelled ``name`` (its text ends with the label; a Material icon's name comes
    first)."""
    label = re.compile(re.escape(name) + "$")
    return lambda: page.get_by_test_id("stButton").get_by_role("button").filter(has_text=label).click()


def test_links_the_dashboard_makes_open_their_pages(stack: Stack, tab) -> None:
    (s, experiment), base = stack.seeded, stack.ui_url
    klq, ppo = f"#{s.klq} seed-klq (KLQ)", f"#{s.ppo} seed-ppo (PPO)"

    # the sidebar's menu: one link per page
    visit(tab, base + "/", "Runs")
    links = tab.get_by_test_id("stSidebarNav").get_by_role("link")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert len(hrefs) == 8, hrefs  # Runs, Launch, Run, Compare, Samples & judgements, Experiments, Leaderboard, Vote
    for href in hrefs:
        path = path_of(href)
        visit(tab, href if href.startswith("http") else base + "/" + path, HEADINGS[path])

    # the Runs page's actions on selected runs
    actions = (
        ("Open", [klq], "Run", "run", f"run={s.klq}"),
        ("Compare", [klq, ppo], "Compare runs", "compare", f"runs={s.klq}%2C{s.ppo}"),
        ("Samples", [klq, ppo], "Samples & judgements", "samples", f"runs={s.klq}%2C{s.ppo}"),
        ("Clone…", [klq], "Launch a run", "launch", f"clone={s.klq}"),
    )
    for name, selected, heading, path, query in actions:
        for start in ("/", "/runs"):
            visit(tab, base + start, "Runs")
            select_runs(tab, selected)
            url = follow(tab, button(tab, name), heading, path)
            assert urlsplit(url).query.replace(",", "%2C") == query, (name, url)

    # the Run page's buttons
    for name, heading, path in (
        ("Clone…", "Launch a run", "launch"),
        ("Samples", "Samples & judgements", "samples"),
        ("Compare…", "Compare runs", "compare"),
    ):
        visit(tab, f"{base}/run?run={s.klq}", "Run")
        url = follow(tab, button(tab, name), heading, path)
        assert str(s.klq) in urlsplit(url).query, (name, url)

    # an experiment's Runs tab: compare its runs, or go to the Runs page
    for name, heading, path in (("Compare its runs", "Compare runs", "compare"), ("Runs page", "Runs", "")):
        visit(tab, f"{base}/experiments?experiment={experiment.id}", "Experiments")
        tab.get_by_role("tab", name="Runs").click()
        wait_idle(tab)
        follow(tab, button(tab, name), heading, path)
