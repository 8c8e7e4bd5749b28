"""The token views in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against real
processes: the API (uvicorn) and the dashboard (`klq ui`), on a database holding token records written as a
worker writes them (frontend_testkit.seed_tokens). A token such as ``<script>alert(1)</script>`` or the
Markdown link ``[x](http://e.com)`` shows literally, in the chart and in its tooltip: no script runs, no
link is made. Screenshots of the token view and of two runs side by side go to test-artifacts/e2e/."""

from __future__ import annotations

import re

from frontend_testkit import (
    ARTIFACTS,
    CHROMIUM_MARKS,
    TOKEN_LINK,
    TOKEN_SCRIPT,
    SeededTokens,
    UiStack,
    seed_tokens,
    stack_fixture,
    tab_fixtures,
    wait_idle,
)

pytestmark = CHROMIUM_MARKS
Stack = UiStack[SeededTokens]


stack = stack_fixture("fe-tokens-e2e", seed_tokens, "tokens-ui.log")
browser, tab = tab_fixtures(height=1800)  # dialogs watched: alert(1) would open one


def open_tokens(page, url: str, charts: int) -> None:
    page.goto(url)
    page.get_by_role("heading", name="Samples & judgements").wait_for()
    wait_idle(page)
    page.get_by_role("tab", name="Tokens").click()
    wait_idle(page)
    page.get_by_test_id("stVegaLiteChart").nth(charts - 1).wait_for()
    wait_idle(page)


def drawn_tokens(chart) -> list[str]:
    """The text of the token view's text marks (SVG <text> elements), in order."""
    return chart.locator("g.layer_1_marks text").all_text_contents()


def hover_tokens(page, chart) -> dict[str, tuple[str, list[str]]]:
    """Hover over each token's rectangle of a token view and read the tooltip Vega shows: {the token as the
    tooltip's "token" row shows it: (that row's value cell's innerHTML, the tooltip's row names)}."""
    chart.scroll_into_view_if_needed()
    marks = chart.locator("g.layer_0_marks path[role=graphics-symbol]")
    seen: dict[str, str] = {}
    for i in range(marks.count()):
        box = marks.nth(i).bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        cell = page.locator("#vg-tooltip-element.visible td.value").first
        cell.wait_for()
        keys = page.locator("#vg-tooltip-element.visible td.key").all_text_contents()
        seen[cell.text_content()] = (cell.inner_html(), keys)
        page.mouse.move(0, 0)
        page.locator("#vg-tooltip-element.visible").wait_for(state="detached")
    return seen


def test_token_view_shows_markup_literally(stack: Stack, tab) -> None:
    s = stack.seeded
    open_tokens(tab, f"{stack.ui_url}/samples?runs={s.klq}", 1)
    tab.get_by_role("combobox", name="Sample (2 match)").click()  # prompt t0's: the one with the markup
    tab.get_by_role("option", name=re.compile(r"^t0 @ step 30 ")).click()
    wait_idle(tab)
    chart = tab.get_by_test_id("stVegaLiteChart").first
    chart.locator("g.layer_1_marks text", has_text="alert(1)").wait_for()
    drawn = drawn_tokens(chart)
    assert TOKEN_SCRIPT in drawn and TOKEN_LINK in drawn, drawn  # drawn as text, literally
    seen = hover_tokens(tab, chart)
    assert TOKEN_SCRIPT in seen and TOKEN_LINK in seen, f"tooltips seen: {list(seen)}"
    html, keys = seen[TOKEN_SCRIPT]
    assert html == "&lt;script&gt;alert(1)&lt;/script&gt;"  # escaped: text, not an element
    assert keys[:3] == ["token", "id", "position"] and {"k1", "k3", "logp", "entropy", "q", "delta"} <= set(keys)
    assert seen[TOKEN_LINK][0] == TOKEN_LINK  # no link made of it
    # nothing in the page was made from the tokens: no link to e.com, no script element with alert
    assert tab.locator("a[href='http://e.com']").count() == 0
    assert tab.evaluate("[...document.scripts].filter(s => s.text.includes('alert(1)')).length") == 0
    tab.mouse.move(0, 0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chart.scroll_into_view_if_needed()
    tab.screenshot(path=str(ARTIFACTS / "tokens-view.png"), full_page=True)


def test_two_runs_side_by_side(stack: Stack, tab) -> None:
    s = stack.seeded
    open_tokens(tab, f"{stack.ui_url}/samples?runs={s.klq},{s.ppo}", 2)
    charts = tab.get_by_test_id("stVegaLiteChart")
    assert charts.count() == 2
    left, right = (charts.nth(i).bounding_box() for i in range(2))
    assert left["x"] + left["width"] <= right["x"] + 1  # side by side, not one under the other
    assert TOKEN_SCRIPT in hover_tokens(tab, charts.nth(1))  # PPO's tokens too
    assert tab.locator("a[href='http://e.com']").count() == 0
    tab.mouse.move(0, 0)
    charts.first.scroll_into_view_if_needed()
    tab.screenshot(path=str(ARTIFACTS / "tokens-side-by-side.png"), full_page=True)
