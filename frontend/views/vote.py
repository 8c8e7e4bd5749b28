"""Vote: people judge pairs of responses blind. A voting session (a judgement with judge backend 'human') is
started from an automatic judgement's pairs or from two runs' stored samples, or resumed; each pair shows
the prompt and two responses as Left and Right (the sides fixed per session and prompt by the server), with
no run name on the page until the vote is cast; then the reveal, then the next pair.

The session in progress is kept in the URL (?judgement=ID), so a reload or another person opening the same
address continues where it stopped. Generated text is shown as text only (code blocks), never as HTML or
Markdown."""

from __future__ import annotations

import streamlit as st

from frontend import logic, ui
from klq.client import APIError

api = ui.client()
st.title("Vote")

session_ids = ui.query_ids("judgement")
session_id = session_ids[0] if session_ids else None


def open_session(judgement_id: int | None) -> None:
    """Enter a session (kept in the URL) or leave it (None)."""
    st.session_state.pop("vote.reveal", None)
    if judgement_id is None:
        st.query_params.pop("judgement", None)
    else:
        st.query_params["judgement"] = str(judgement_id)


def cast(judgement_id: int, pair: dict, choice: str) -> None:
    """The vote buttons' callback: vote, and keep the pair and its reveal to show until 'Next pair'."""
    comment = (st.session_state.get("vote.comment") or "").strip() or None
    try:
        vote = api.vote(judgement_id, pair["prompt_id"], choice, comment=comment)
    except APIError as err:
        st.session_state["vote.error"] = (
            f"Someone else voted on this pair meanwhile ({err.message}); here is the next one."
            if err.status == 409
            else f"The vote was not stored: {err.status or 'no answer'}: {err.message}"
        )
        return
    st.session_state["vote.comment"] = ""
    st.session_state["vote.reveal"] = {"judgement_id": judgement_id, "pair": pair, "vote": vote}


def start_session() -> None:
    """The start form's callback: create the voting session and enter it."""
    s = st.session_state
    kwargs: dict = {"seed": int(s.get("vote.seed") or 0)}
    if s.get("vote.num_pairs"):
        kwargs["num_prompts"] = int(s["vote.num_pairs"])
    if s.get("vote.source_kind") == "judgement":
        kwargs["source_judgement"] = s.get("vote.source")
    else:
        kwargs.update(run_a=s.get("vote.run_a"), run_b=s.get("vote.run_b"))
        kwargs.update(step_a=s.get("vote.step_a"), step_b=s.get("vote.step_b"))
    try:
        created = api.create_human_judgement(**kwargs)
    except APIError as err:
        s["vote.start_errors"] = err.field_errors or {"": [f"{err.status or 'no answer'}: {err.message}"]}
        return
    s.pop("vote.start_errors", None)
    open_session(created["id"])


def show_pair(pair: dict) -> None:
    """The prompt and the two responses, by side, as literal text."""
    st.markdown("**Prompt**")
    ui.text_block(pair["prompt"])
    left, right = st.columns(2)
    with left:
        st.markdown("**Left**")
        ui.text_block(pair["left"])
    with right:
        st.markdown("**Right**")
        ui.text_block(pair["right"])


def voting(judgement_id: int) -> None:
    """One session: the reveal of the last vote, or the next blind pair, or the end."""
    reveal = st.session_state.get("vote.reveal")
    if reveal and reveal["judgement_id"] == judgement_id:
        vote = reveal["vote"]
        st.caption(f"Session {judgement_id} · {vote['completed']} of {vote['total']} voted")
        show_pair(reveal["pair"])
        st.success(ui.md_escape(logic.reveal_text(vote)), icon=":material/visibility:")
        if vote.get("comment"):
            st.caption("Your comment:")
            ui.text_block(vote["comment"])
        st.button(
            "Next pair" if vote["status"] == "running" else "Finish",
            type="primary",
            icon=":material/arrow_forward:",
            key="vote.next",
            on_click=lambda: st.session_state.pop("vote.reveal", None),
        )
        return
    if error := st.session_state.pop("vote.error", None):
        st.warning(error)
    try:
        ballot = api.next_ballot(judgement_id)
    except APIError as err:
        ui.show_error(err, f"session {judgement_id}")
        st.button("Back to the sessions", key="vote.back", on_click=open_session, args=(None,))
        return
    pair = ballot["pair"]
    if pair is None:
        st.success(
            f"Session {judgement_id}: {ballot['status']}, {ballot['completed']} of {ballot['total']} voted."
        )
        j = ui.call(api.get_judgement, judgement_id, include_verdicts=False, what="the session")
        if j:
            r = j["result"]
            st.caption(
                f"Votes for A / B / tie: {r['wins_a']} / {r['wins_b']} / {r['ties']} · win rate of A "
                f"{logic.format_win_rate(r)}"
            )
            agreement_table(j.get("agreement") or [])
        st.button("Back to the sessions", key="vote.back", on_click=open_session, args=(None,))
        return
    st.caption(
        f"Session {judgement_id} · pair {pair['position']} of {ballot['total']} · {ballot['completed']} voted · "
        "which run wrote which response is shown after your vote"
    )
    show_pair(pair)
    st.text_area("Comment (optional)", key="vote.comment", max_chars=2000, height=80)
    c = st.columns(3)
    for col, choice, text, icon in (
        (c[0], "left", "Left is better", ":material/arrow_back:"),
        (c[1], "tie", "Tie", ":material/drag_handle:"),
        (c[2], "right", "Right is better", ":material/arrow_forward:"),
    ):
        col.button(
            text,
            key=f"vote.{choice}",
            icon=icon,
            width="stretch",
            on_click=cast,
            args=(judgement_id, pair, choice),
        )
    with st.expander("End this session"):
        st.caption("Closing keeps the votes so far; the remaining pairs are not voted on.")
        st.button(
            "Close the session",
            key="vote.close",
            on_click=lambda: ui.call(api.close_judgement, judgement_id, what="closing the session"),
        )
    st.button("Leave (resume later)", key="vote.leave", on_click=open_session, args=(None,))


def agreement_table(rows: list[dict]) -> None:
    """The agreement of automatic judges with these votes, or a caption saying there is none."""
    if not rows:
        st.caption("No automatic judgement shares pairs with these votes yet.")
        return
    st.markdown("**Agreement of automatic judges with the votes**")
    st.dataframe(
        logic.agreement_frame(rows),
        hide_index=True,
        width="stretch",
        column_config={
            "agreement": st.column_config.NumberColumn(format="percent"),
            "kappa": st.column_config.NumberColumn("Cohen's kappa", format="%.3f"),
        },
    )


def field_errors(errors: dict, *names: str) -> None:
    for name in names:
        for msg in errors.get(name, []):
            st.error(f"{name}: {msg}", icon=":material/error:")


def chooser() -> None:
    """Resume an open session, or start one."""
    judgements = ui.call(api.list_judgements, status=["running"], limit=200, what="sessions") or {"items": []}
    open_sessions = [j for j in judgements["items"] if logic.is_human(j)]
    st.subheader("Resume a session")
    if open_sessions:
        ids = [j["id"] for j in open_sessions]
        labels = {j["id"]: logic.session_label(j) for j in open_sessions}
        pick = st.selectbox("Open sessions", ids, key="vote.resume_pick", format_func=labels.get)
        st.button(
            "Resume", key="vote.resume", icon=":material/play_arrow:", on_click=open_session, args=(pick,)
        )
    else:
        st.caption("No open voting session.")

    st.subheader("Start a session")
    errors = st.session_state.get("vote.start_errors") or {}
    for msg in errors.get("", []):
        st.error(msg)
    source_ids = ui.query_ids("source")
    if source_ids and "vote.source_kind" not in st.session_state:
        st.session_state["vote.source_kind"] = "judgement"
    kind = st.radio(
        "Vote on",
        ["judgement", "runs"],
        key="vote.source_kind",
        horizontal=True,
        format_func={
            "judgement": "the pairs of an automatic judgement (to measure its agreement with you)",
            "runs": "two runs' stored samples",
        }.get,
    )
    if kind == "judgement":
        listed = ui.call(api.list_judgements, limit=200, what="judgements") or {"items": []}
        automatic = [j for j in listed["items"] if not logic.is_human(j) and j["completed"]]
        if not automatic:
            st.caption("No automatic judgement has verdicts yet: judge two runs on the Samples page first.")
        else:
            ids = [j["id"] for j in automatic]
            names = ui.names_of(api, {r for j in automatic for r in (j["run_a"], j["run_b"]) if r})
            if source_ids and source_ids[0] in ids and "vote.source" not in st.session_state:
                st.session_state["vote.source"] = source_ids[0]
            by_id = {j["id"]: j for j in automatic}
            st.selectbox(
                "Judgement",
                ids,
                key="vote.source",
                format_func=lambda i: (
                    f"{logic.judgement_label(by_id[i], names)} · {logic.judge_label(by_id[i]['judge'])}"
                ),
            )
            field_errors(errors, "source_judgement")
    else:
        choices = ui.choices_with(api, [])
        ids = list(choices)
        c = st.columns(2)
        with c[0]:
            st.selectbox("Run A", ids, key="vote.run_a", format_func=lambda i: ui.run_label(choices[i]))
            st.number_input(
                "Samples' step of A (empty: latest)", min_value=0, value=None, step=1, key="vote.step_a"
            )
            field_errors(errors, "run_a", "step_a")
        with c[1]:
            st.selectbox(
                "Run B",
                ids,
                key="vote.run_b",
                index=min(1, len(ids) - 1),
                format_func=lambda i: ui.run_label(choices[i]),
            )
            st.number_input(
                "Samples' step of B (empty: latest)", min_value=0, value=None, step=1, key="vote.step_b"
            )
            field_errors(errors, "run_b", "step_b")
    c = st.columns(2)
    c[0].number_input(
        "Pairs (empty: all)", min_value=1, max_value=5000, value=None, step=1, key="vote.num_pairs"
    )
    c[1].number_input("Seed (which pairs, in which order)", 0, 2**31 - 1, 0, key="vote.seed")
    field_errors(errors, "num_prompts", "seed", "prompt_ids")
    st.button(
        "Start voting",
        type="primary",
        icon=":material/how_to_vote:",
        key="vote.start",
        on_click=start_session,
    )
    st.caption(
        "Votes are blind: the two responses are shown as Left and Right, and which run wrote which is revealed "
        "only after the vote. Each pair takes one vote; people sharing a session continue where it stopped."
    )


if session_id is None:
    chooser()
else:
    voting(session_id)
