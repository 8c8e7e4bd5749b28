"""Leaderboard: Bradley-Terry ratings (Elo scale) of every judged policy from one judge's pairwise verdicts,
with their 95% bootstrap intervals: each run (or each algorithm at each tau) and the SFT policies, filtered
by judge model, tags and experiment (GET /leaderboard)."""

from __future__ import annotations

import streamlit as st

from frontend import logic, ui

GROUPS = {"run": "each run", "algorithm_tau": "each algorithm and τ (seeds pooled)"}

api = ui.client()
labels = logic.algorithm_labels(ui.call(ui.algorithms, api, what="algorithms") or [])  # GET /algorithms
st.title("Leaderboard")

experiments = {
    e["id"]: e for e in (ui.call(ui.experiments_page, api, what="experiments") or {}).get("items", [])
}
from_url = ui.query_ids("experiment")[:1]  # ?experiment=<id>: its algorithms and taus
c = st.columns([1, 2, 2, 2, 2])
backend = c[0].selectbox(
    "Judge",
    [*ui.JUDGE_BACKENDS, "human"],
    key="leaderboard.backend",
    help="human: the votes cast on the Vote page, one comparison per vote",
)
model = c[1].text_input("Judge model", key="leaderboard.model", help="only this judge model (empty: any)")
tags = c[2].multiselect(
    "Tags",
    ui.call(ui.list_tags, api, what="tags") or [],
    key="leaderboard.tags",
    help="runs with all these tags",
)
experiment = c[3].selectbox(
    "Experiment",
    [None, *dict.fromkeys([*from_url, *experiments])],
    index=1 if from_url else 0,
    key="leaderboard.experiment",
    format_func=lambda e: "any" if e is None else f"#{e} {experiments.get(e, {}).get('name', '')}".strip(),
)
group_by = c[4].radio(
    "Players",
    list(GROUPS),
    index=1 if from_url else 0,
    key="leaderboard.group_by",
    format_func=GROUPS.get,
)

board = ui.call(
    ui.leaderboard,
    api,
    backend,
    model.strip() or None,
    tuple(tags),
    experiment,
    group_by,
    what="the leaderboard",
)
if board is not None:
    frame = logic.leaderboard_frame(board, labels)
    if frame.empty:
        st.info(
            f"No ratings yet: fewer than two prompts with a valid verdict by the {backend} judge match these "
            "filters.",
            icon=":material/info:",
        )
        st.stop()
    anchor = (
        f"{logic.player_label(next(p for p in board['players'] if p['player'] == board['anchor']), labels)} "
        "is held at 1000"
        if board["anchor"]
        else "the mean rating is 1000"
    )
    st.caption(
        f"{len(frame)} player(s) from {board['comparisons']} comparison(s) in {board['judgements']} "
        f"judgement(s) by the {backend} judge; {anchor}. 400 points are 10:1 odds; ties count half."
    )
    st.altair_chart(ui.rating_chart(frame), width="stretch")
    st.dataframe(
        frame.drop(columns=["ci_low", "ci_high", "key"]),
        hide_index=True,
        width="stretch",
        column_config={
            "rating": st.column_config.NumberColumn("rating", format="%.0f", help="Bradley-Terry, Elo scale"),
            "95% CI": st.column_config.TextColumn(
                "95% CI", help="percentile bootstrap over the comparisons, refitted each time"
            ),
            "comparisons": st.column_config.NumberColumn(
                "comparisons", help="prompts with a valid verdict this player took part in"
            ),
        },
    )
