"""Experiments: KLQ against the other algorithms as one action (docs/EXPERIMENTS.md). The experiments with their status and
progress; a form for a new one (a base run configuration from a preset, edited as YAML; the grid of
algorithms x tau x seeds; the judge) with a preview of the runs it will queue; and an experiment's page
(``?experiment=ID``): status, progress, compute, the results per tau with 95% CIs (failed runs listed
with their reasons), win-rates, every run's reward vs KL with each algorithm's Pareto frontier,
seed-averaged curves with their min-max band, and CSV/JSON downloads. Live while it is active."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd
import streamlit as st
import yaml

from frontend import logic, ui
from klq.client import APIError, Client

PAGE_SIZE = 50
REFRESH_S = 5
DEFAULT_QUEUE = "(server default)"
CURVE_KEYS = (logic.REWARD_KEY, logic.KL_KEY, logic.RLHF_KEY, logic.GOLD_KEY, "eval/scores", "eval/kl")
FORM_DEFAULTS = {
    "experiments.name": "",
    "experiments.tags": "",
    "experiments.notes": "",
    "experiments.queue": DEFAULT_QUEUE,
    "experiments.base_yaml": "",
    "experiments.kl_coefs": "0.02, 0.05",
    "experiments.seeds": "1, 2",
    "experiments.num_generations": None,
    "experiments.judge_enabled": True,
    "experiments.judge_backend": "gold",
    "experiments.judge_prompts": 32,
    "experiments.judge_model": "",
    "experiments.judge_decoding": "greedy",
}

api = ui.client()
ALGORITHMS = ui.call(ui.algorithms, api, what="algorithms") or []  # the server's (GET /algorithms)
LABELS = logic.algorithm_labels(ALGORITHMS)
# the grid's default: every algorithm the server has (KLQ is judged against each other one)
FORM_DEFAULTS["experiments.algorithms"] = [a["name"] for a in ALGORITHMS]


def open_experiment(experiment_id: int | None) -> None:
    """Show an experiment's page (None: the list), kept in the URL as ?experiment=ID."""
    if experiment_id is None:
        st.query_params.pop("experiment", None)
    else:
        st.query_params["experiment"] = str(experiment_id)


# --- the list --------------------------------------------------------------------------------------------


def experiment_list() -> None:
    page_no = int(st.session_state.get("experiments.page", 1))
    data = ui.call(ui.experiments_page, api, PAGE_SIZE, (page_no - 1) * PAGE_SIZE, what="listing experiments")
    if data is None:
        return
    items = data["items"]
    if not items:
        st.info("No experiments yet: create one in the 'New experiment' tab.")
        return
    frame = logic.experiments_frame(items, LABELS)
    st.session_state["experiments.ids"] = list(frame["id"])

    def selected() -> None:
        rows = st.session_state["experiments.table"].selection.rows
        ids = st.session_state.get("experiments.ids", [])
        if rows and rows[0] < len(ids):
            open_experiment(ids[rows[0]])

    st.dataframe(
        frame,
        key="experiments.table",
        on_select=selected,
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        column_config={
            "id": st.column_config.NumberColumn("id", width="small", format="%d"),
            "progress": st.column_config.ProgressColumn(
                "progress",
                min_value=0.0,
                max_value=1.0,
                format="percent",
                help="runs and judgements finished",
            ),
            "run-hours": st.column_config.NumberColumn("run-hours", format="%.2f"),
            "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        },
    )
    pages = max(1, -(-data["total"] // PAGE_SIZE))
    by_id = {e["id"]: e for e in items}
    with st.container(horizontal=True, vertical_alignment="bottom"):
        choice = st.selectbox(
            "Experiment",
            list(by_id),
            key="experiments.pick",
            format_func=lambda i: f"#{i} {by_id[i]['name']} ({by_id[i]['status']})",
            width=400,
        )
        if st.button("Open", icon=":material/science:", key="experiments.open"):
            open_experiment(choice)
            st.rerun()
        if st.button("◀ Previous", disabled=page_no <= 1, key="experiments.prev"):
            st.session_state["experiments.page"] = page_no - 1
            st.rerun()
        if st.button("Next ▶", disabled=page_no >= pages, key="experiments.next"):
            st.session_state["experiments.page"] = page_no + 1
            st.rerun()
        if st.button("Refresh", icon=":material/refresh:", key="experiments.refresh"):
            ui.clear_caches()
            st.rerun()
    st.caption(f"{data['total']} experiment(s) · page {page_no} of {pages} · select a row to open it")


# --- a new experiment ------------------------------------------------------------------------------------


def on_preset() -> None:
    config = ui.presets().get(st.session_state["experiments.preset"], {})
    st.session_state["experiments.base_yaml"] = yaml.safe_dump(config, sort_keys=False) if config else ""


def request() -> tuple[dict | None, list[str]]:
    """The body of POST /experiments from the form, or None and the problems found before asking the
    server (YAML syntax, numbers); the server validates the rest."""
    state = st.session_state
    base, problem = logic.parse_config_yaml(state["experiments.base_yaml"])
    problems = [f"base configuration: {problem}"] if problem else []
    kl_coefs, bad = logic.parse_kl_coefs(state["experiments.kl_coefs"])
    problems += [f"tau values: {p}" for p in bad]
    seeds, bad = logic.parse_seeds(state["experiments.seeds"])
    problems += [f"seeds: {p}" for p in bad]
    if problems:
        return None, problems
    judge = {
        "enabled": bool(state["experiments.judge_enabled"]),
        "backend": state["experiments.judge_backend"],
        "num_prompts": int(state["experiments.judge_prompts"]),
        "decoding": state["experiments.judge_decoding"],
    }
    if model := (state["experiments.judge_model"] or "").strip():
        judge["model"] = model
    queue = state["experiments.queue"] or DEFAULT_QUEUE
    body = {
        "base": base,
        "grid": {
            "algorithms": list(state["experiments.algorithms"]),
            "kl_coefs": kl_coefs,
            "seeds": seeds,
            "num_generations": state["experiments.num_generations"],
        },
        "judge": judge,
        "name": (state["experiments.name"] or "").strip() or None,
        "tags": [t.strip() for t in (state["experiments.tags"] or "").split(",") if t.strip()],
        "notes": state["experiments.notes"] or "",
        "queue": None if queue == DEFAULT_QUEUE else queue.strip(),
    }
    return body, []


def create(body: dict) -> None:
    body = dict(body)
    base, grid = body.pop("base"), body.pop("grid")
    try:
        created = api.create_experiment(base, grid, **body)
    except APIError as err:
        st.session_state["experiments.create_error"] = err
        return
    st.session_state.pop("experiments.create_error", None)
    st.session_state["experiments.notice"] = (
        f"Experiment {created['id']} ({ui.md_escape(created['name'])}) queued: "
        f"{len(created['runs'])} run(s) on '{created['queue']}'."
    )
    st.session_state["experiments.created"] = created["id"]
    ui.clear_caches()


def new_experiment() -> None:
    for key, value in FORM_DEFAULTS.items():
        st.session_state.setdefault(key, value)
    with st.container(border=True):
        st.subheader("Experiment")
        c = st.columns(3)
        c[0].text_input(
            "name", key="experiments.name", max_chars=200, placeholder="(default: experiment-<time>)"
        )
        queues = [DEFAULT_QUEUE, "gpu", "cpu"]
        if st.session_state["experiments.queue"] not in queues:
            queues.append(st.session_state["experiments.queue"])
        c[1].selectbox(
            "queue",
            queues,
            key="experiments.queue",
            accept_new_options=True,
            help="The worker queue of its runs and judgements: GPU workers listen on 'gpu', CPU workers "
            "on 'cpu'.",
        )
        c[2].text_input("tags (comma-separated)", key="experiments.tags", help="given to each of its runs")
        st.text_area("notes", key="experiments.notes", height=68)

    with st.container(border=True):
        st.subheader("Base configuration")
        st.caption(
            "Every run of the grid is this configuration with its own algorithm, kl_coef (tau) and seed: "
            "same task, prompts, models, episodes, batch sizes, response length and learning rate."
        )
        st.selectbox(
            "Start from",
            list(ui.presets()),
            key="experiments.preset",
            on_change=on_preset,
            index=None,
            placeholder="a preset configuration…",
            help="Paper defaults are for 1B-parameter models; the configs/*.yaml presets are tuned for "
            "the built-in task on a CPU.",
        )
        st.text_area(
            "Run configuration (YAML; fields left out take the paper's defaults)",
            key="experiments.base_yaml",
            height=260,
            placeholder="(empty: the paper's defaults)",
        )

    with st.container(border=True):
        st.subheader("Grid and judge")
        c = st.columns(3)
        c[0].multiselect(
            "algorithms",
            list(LABELS),
            key="experiments.algorithms",
            format_func=lambda name: logic.algorithm_label(name, LABELS),
        )
        c[1].text_input(
            "tau values (kl_coef)",
            key="experiments.kl_coefs",
            help="1-8 distinct positive values, separated by commas or spaces",
        )
        c[2].text_input(
            "seeds", key="experiments.seeds", help="1-16 distinct integers: '1, 2, 3' or a range '1-3'"
        )
        grouped = [a["label"] for a in ALGORITHMS if a.get("min_generations", 1) >= 2]
        if grouped:
            st.number_input(
                f"responses per prompt for {', '.join(grouped)}",
                min_value=2,
                max_value=64,
                step=1,
                key="experiments.num_generations",
                placeholder="(default: the base's rollout.num_generations if at least 2, else 4)",
                help="These algorithms' baselines compare the responses to the same prompt. train.batch_size "
                "counts responses, so every run of the grid trains on as many responses per iteration.",
            )
        c = st.columns(4)
        c[0].checkbox(
            "judge when the runs finish",
            key="experiments.judge_enabled",
            help="KLQ against each other algorithm per tau and seed, and each run against its SFT policy",
        )
        c[1].selectbox(
            "judge backend",
            ui.JUDGE_BACKENDS,
            key="experiments.judge_backend",
            help="gold: the built-in task's gold reward; reward_model / local_hf: a model on the worker; "
            "openai: the server's OpenAI-compatible endpoint (KLQ_JUDGE_*)",
        )
        c[2].number_input("held-out prompts", 1, 5000, key="experiments.judge_prompts", step=1)
        c[3].selectbox("decoding", ["greedy", "sampled"], key="experiments.judge_decoding")
        st.text_input(
            "judge model (optional)",
            key="experiments.judge_model",
            help="openai: the model name; local_hf / reward_model: builtin:<name>, a path under the model "
            "roots, or a hub id if the server allows them",
        )

    body, problems = request()
    st.subheader("Preview")
    preview = None
    if problems:
        st.error("Fix these first:\n" + "\n".join(f"- {ui.md_escape(p)}" for p in problems))
    else:
        try:
            preview = ui.experiment_preview(api, json.dumps(body, sort_keys=True))
        except APIError as err:
            ui.show_error(err, "the API refused the experiment")
    if preview is not None:
        judged = f"then {preview['judgements']} judgement(s)" if body["judge"]["enabled"] else "no judging"
        st.caption(f"{len(preview['runs'])} run(s) will be queued, {judged} once they have all finished.")
        st.dataframe(
            logic.preview_frame(preview, LABELS),
            hide_index=True,
            width="stretch",
            column_config={
                "tau": st.column_config.NumberColumn("tau", format="%g"),
                "learning_rate": st.column_config.NumberColumn("learning_rate", format="%g"),
            },
        )
    if err := st.session_state.get("experiments.create_error"):
        ui.show_error(err, "creating the experiment")
    st.button(
        "Create experiment",
        type="primary",
        icon=":material/science:",
        disabled=preview is None,
        on_click=create,
        args=(body,),
        key="experiments.create",
    )


# --- one experiment --------------------------------------------------------------------------------------


def status_header(e: dict) -> None:
    p, compute = e["progress"], e["compute"]
    cols = st.columns([1.4, 1, 1, 1, 1, 1])
    cancelling = e["cancel_requested"] and e["status"] in logic.EXPERIMENT_ACTIVE
    cols[0].metric("Status", e["status"] + (" (cancelling)" if cancelling else ""))
    cols[1].metric(
        "Runs finished",
        f"{p['runs_finished']}/{p['runs_total']}",
        help=f"{p['runs_failed']} failed or cancelled" if p["runs_failed"] else None,
    )
    cols[2].metric(
        "Judgements",
        f"{p['judgements_finished']}/{p['judgements_total']}",
        help="queued once every run has finished",
    )
    cols[3].metric("Run-hours", logic.format_hours(compute["run_hours"]), help="sum of the run durations")
    cols[4].metric(
        "GPU-hours", logic.format_hours(compute["gpu_hours"]), help="duration x GPUs of the runs on GPUs"
    )
    cols[5].metric(
        "Wall-clock",
        logic.format_duration(compute["wall_clock_s"]) or "–",
        help="first start to last finish (to now while running)",
    )
    st.progress(
        logic.experiment_progress(p),
        text=f"runs {p['runs_finished']}/{p['runs_total']}"
        + (f" ({p['runs_failed']} failed)" if p["runs_failed"] else "")
        + f" · judgements {p['judgements_finished']}/{p['judgements_total']}",
    )
    if e.get("error"):
        st.error(f"The experiment {e['status']}:", icon=":material/error:")
        ui.text_block(e["error"])


def results_section(eid: int, results: dict) -> None:
    table = logic.results_frame(results, LABELS)
    if table.empty:
        st.info("No results yet.")
        return
    st.caption(
        "Final values at each run's last logged step; mean over the succeeded seeds with its Student-t "
        "95% interval (none with one seed). Failed or cancelled runs are listed with their reasons. "
        f"Numerical convention: {results.get('convention', 'klq-lab')} (docs/ALGORITHMS-CONVENTIONS.md)."
    )
    metric_format = {
        label: st.column_config.NumberColumn(label, format="%.4g") for _, label in logic.RESULT_METRICS
    }
    for tau, rows in table.groupby("tau", sort=True):
        st.markdown(f"**τ = {tau:g}**")
        st.dataframe(rows.drop(columns="tau"), hide_index=True, width="stretch", column_config=metric_format)
        failed = [f for r in results["rows"] if r["kl_coef"] == tau for f in r["failed"]]
        if failed:
            st.warning(
                f"{len(failed)} run(s) at τ = {tau:g} failed or were cancelled: see the 'failed' column "
                "and the Runs tab.",
                icon=":material/warning:",
            )

    st.subheader("Win-rates")
    rates = logic.win_rates_frame(results, LABELS)
    if rates.empty:
        st.caption("No judgements yet: they are queued once every run has finished.")
    else:
        pairings = {logic.comparison_label(w, LABELS) for w in results["win_rates"] if w["kind"] != "vs_sft"}
        headline = rates[rates["comparison"].isin(pairings)].to_dict("records")
        cols = st.columns(max(4, len(headline))) if headline else []
        for col, w in zip(cols, headline):
            col.metric(
                f"{w['comparison']}, τ = {w['tau']:g}",
                "–" if pd.isna(w["win rate"]) else f"{100 * w['win rate']:.1f}%",
                help="KLQ's win-rate against the other algorithm at this tau, pooled over seeds (ties count half)",
            )
            col.caption(
                f"95% CI {w['95% CI']} · {w['wins']} wins, {w['losses']} losses, {w['ties']} ties"
                + (f" · {w['pending']} pending" if w["pending"] else "")
            )
        if rates["win rate"].notna().any():
            st.altair_chart(ui.win_rate_chart(rates), width="stretch")
        st.dataframe(
            rates.drop(columns=["ci_low", "ci_high"]),
            hide_index=True,
            width="stretch",
            column_config={
                "win rate": st.column_config.NumberColumn(
                    "win rate", format="percent", help="of the first side; ties count half"
                ),
                "95% CI": st.column_config.TextColumn("95% CI", help="Wilson score interval"),
                "length-controlled": st.column_config.TextColumn(
                    "length-controlled", help=ui.LC_HELP + " 95% bootstrap interval over prompts."
                ),
                "words A / B": st.column_config.TextColumn(
                    "words A / B", help="mean response length of each side, in words"
                ),
            },
        )
        st.caption(
            "Pooled over seeds: KLQ against each other algorithm at the same tau, and each policy against its "
            "SFT policy. Length-controlled: what the judge would prefer if both responses had the same length."
        )
    skipped = logic.not_judged_frame(results, LABELS)
    if not skipped.empty:
        st.caption(f"Not judged ({len(skipped)}): a run of the pair failed or was cancelled.")
        st.dataframe(skipped, hide_index=True, width="stretch")

    st.subheader("Reward vs KL")
    points = logic.experiment_points_frame(results, LABELS)
    plotted = points.dropna(subset=["kl", "reward"])
    if plotted.empty:
        st.caption("No run has a final reward and KL yet.")
    else:
        st.altair_chart(
            ui.tradeoff_chart(
                points,
                reward_label=f"reward ({logic.REWARD_KEY}, final)",
                kl_label=f"KL ({logic.KL_KEY}, final)",
                frontier=logic.frontier_lines(results, LABELS),
            ),
            width="stretch",
        )
    missing = points[points["kl"].isna() | points["reward"].isna()]
    st.caption(
        f"{len(plotted)} run(s) plotted, {int(points['on_frontier'].sum())} on their algorithm's Pareto "
        "frontier (no other run of that algorithm has both lower KL and higher reward)"
        + (f"; not plotted (no final KL or reward): {', '.join(missing['run'])}" if len(missing) else "")
        + "."
    )

    c = st.columns(2)
    c[0].download_button(
        "Download results (CSV)",
        data=lambda: api.experiment_results_csv(eid),
        file_name=f"klq-experiment-{eid}-results.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
        key="experiments.csv",
    )
    c[1].download_button(
        "Download results (JSON)",
        data=json.dumps(results, indent=2),
        file_name=f"klq-experiment-{eid}-results.json",
        mime="application/json",
        on_click="ignore",
        icon=":material/download:",
        key="experiments.json",
    )


def curves_section(eid: int) -> None:
    c = st.columns([3, 1])
    keys = c[0].multiselect(
        "Metrics", CURVE_KEYS, default=[logic.REWARD_KEY, logic.KL_KEY], key="experiments.curve_keys"
    )
    max_points = c[1].selectbox("Points per curve", [200, 500, 1000], index=1, key="experiments.max_points")
    cols = st.columns(2)
    for i, key in enumerate(keys):
        with cols[i % 2], st.container(border=True):
            curves = ui.call(ui.experiment_curves, api, eid, key, max_points, what=key)
            df = logic.curves_frame(curves or {}, LABELS)
            if df.empty:
                st.caption(f"{key}: no points yet")
                continue
            st.altair_chart(ui.band_chart(df, title=f"{key}: mean over seeds, min-max band"), width="stretch")


def runs_section(e: dict) -> None:
    st.dataframe(
        logic.experiment_runs_frame(e, LABELS),
        hide_index=True,
        width="stretch",
        column_config={"tau": st.column_config.NumberColumn("tau", format="%g")},
    )
    ids = [r["run_id"] for r in e["runs"]]
    with st.container(horizontal=True):
        if st.button("Compare its runs", icon=":material/compare_arrows:", key="experiments.compare"):
            ui.go("compare", runs=ids[:20])
        if st.button("Runs page", icon=":material/table_rows:", key="experiments.runs"):
            ui.go("runs")
        if st.button("Leaderboard", icon=":material/leaderboard:", key="experiments.leaderboard"):
            ui.go("leaderboard", experiment=e["id"])
    for r in e["runs"]:
        if r.get("error"):
            with st.expander(f"#{r['run_id']} {r['name']}: {r['status']}"):
                ui.text_block(r["error"])
    if e["judgements"]:
        st.subheader("Judgements")
        rows = [
            {
                "id": j["judgement_id"],
                "comparison": logic.comparison_label(j, LABELS),
                "tau": j["kl_coef"],
                "seed": j["seed"],
                "A": j["run_a"],
                "B": j["run_b"],
                "status": j["status"],
                "progress": logic.judgement_progress(j),
                "error": j.get("error") or "",
            }
            for j in e["judgements"]
        ]
        st.dataframe(
            rows,
            hide_index=True,
            width="stretch",
            column_config={
                "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
                "tau": st.column_config.NumberColumn("tau", format="%g"),
            },
        )


def config_section(e: dict) -> None:
    g = e["grid"]
    st.caption(
        f"Grid: {', '.join(logic.algorithm_label(a, LABELS) for a in g['algorithms'])} x tau "
        f"{', '.join(f'{t:g}' for t in g['kl_coefs'])} x seeds {', '.join(map(str, g['seeds']))} · "
        f"queue `{e['queue']}` · created {e['created_at']}"
    )
    st.markdown("**Base configuration**")
    st.code(yaml.safe_dump(e["base"], sort_keys=False), language="yaml")
    st.markdown("**Judge**")
    st.code(yaml.safe_dump(e["judge"], sort_keys=False), language="yaml")
    if e.get("notes"):
        st.markdown("**Notes**")
        ui.text_block(e["notes"])


def experiment_view(api: Client, eid: int, live: bool) -> None:
    try:
        e = ui.experiment_detail(api, eid)
        results = ui.experiment_results(api, eid)
    except APIError as err:
        ui.show_error(err, f"experiment {eid}")
        return
    st.header(f"#{eid} {e['name']}")
    status_header(e)
    active = e["status"] in logic.EXPERIMENT_ACTIVE
    with st.container(horizontal=True):
        if (
            st.button(
                "Cancel experiment",
                icon=":material/stop_circle:",
                disabled=not active or e["cancel_requested"],
                key="experiments.cancel",
            )
            and ui.call(api.cancel_experiment, eid, what="cancel") is not None
        ):
            ui.clear_caches()
            st.rerun(scope="app")
        if st.button("Refresh", icon=":material/refresh:", key="experiments.detail_refresh"):
            ui.clear_caches()
            st.rerun(scope="app")

    tabs = st.tabs(
        ["Results", "Curves", "Runs", "Configuration"], key="experiments.detail_tab", on_change="rerun"
    )
    for tab, draw in zip(
        tabs,
        (
            lambda: results_section(eid, results),
            lambda: curves_section(eid),
            lambda: runs_section(e),
            lambda: config_section(e),
        ),
    ):
        with tab:
            if tab.open:  # only the open tab's work is done
                draw()

    with st.expander("Delete"):
        st.warning(
            "Deletes the experiment with its runs (metrics, samples, checkpoint records) and judgements."
        )
        confirm = st.checkbox(f"Yes, delete experiment #{eid}", key="experiments.delete_confirm")
        force = False
        if active:
            force = st.checkbox(
                "It is still active: delete it without waiting for its runs to stop",
                key="experiments.delete_force",
            )
        if st.button("Delete", type="primary", disabled=not confirm, key="experiments.delete"):
            try:
                api.delete_experiment(eid, force=force)
            except APIError as err:
                ui.show_error(err, f"deleting experiment {eid}")
            else:
                ui.clear_caches()
                st.session_state["experiments.notice"] = f"Deleted experiment {eid}."
                open_experiment(None)
                st.rerun(scope="app")

    now = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
    st.caption(f"{'Live, every ' + str(REFRESH_S) + ' s' if live else 'Not live'} · updated {now}")
    if live and not active:
        ui.clear_caches()
        st.rerun(scope="app")  # it has finished: draw the page once more, without the timer


# --- page ------------------------------------------------------------------------------------------------

if created := st.session_state.pop("experiments.created", None):
    open_experiment(created)

st.title("Experiments")
if notice := st.session_state.pop("experiments.notice", None):
    st.success(notice)

wanted = ui.query_ids("experiment")
if wanted:
    if st.button("All experiments", icon=":material/arrow_back:", key="experiments.back"):
        open_experiment(None)
        st.rerun()
    try:
        first = ui.experiment_detail(api, wanted[0])
    except APIError as err:
        ui.show_error(err, f"experiment {wanted[0]}")
        st.stop()
    live = first["status"] in logic.EXPERIMENT_ACTIVE
    st.fragment(run_every=REFRESH_S if live else None)(experiment_view)(api, wanted[0], live)
    st.stop()

tab_list, tab_new = st.tabs(["Experiments", "New experiment"], key="experiments.tab", on_change="rerun")
with tab_list:
    if tab_list.open:  # only the open tab's work is done
        experiment_list()
with tab_new:
    if tab_new.open:
        new_experiment()
