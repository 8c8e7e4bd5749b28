"""Run: one run's live curves (reward, gold reward, the eval judge's win-rate against the reference with its
interval as a band, KL, rlhf_reward, losses, entropy, q/*, timing), updated every few seconds in a fragment
that fetches only the new points; its config and provenance (git commit, library versions, device, host),
error, training log (followed live the same way: only the lines written since), and checkpoints."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd
import streamlit as st
import yaml

from frontend import logic, ui
from klq.client import APIError, Client

REFRESH_S = 3
MAX_POINTS = [500, 1000, 2000, 5000]
LOG_LINES = [50, 200, 1000, 5000]
LOG_HEIGHT = 560  # px: a longer log scrolls inside its box

api = ui.client()
st.title("Run")
if notice := st.session_state.pop("run.notice", None):
    st.success(notice)

run_id = ui.pick_run(api, key="run.id")
if run_id is None:
    st.stop()
try:
    run = ui.run_detail(api, run_id)
except APIError as err:
    ui.show_error(err, f"run {run_id}")
    st.stop()

active = run["status"] in logic.ACTIVE

with st.container(horizontal=True):
    if (
        st.button(
            "Cancel run",
            icon=":material/stop_circle:",
            disabled=not active or run["cancel_requested"],
            key="run.cancel",
        )
        and ui.call(api.cancel_run, run_id, what="cancel") is not None
    ):
        ui.clear_caches()
        st.rerun()
    if st.button("Clone…", icon=":material/content_copy:", key="run.clone"):
        ui.go("launch", clone=run_id)
    if st.button("Samples", icon=":material/chat:", key="run.samples"):
        ui.go("samples", runs=[run_id])
    if st.button("Compare…", icon=":material/compare_arrows:", key="run.compare"):
        ui.go("compare", runs=[run_id])


def status_header(r: dict) -> None:
    cols = st.columns([1.6, 1, 1, 1, 1, 1.2, 1.2])
    cols[0].metric(
        "Status",
        r["status"] + (" (cancelling)" if r["cancel_requested"] and r["status"] in logic.ACTIVE else ""),
    )
    cols[1].metric("Algorithm", r["algorithm"].upper())
    cols[2].metric(
        "tau",
        logic.format_number(r["config"].get("kl_coef")),
        help="kl_coef: tau for KLQ, the KL penalty coefficient for PPO",
    )
    cols[3].metric("Iteration", f"{r['iteration']}/{r['total_iterations'] or '?'}")
    cols[4].metric("ETA", logic.format_duration(logic.eta_seconds(r)) or "–")
    cols[5].metric(
        "Reward",
        logic.format_number(logic.latest_value(r, logic.REWARD_KEY)),
        help=f"{logic.REWARD_KEY}, latest",
    )
    cols[6].metric(
        "KL", logic.format_number(logic.latest_value(r, logic.KL_KEY)), help=f"{logic.KL_KEY}, latest"
    )
    if r.get("progress") is not None:
        st.progress(float(r["progress"]), text=f"{100 * r['progress']:.0f}% · {r['episodes']} episodes")
    if r["status"] == "failed" and r.get("error"):
        st.error("The run failed; see the Logs tab.")


def fetch_series(api: Client, run_id: int, keys: list[str], max_points: int, final: bool) -> dict:
    """The held series of this run, extended: keys not held yet in full (downsampled on the server),
    held keys by their tail only (since_step)."""
    state = st.session_state.get("run.series")
    sig = (api.identity, run_id, max_points)
    if not state or state["sig"] != sig:
        state = {"sig": sig, "data": {}, "complete": False, "requests": 0}
    data: dict[str, logic.SeriesData] = state["data"]
    for k in [k for k, d in data.items() if len(d) > 2 * max_points]:
        del data[k]  # a long-watched live run: fetch afresh, downsampled again
    new = [k for k in keys if k not in data]
    held = [k for k in keys if k in data]
    if new:
        for s in api.series([run_id], new, max_points=max_points, include_wall_time=True)["series"]:
            data[s["key"]] = logic.merge_series(None, s, None)
        state["requests"] += 1
    if held and not state["complete"]:
        since = logic.tail_since({k: data[k] for k in held})
        resp = api.series([run_id], held, max_points=max_points, since_step=since, include_wall_time=True)
        for s in resp["series"]:
            data[s["key"]] = logic.merge_series(data.get(s["key"]), s, since)
        state["requests"] += 1
    state["complete"] = final  # a finished run's points are all held now
    st.session_state["run.series"] = state
    return data


def curves(
    api: Client, run_id: int, live: bool, panels: list[str], smoothing: float, x: str, max_points: int
) -> None:
    try:
        r = api.get_run(run_id)
        keys = [k["key"] for k in api.metric_keys(run_id)]
    except APIError as err:
        ui.show_error(err)
        return
    final = r["status"] in logic.TERMINAL
    status_header(r)
    groups = logic.group_keys(keys)
    chosen = {p: groups[p] for p in panels if p in groups}
    wanted = [k for ks in chosen.values() for k in ks]
    if not wanted:
        st.info("No metrics yet." if not keys else "No metrics in the chosen panels.")
    else:
        try:
            data = fetch_series(api, run_id, wanted, max_points, final)
        except APIError as err:
            ui.show_error(err, "fetching metrics")
            return
        cols = st.columns(2)
        for i, (panel, ks) in enumerate(chosen.items()):
            with cols[i % 2], st.container(border=True):
                df = logic.series_frame(
                    [(r["name"], k, data[k]) for k in ks if k in data], x=x, smoothing=smoothing
                )
                if df.empty:
                    st.caption(f"{panel}: no points yet")
                    continue
                lines, band = logic.interval_bands(df)
                st.altair_chart(
                    ui.line_chart(lines, color="key", x=x, title=panel, smoothing=smoothing, band=band),
                    width="stretch",
                )
                st.caption(
                    " · ".join(
                        f"{k}: {len(data[k])} points"
                        + (f" (of {data[k].total_points})" if data[k].downsampled else "")
                        + f", last step {data[k].last_step}"
                        for k in ks
                        if k in data and len(data[k])
                    )
                )
    now = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
    st.caption(f"{'Live, every ' + str(REFRESH_S) + ' s' if live else 'Not live'} · updated {now}")
    if live and final:
        ui.clear_caches()
        st.rerun(scope="app")  # the run has finished: draw the page once more, without the timer


def fetch_log(api: Client, run_id: int, lines: int) -> dict:
    """The held tail of the run's log (its last ``lines`` lines), extended by the lines written since it
    was read (asked for by byte ``offset``); after a burst of more than a page, the tail is read afresh."""
    state = st.session_state.get("run.log")
    sig = (api.identity, run_id, lines)
    if not state or state["sig"] != sig:
        state = {"sig": sig, "lines": [], "offset": None, "earlier": False, "requests": 0}
    page = None
    if state["offset"] is not None:
        page = api.run_log(run_id, offset=state["offset"])
        state["requests"] += 1
        if page["truncated"]:
            page = None
        else:
            held = state["lines"] + page["lines"]
            state["lines"], state["earlier"] = held[-lines:], state["earlier"] or len(held) > lines
    if page is None:
        page = api.run_log(run_id, tail=lines)
        state["requests"] += 1
        state["lines"], state["earlier"] = page["lines"], page["start"] > 0
    state.update(offset=page["offset"], size=page["size"])
    st.session_state["run.log"] = state
    return state


def training_log(api: Client, run_id: int, live: bool, lines: int, newest_first: bool) -> None:
    try:
        final = live and api.get_run(run_id)["status"] in logic.TERMINAL
        log = fetch_log(api, run_id, lines)
    except APIError as err:
        st.session_state.pop("run.log", None)
        if err.status == 404:
            st.info(err.message)  # why there is none: not started yet, or not on this server's data dir
        else:
            ui.show_error(err, "the training log")
        return
    shown = log["lines"][::-1] if newest_first else log["lines"]
    if shown:
        ui.text_block("\n".join(shown), height=LOG_HEIGHT if len(shown) > 30 else None)
    else:
        st.caption("The log is empty so far.")
    now = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
    st.caption(
        f"{len(shown)} line(s) shown of {logic.format_bytes(log['size'])}"
        + (" (earlier lines: download the whole log)" if log["earlier"] else "")
        + f" · {'Live, every ' + str(REFRESH_S) + ' s' if live else 'Not live'} · updated {now}"
    )
    st.download_button(
        "Download the whole log",
        data=lambda rid=run_id: api.download_run_log(rid),
        file_name=f"klq-run-{run_id}-train.log",
        mime="text/plain",
        on_click="ignore",
        icon=":material/download:",
        key="run.log_dl",
    )
    if final:
        ui.clear_caches()
        st.rerun(scope="app")  # the run has finished: draw the page once more, without the timer


tab_curves, tab_config, tab_logs, tab_ckpt = st.tabs(
    ["Curves", "Config", "Logs", "Checkpoints"], key="run.tab", on_change="rerun"
)

with tab_curves:
    if tab_curves.open:  # only the open tab's work is done
        c = st.columns([3, 1, 1, 1, 1])
        all_panels = [name for name, _ in logic.PANELS] + ["Other"]
        panels = c[0].multiselect("Panels", all_panels, default=list(logic.DEFAULT_PANELS), key="run.panels")
        smoothing = c[1].slider("Smoothing (EMA)", 0.0, 0.99, 0.0, 0.01, key="run.smoothing")
        x = c[2].selectbox(
            "x-axis",
            ["step", "relative", "time"],
            key="run.x",
            format_func={"step": "step", "relative": "minutes since start", "time": "wall-clock time"}.get,
        )
        max_points = c[3].selectbox(
            "Points per curve",
            MAX_POINTS,
            index=1,
            key="run.max_points",
            help="Long series are downsampled on the server (MinMaxLTTB: spikes kept).",
        )
        live = c[4].toggle(
            "Live",
            value=True,
            key="run.live",
            disabled=not active,
            help=f"Fetch new points every {REFRESH_S} s while the run is queued or running.",
        )
        live = live and active
        st.fragment(run_every=REFRESH_S if live else None)(curves)(
            api, run_id, live, panels, smoothing, x, max_points
        )

with tab_config:
    if tab_config.open:  # only the open tab's work is done
        st.caption(
            f"Queue `{run['queue']}` · created {run['created_at']} · parent run "
            f"{run['parent_id'] if run['parent_id'] else '–'}"
        )
        st.code(yaml.safe_dump(run["config"], sort_keys=False), language="yaml")
        st.subheader("Provenance")
        provenance = logic.provenance_rows(run.get("provenance"))
        if provenance:
            st.caption("The code, libraries, device and host of the latest attempt's training process.")
            st.dataframe(
                pd.DataFrame({"": list(provenance.values())}, index=list(provenance)),
                width="stretch",
                key="run.provenance",
            )
        else:
            st.caption("Recorded when a worker starts training the run.")
        st.download_button(
            "Download config (JSON)",
            data=json.dumps(run["config"], indent=2),
            file_name=f"klq-run-{run_id}-config.json",
            mime="application/json",
            on_click="ignore",
            key="run.config_dl",
        )

with tab_logs:
    if tab_logs.open:  # only the open tab's work is done
        rows = {
            "status": run["status"],
            "attempts": run["attempts"],
            "created": run["created_at"],
            "started": run["started_at"],
            "finished": run["finished_at"],
            "last heartbeat": run["heartbeat_at"],
            "worker": run["worker_host"],
            "device": run["worker_gpu"],
            "cancel requested": run["cancel_requested"],
        }
        st.dataframe(
            pd.DataFrame({"": [str(v) if v is not None else "–" for v in rows.values()]}, index=list(rows)),
            width="stretch",
        )
        st.subheader("Error")
        if run.get("error"):
            ui.text_block(run["error"])
        else:
            st.caption("No error recorded.")
        st.subheader("Training log")
        c = st.columns([1, 1, 1, 2])
        log_lines = c[0].selectbox("Lines", LOG_LINES, index=1, key="run.log_lines")
        newest_first = c[1].toggle("Newest first", value=False, key="run.log_newest")
        log_live = c[2].toggle(
            "Live",
            value=True,
            key="run.log_live",
            disabled=not active,
            help=f"Fetch the lines written since, every {REFRESH_S} s, while the run is queued or running.",
        )
        log_live = log_live and active
        st.fragment(run_every=REFRESH_S if log_live else None)(training_log)(
            api, run_id, log_live, log_lines, newest_first
        )
        st.download_button(
            "Download all metrics (CSV)",
            data=lambda rid=run_id: api.export_metrics(rid, format="csv"),
            file_name=f"klq-run-{run_id}-metrics.csv",
            mime="text/csv",
            on_click="ignore",
            key="run.metrics_dl",
        )

with tab_ckpt:
    if tab_ckpt.open:  # only the open tab's work is done
        ckpts = ui.call(api.list_checkpoints, run_id, what="checkpoints") or []
        if not ckpts:
            st.caption("No checkpoints yet.")
        else:
            st.dataframe(
                pd.DataFrame(ckpts)[["id", "step", "is_final", "created_at", "path"]],
                hide_index=True,
                width="stretch",
            )
            by_id = {c["id"]: c for c in ckpts}
            cid = st.selectbox(
                "Checkpoint",
                list(by_id),
                key="run.ckpt",
                index=len(by_id) - 1,
                format_func=lambda i: (
                    f"step {by_id[i]['step']}" + (" (final)" if by_id[i]["is_final"] else "")
                ),
            )
            st.download_button(
                "Download policy (zip, Hugging Face layout)",
                data=lambda rid=run_id, c=cid: api.download_checkpoint(rid, c),
                file_name=f"klq-run-{run_id}-step-{by_id[cid]['step']}.zip",
                mime="application/zip",
                on_click="ignore",
                icon=":material/download:",
                key="run.ckpt_dl",
            )
