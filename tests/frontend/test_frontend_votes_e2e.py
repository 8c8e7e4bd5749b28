"""Blind human votes in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against
real processes: the API (uvicorn) and the dashboard (`klq ui`), on a database seeded as workers leave it.
The run names are checked in the page's DOM: absent while a pair waits for its vote, present once it is
cast; markup in a response shows as text; a reload resumes the session. Screenshots of the vote view and
of the Leaderboard page go to test-artifacts/e2e/."""

from __future__ import annotations

import re

from backend_testkit import Server
from frontend_testkit import (
    CHROMIUM_MARKS,
    VOTE_MARKUP,
    SeededVotes,
    UiStack,
    seed,
    seed_votes,
    shot,
    stack_fixture,
    tab_fixtures,
    wait_idle,
)

from klq.client import Client

pytestmark = CHROMIUM_MARKS
Stack = UiStack[SeededVotes]


def seed_with_votes(api: Server) -> SeededVotes:
    """The common seed (frontend_testkit.seed), then two runs of their own to vote on."""
    seed(api)
    return seed_votes(api, "e2e")


stack = stack_fixture("fe-votes", seed_with_votes, "votes-ui.log")
browser, tab = tab_fixtures(height=1400, watch_dialogs=False)


def click(page, name: str) -> None:
    """Click the st.button labelled ``name`` (a Material icon's name comes first in its text)."""
    label = re.compile(re.escape(name) + "$")
    page.get_by_test_id("stButton").get_by_role("button").filter(has_text=label).click()
    wait_idle(page)


def names_in_dom(page, sv: SeededVotes) -> list[str]:
    html = page.content()
    return [n for n in (sv.name_a, sv.name_b) if n in html]


def ballot_position(page) -> int:
    page.get_by_text(re.compile(r"pair \d+ of 3")).first.wait_for()
    text = page.get_by_text(re.compile(r"pair \d+ of 3")).first.inner_text()
    return int(re.search(r"pair (\d+) of 3", text).group(1))


def test_blind_vote_reveal_resume_and_agreement(stack: Stack, tab) -> None:
    sv = stack.seeded
    tab.goto(f"{stack.ui_url}/vote?source={sv.judgement}")
    tab.get_by_role("heading", name="Vote", exact=True).wait_for()
    wait_idle(tab)
    click(tab, "Start voting")
    assert ballot_position(tab) == 1
    session = int(re.search(r"judgement=(\d+)", tab.url).group(1))

    markup_seen = False
    for position in (1, 2, 3):
        assert ballot_position(tab) == position
        assert names_in_dom(tab, sv) == [], f"pair {position}: a run name is on the page before the vote"
        code = "\n".join(tab.get_by_test_id("stCode").all_inner_texts())
        if VOTE_MARKUP in code:  # HTML and Markdown in a response are shown as typed, never rendered
            markup_seen = True
            assert tab.evaluate("document.title") != "pwned"
            assert tab.locator('a[href="http://example.com"]').count() == 0
            shot(tab, "vote-01-ballot-blind")
        if position == 2:  # a reload (or another person opening the URL) resumes at the same pair
            before = code
            tab.reload()
            tab.get_by_role("heading", name="Vote", exact=True).wait_for()
            wait_idle(tab)
            assert ballot_position(tab) == 2 and names_in_dom(tab, sv) == []
            assert "\n".join(tab.get_by_test_id("stCode").all_inner_texts()) == before
        tab.get_by_label("Comment (optional)").fill(f"e2e comment {position}")
        click(tab, "Left is better")
        tab.get_by_text("You chose the left response").wait_for()
        assert sorted(names_in_dom(tab, sv)) == sorted([sv.name_a, sv.name_b]), "the reveal names both runs"
        if position == 1:
            shot(tab, "vote-02-reveal")
        click(tab, "Next pair" if position < 3 else "Finish")
    assert markup_seen
    tab.get_by_text(f"Session {session}: succeeded, 3 of 3 voted.").wait_for()
    tab.get_by_text("Agreement of automatic judges with the votes").wait_for()
    shot(tab, "vote-03-done-agreement")

    with Client(stack.api.url, stack.api.token) as api:
        votes = list(api.iter_verdicts(session))
        agreement = api.judgement_agreement(sv.judgement)
    assert sorted(v["comment"] for v in votes) == [f"e2e comment {i}" for i in (1, 2, 3)]
    assert [a["human_judgement"] for a in agreement] == [session] and agreement[0]["n"] == 3


def test_leaderboard_screenshot(stack: Stack, tab) -> None:
    tab.goto(f"{stack.ui_url}/leaderboard")
    tab.get_by_role("heading", name="Leaderboard", exact=True).wait_for()
    wait_idle(tab)
    tab.get_by_text(re.compile(r"player\(s\) from \d+ comparison\(s\)")).first.wait_for()
    shot(tab, "leaderboard")
