"""Compare: any runs' curves overlaid; reward vs KL with the Pareto frontier across runs (the KLQ paper's
trade-off plot: each run's final, or mean of its last N, reward against its KL); and the config diff of
the runs, showing only the fields that differ."""

from __future__ import annotations

import streamlit as st

from frontend import logic, ui
from klq.client import APIError

DEFAULT_KEYS = (logic.REWARD_KEY, logic.GOLD_KEY, logic.KL_KEY, logic.RLHF_KEY)
REWARD_KEYS = (logic.REWARD_KEY, logic.GOLD_KEY, "eval/scores", "eval/gold_scores", logic.RLHF_KEY)
KL_KEYS = (logic.KL_KEY, "eval/kl")
FRONTIER_SCOPE_LIMIT = 200

api = ui.client()
labels = logic.algorithm_labels(ui.call(ui.algorithms, api, what="algorithms") or [])  # GET /algorithms
st.title("Compare runs")
run_ids = ui.pick_runs(api, key="compare.runs", max_selections=20)
if not run_ids:
    st.caption("Pick runs to compare.")
    st.stop()

details = {}
for rid in run_ids:
    try:
        details[rid] = ui.run_detail(api, rid)
    except APIError as err:
        ui.show_error(err, f"run {rid}")
labels = {rid: f"#{rid} {d['name']}" for rid, d in details.items()}
run_ids = [r for r in run_ids if r in details]

tab_curves, tab_tradeoff, tab_diff = st.tabs(
    ["Curves", "Reward vs KL", "Config diff"], key="compare.tab", on_change="rerun"
)

with tab_curves:
    if tab_curves.open:  # only the open tab's work is done
        all_keys = sorted({k for d in details.values() for k in d["latest"]} - logic.HIDDEN_KEYS)
        default = [k for k in DEFAULT_KEYS if k in all_keys]
        c = st.columns([3, 1, 1, 1])
        keys = c[0].multiselect("Metrics", all_keys, default=default, key="compare.keys")
        smoothing = c[1].slider("Smoothing (EMA)", 0.0, 0.99, 0.0, 0.01, key="compare.smoothing")
        x = c[2].selectbox(
            "x-axis",
            ["step", "relative"],
            key="compare.x",
            format_func={"step": "step", "relative": "minutes since start"}.get,
        )
        max_points = c[3].selectbox("Points per curve", [500, 1000, 2000], index=0, key="compare.max_points")
        if keys:
            got = (
                ui.call(ui.series, api, tuple(run_ids), tuple(keys), max_points, what="fetching metrics")
                or []
            )
            by_key: dict[str, list] = {}
            for s in got:
                by_key.setdefault(s["key"], []).append(
                    (labels[s["run_id"]], s["key"], logic.merge_series(None, s, None))
                )
            cols = st.columns(2)
            for i, key in enumerate(keys):
                with cols[i % 2], st.container(border=True):
                    df = logic.series_frame(by_key.get(key, []), x=x, smoothing=smoothing)
                    if df.empty:
                        st.caption(f"{key}: no points")
                        continue
                    st.altair_chart(
                        ui.line_chart(df, color="run", x=x, title=key, smoothing=smoothing), width="stretch"
                    )

with tab_tradeoff:
    if tab_tradeoff.open:  # only the open tab's work is done
        c = st.columns([2, 2, 1, 2])
        reward_key = c[0].selectbox("Reward", REWARD_KEYS, key="compare.reward_key")
        kl_key = c[1].selectbox("KL", KL_KEYS, key="compare.kl_key")
        last_n = c[2].number_input("Mean of last N points", 1, 1000, 10, key="compare.last_n")
        scope = c[3].radio(
            "Runs",
            ["selected", "all"],
            horizontal=True,
            key="compare.scope",
            format_func={
                "selected": "the selected runs",
                "all": f"all runs (newest {FRONTIER_SCOPE_LIMIT})",
            }.get,
        )
        if scope == "all":
            page = ui.call(
                ui.runs_page,
                api,
                limit=FRONTIER_SCOPE_LIMIT,
                latest=(reward_key, kl_key),
                what="listing runs",
            )
            pool = page["items"] if page else []
        else:
            pool = [details[r] for r in run_ids]
        configs = ui.run_configs(api, pool)

        def spec(run: dict, key: str) -> tuple[int, int, int] | None:
            latest = (run.get("latest") or {}).get(key)
            if latest is None:
                return None
            stride = (configs.get(run["id"]) or {}).get("eval_interval", 1) if key.startswith("eval/") else 1
            return (run["id"], latest["step"], int(stride or 1))

        values: dict[str, dict[int, float]] = {}
        for key in (reward_key, kl_key):
            specs = tuple(s for s in (spec(r, key) for r in pool) if s is not None)
            values[key] = (
                (ui.call(ui.final_values, api, specs, key, int(last_n), what=key) or {}) if specs else {}
            )
        rows = [
            {
                "run_id": r["id"],
                "run": f"#{r['id']} {r['name']}",
                "algorithm": logic.algorithm_label(r["algorithm"], labels),
                "tau": (configs.get(r["id"]) or {}).get("kl_coef"),
                "status": r["status"],
                "kl": values[kl_key].get(r["id"]),
                "reward": values[reward_key].get(r["id"]),
            }
            for r in pool
        ]
        df = logic.tradeoff_frame(rows)
        plotted = df.dropna(subset=["kl", "reward"])
        if plotted.empty:
            st.info(f"No run has both {reward_key} and {kl_key} yet.")
        else:
            st.altair_chart(
                ui.tradeoff_chart(
                    df,
                    reward_label=f"{reward_key} (mean of last {last_n})",
                    kl_label=f"{kl_key} (mean of last {last_n})",
                ),
                width="stretch",
            )
            st.caption(
                f"{len(plotted)} run(s) plotted, {int(df['on_frontier'].sum())} on the Pareto frontier "
                "(no other run has both lower KL and higher reward)."
            )
        st.dataframe(
            df.sort_values(["on_frontier", "kl"], ascending=[False, True]),
            hide_index=True,
            width="stretch",
            column_config={
                "kl": st.column_config.NumberColumn(kl_key, format="%.4f"),
                "reward": st.column_config.NumberColumn(reward_key, format="%.4f"),
            },
        )
        st.download_button(
            "Download points (CSV)",
            df.to_csv(index=False),
            file_name="klq-reward-vs-kl.csv",
            mime="text/csv",
            on_click="ignore",
            key="compare.tradeoff_dl",
        )

with tab_diff:
    if tab_diff.open:  # only the open tab's work is done
        if len(run_ids) < 2:
            st.caption("Pick at least two runs to diff their configs.")
        else:
            diff = logic.config_diff({labels[r]: details[r]["config"] for r in run_ids})
            if diff.empty:
                st.success("The configs are identical.")
            else:
                st.caption(f"{len(diff)} field(s) differ; all others are equal.")
                st.dataframe(diff, width="stretch")
