"""Runs: the table of runs (status, algorithm, task, tau, reward, KL, progress, ETA) with filters and
paging; actions on the selected runs: open, compare, samples, cancel, clone, delete, tag."""

from __future__ import annotations

import streamlit as st

from frontend import logic, ui
from klq.client import APIError

PAGE_SIZE = 50
STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]

api = ui.client()
labels = logic.algorithm_labels(ui.call(ui.algorithms, api, what="algorithms") or [])  # GET /algorithms
st.title("Runs")
if notice := st.session_state.pop("runs.notice", None):
    st.success(notice)
if st.session_state.pop("runs.reset", False):  # after a delete: nothing selected, nothing confirmed
    st.session_state["runs.selected"] = []
    st.session_state["runs.delete_confirm"] = False

with st.container(horizontal=True, vertical_alignment="bottom"):
    status = st.multiselect("Status", STATUSES, key="runs.status", width=300)
    algorithm = st.multiselect(
        "Algorithm",
        list(labels),
        key="runs.algorithm",
        format_func=lambda name: logic.algorithm_label(name, labels),
        width=200,
    )
    tags = st.multiselect("Tags (all of)", ui.call(ui.list_tags, api) or [], key="runs.tags", width=250)
    q = st.text_input("Search name or notes", key="runs.q", width=250)
    order = st.selectbox("Order", ["newest", "oldest", "name"], key="runs.order", width=130)

filters = (tuple(status), tuple(algorithm), tuple(tags), q.strip(), order)
if st.session_state.get("runs.filters") != filters:  # new filters: back to the first page
    st.session_state["runs.filters"] = filters
    st.session_state["runs.page"] = 1

page_no = int(st.session_state.get("runs.page", 1))
data = ui.call(
    ui.runs_page,
    api,
    *filters[:4],
    order=order,
    limit=PAGE_SIZE,
    offset=(page_no - 1) * PAGE_SIZE,
    what="listing runs",
)
if data is None:
    st.stop()
if not data["items"] and page_no > 1:
    st.session_state["runs.page"] = 1
    st.rerun()

total = data["total"]
pages = max(1, -(-total // PAGE_SIZE))
runs = data["items"]
by_id = {r["id"]: r for r in runs}
frame = logic.runs_frame(runs, ui.run_configs(api, runs), labels=labels)
st.session_state["runs.ids"] = list(frame["id"])


def _table_selected() -> None:
    rows = st.session_state["runs.table"].selection.rows
    ids = st.session_state.get("runs.ids", [])
    st.session_state["runs.selected"] = [ids[i] for i in rows if i < len(ids)]


st.dataframe(
    frame,
    key="runs.table",
    on_select=_table_selected,
    selection_mode="multi-row",
    hide_index=True,
    width="stretch",
    column_config={
        "id": st.column_config.NumberColumn("id", width="small", format="%d"),
        "name": st.column_config.TextColumn("name", width="medium"),
        "tau": st.column_config.NumberColumn("tau", format="%.3g"),
        "reward": st.column_config.NumberColumn("reward", help=logic.REWARD_KEY + " (latest)", format="%.4f"),
        "gold": st.column_config.NumberColumn("gold", help=logic.GOLD_KEY + " (latest)", format="%.4f"),
        "KL": st.column_config.NumberColumn("KL", help=logic.KL_KEY + " (latest)", format="%.4f"),
        "progress": st.column_config.ProgressColumn(
            "progress", min_value=0.0, max_value=1.0, format="percent"
        ),
        "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
    },
)

with st.container(horizontal=True, vertical_alignment="center"):
    st.caption(f"{total} run(s) · page {page_no} of {pages} · select rows to act on them")
    if st.button("◀ Previous", disabled=page_no <= 1, key="runs.prev"):
        st.session_state["runs.page"] = page_no - 1
        st.rerun()
    if st.button("Next ▶", disabled=page_no >= pages, key="runs.next"):
        st.session_state["runs.page"] = page_no + 1
        st.rerun()
    if st.button("Refresh", icon=":material/refresh:", key="runs.refresh"):
        ui.clear_caches()
        st.rerun()

# --- actions on the selected runs -------------------------------------------------------------------------

st.session_state["runs.selected"] = [i for i in st.session_state.get("runs.selected", []) if i in by_id]
selected: list[int] = st.multiselect(
    "Selected runs",
    list(by_id),
    key="runs.selected",
    format_func=lambda i: ui.run_label(by_id[i]),
    help="Select rows in the table, or pick runs here.",
)

if not selected:
    st.caption("Select runs to open, compare, clone, cancel, tag or delete them.")
    st.stop()

with st.container(horizontal=True):
    if st.button("Open", icon=":material/monitoring:", disabled=len(selected) != 1, key="runs.open"):
        ui.go("run", run=selected[0])
    if st.button("Compare", icon=":material/compare_arrows:", disabled=len(selected) < 2, key="runs.compare"):
        ui.go("compare", runs=selected[:20])
    if st.button("Samples", icon=":material/chat:", key="runs.samples"):
        ui.go("samples", runs=selected[:10])
    if st.button(
        "Clone…",
        icon=":material/content_copy:",
        disabled=len(selected) != 1,
        key="runs.clone",
        help="Open the launch form pre-filled with this run's configuration",
    ):
        ui.go("launch", clone=selected[0])
    cancellable = [i for i in selected if by_id[i]["status"] in logic.ACTIVE]
    if st.button("Cancel", icon=":material/stop_circle:", disabled=not cancellable, key="runs.cancel"):
        for rid in cancellable:
            if ui.call(api.cancel_run, rid, what=f"cancelling run {rid}") is not None:
                st.toast(f"Run {rid}: cancel requested")
        ui.clear_caches()
        st.rerun()

with st.expander("Tags"):
    current = sorted({t for i in selected for t in by_id[i]["tags"]})
    st.caption("Current tags: " + (ui.md_escape(", ".join(current)) if current else "none"))
    with st.form("runs.tag_form", clear_on_submit=True, border=False):
        add = st.text_input("Add tags (comma-separated)", key="runs.tag_add")
        remove = st.multiselect("Remove tags", current, key="runs.tag_remove")
        if st.form_submit_button("Apply to selected runs"):
            new = [t.strip() for t in add.split(",") if t.strip()]
            ok = True
            for rid in selected:
                tags_now = [t for t in by_id[rid]["tags"] if t not in remove]
                tags_now += [t for t in new if t not in tags_now]
                try:
                    api.update_run(rid, tags=tags_now)
                except APIError as err:
                    ok = False
                    ui.show_error(err, f"tagging run {rid}")
            ui.clear_caches()
            if ok:
                st.rerun()

with st.expander("Delete"):
    running = [i for i in selected if by_id[i]["status"] == "running"]
    st.warning(
        f"Deletes {len(selected)} run(s) with their metrics, samples, checkpoint records and "
        "judgements (checkpoint files on disk stay)."
    )
    confirm = st.checkbox("Yes, delete " + ", ".join(f"#{i}" for i in selected), key="runs.delete_confirm")
    force = False
    if running:
        force = st.checkbox(
            f"Also delete running run(s) {', '.join(f'#{i}' for i in running)} without "
            "waiting for them to stop",
            key="runs.delete_force",
        )
    if st.button("Delete", type="primary", disabled=not confirm, key="runs.delete"):
        deleted = []
        for rid in selected:
            try:
                api.delete_run(rid, force=force)
                deleted.append(rid)
            except APIError as err:
                ui.show_error(err, f"deleting run {rid}")
        ui.clear_caches()
        if deleted:
            st.session_state["runs.notice"] = f"Deleted run(s) {', '.join(map(str, deleted))}"
            st.session_state["runs.reset"] = True
            st.rerun()
