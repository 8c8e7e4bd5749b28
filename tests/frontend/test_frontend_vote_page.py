"""The Vote page (AppTest against a real API): start a blind voting session from an automatic judgement's
pairs, vote, the reveal, the next pair, the end with the agreement table; resume from the URL; the start
form's 422s; and the agreement table on the Samples page's judgement view."""

from __future__ import annotations

from frontend_testkit import VOTE_MARKUP, all_text, page, seed_votes, texts, widget

from klq.client import Client


def names_shown(at, sv) -> bool:
    """Whether either run's name is anywhere on the page: texts, widget labels, options and values."""
    shown = all_text(at)
    for kind in ("selectbox", "multiselect", "radio", "text_input", "text_area", "button"):
        for w in getattr(at, kind):
            shown += f"\n{w.label}\n{getattr(w, 'options', '')}\n{getattr(w, 'value', '')}"
    shown = shown.replace("\\", "")  # Markdown escapes (ui.md_escape) taken out
    return sv.name_a in shown or sv.name_b in shown


def test_start_vote_reveal_next_and_finish(app_env) -> None:
    sv = seed_votes(app_env, "apptest")
    at = page("vote", {"source": sv.judgement})
    assert at.title[0].value == "Vote"
    assert (
        widget(at, "vote.source_kind").value == "judgement"
        and widget(at, "vote.source").value == sv.judgement
    )
    widget(at, "vote.start").click().run()
    session = int(
        at.query_params["judgement"][0]
        if isinstance(at.query_params["judgement"], list)
        else at.query_params["judgement"]
    )
    with Client(app_env.url, app_env.token) as api:
        created = api.get_judgement(session, include_verdicts=False)
    assert created["judge"] == {"backend": "human"} and created["source_judgement"] == sv.judgement

    seen_markup = False
    for position in (1, 2, 3):
        # blind: the pair's texts are on the page, no run name is
        assert f"pair {position} of 3" in all_text(at)
        assert not names_shown(at, sv), all_text(at)
        codes = texts(at, "code")
        prompt_id = next(pid for pid, (ra, rb) in sv.responses.items() if ra in codes and rb in codes)
        ra, rb = sv.responses[prompt_id]
        left, right = codes[1], codes[2]  # prompt, left, right
        assert {left, right} == {ra, rb}
        seen_markup |= VOTE_MARKUP in codes
        assert VOTE_MARKUP not in "\n".join(texts(at, "markdown"))  # never rendered as Markdown
        widget(at, "vote.comment").set_value(f"comment {position}").run()
        widget(at, "vote.left").click().run()
        # the reveal: which run was on which side
        reveal = "\n".join(texts(at, "success")).replace("\\", "")
        left_name = sv.name_a if left == ra else sv.name_b
        right_name = sv.name_b if left == ra else sv.name_a
        assert "Left: #" in reveal and left_name in reveal and right_name in reveal
        assert reveal.index(left_name) < reveal.index(right_name)
        assert names_shown(at, sv)  # the check above can fail: the names are on the page now
        widget(at, "vote.next").click().run()
    assert seen_markup
    text = all_text(at)
    assert f"Session {session}: succeeded, 3 of 3 voted." in text
    agreement = next(d.value for d in at.dataframe if "kappa" in d.value.columns)
    assert list(agreement["automatic judgement"]) == [sv.judgement] and list(agreement["pairs"]) == [3]
    with Client(app_env.url, app_env.token) as api:
        votes = list(api.iter_verdicts(session))
        rows = api.judgement_agreement(sv.judgement)
    assert sorted(v["comment"] for v in votes) == ["comment 1", "comment 2", "comment 3"]
    assert {v["voter"] for v in votes} == {"admin"}
    assert [r["human_judgement"] for r in rows] == [session] and rows[0]["n"] == 3
    assert agreement["agreement"].iloc[0] == rows[0]["agreement"]


def test_resume_from_the_url_where_it_stopped(app_env) -> None:
    sv = seed_votes(app_env, "resume")
    with Client(app_env.url, app_env.token) as api:
        session = api.create_human_judgement(run_a=sv.run_a, run_b=sv.run_b)
        first = api.next_ballot(session["id"])["pair"]
        api.vote(session["id"], first["prompt_id"], "tie")
    at = page("vote", {"judgement": session["id"]})
    assert f"Session {session['id']} · pair 2 of 3 · 1 voted" in all_text(at)
    assert first["left"] not in texts(at, "code") or first["right"] not in texts(at, "code")
    assert not names_shown(at, sv)
    widget(at, "vote.leave").click().run()
    assert "judgement" not in at.query_params
    assert session["id"] in widget(at, "vote.resume_pick").options or str(session["id"]) in str(
        widget(at, "vote.resume_pick").options
    )


def test_start_errors_name_the_field(app_env) -> None:
    sv = seed_votes(app_env, "errors")
    at = page("vote")
    widget(at, "vote.source_kind").set_value("runs").run()
    widget(at, "vote.run_a").set_value(sv.run_a).run()
    widget(at, "vote.run_b").set_value(sv.run_b).run()
    widget(at, "vote.step_a").set_value(999).run()
    widget(at, "vote.start").click().run()
    assert any("step_a: run" in e and "no samples at step 999" in e for e in texts(at, "error")), texts(
        at, "error"
    )
    assert "judgement" not in at.query_params


def test_judgement_view_shows_the_agreement_with_votes(app_env) -> None:
    sv = seed_votes(app_env, "judgement-view")
    with Client(app_env.url, app_env.token) as api:
        session = api.create_human_judgement(source_judgement=sv.judgement)
        while (pair := api.next_ballot(session["id"])["pair"]) is not None:
            api.vote(session["id"], pair["prompt_id"], "left")
        expected = api.judgement_agreement(sv.judgement)
    at = page("samples", {"runs": f"{sv.run_a},{sv.run_b}"}, tab="Judgements")
    widget(at, "judge.show").set_value(sv.judgement).run()
    assert "Agreement with human votes" in all_text(at)
    table = next(d.value for d in at.dataframe if "kappa" in d.value.columns)
    assert list(table["human votes"]) == [session["id"]] and list(table["pairs"]) == [3]
    assert table["agreement"].iloc[0] == expected[0]["agreement"]
    assert "Vote on these pairs blind" in [b.label for b in at.button]
    widget(at, "judge.show").set_value(session["id"]).run()
    assert "Agreement of judges with these votes" in all_text(at)
    assert list(next(d.value for d in at.dataframe if "kappa" in d.value.columns)["automatic judgement"]) == [
        sv.judgement
    ]


def test_side_by_side_shows_votes_as_votes(app_env) -> None:
    sv = seed_votes(app_env, "side-by-side")
    with Client(app_env.url, app_env.token) as api:
        session = api.create_human_judgement(source_judgement=sv.judgement)
        while (pair := api.next_ballot(session["id"])["pair"]) is not None:
            api.vote(session["id"], pair["prompt_id"], "tie", comment="<b>same</b>")
    at = page("samples", {"runs": f"{sv.run_a},{sv.run_b}"})
    assert widget(at, "samples.judgement").value == sv.judgement  # the automatic judgement by default
    widget(at, "samples.judgement").set_value(session["id"]).run()
    labels = [e.label for e in at.expander]
    assert labels.count(f"Human vote: tie (A = #{sv.run_a}, B = #{sv.run_b})") == 3, labels
    assert "<b>same</b>" in texts(at, "code") and "by admin" in all_text(at)
