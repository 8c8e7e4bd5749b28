"""Samples & judgements: the same prompts side by side for several runs at chosen steps, with scores,
KL and a word-level diff against a baseline run; every token of a sample coloured by a per-token quantity
(k1, entropy, advantage, ...), alone or for the same prompt of two runs on one colour scale; one prompt
across a run's steps; the training rollouts of a step, sorted and filtered; the judge's verdicts and raw output where a judgement of
the runs exists; launching a judgement, watching its progress, and its win-rate with the 95% CI next to
its length diagnostics (length-controlled win-rate, mean lengths, win-rate by length difference) and its
agreement with human votes on the same pairs (the Vote page collects them).

Generated text is shown as text only (code blocks and tables), never as HTML or Markdown."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from frontend import logic, ui
from klq.client import APIError, Client

PAGE_SIZE = 10
# the compare endpoint's sort: by prompt id, or where the runs disagree most first (a prompt's largest minus
# smallest value over the runs)
COMPARE_ORDERS = {
    "prompt_id": "prompt id",
    "-score_spread": "scores differ most",
    "-gold_spread": "gold scores differ most",
    "-kl_spread": "KL differs most",
    "-length_spread": "lengths differ most",
}
LATEST = "latest"

api = ui.client()
st.title("Samples & judgements")
if notice := st.session_state.pop("samples.notice", None):
    st.success(notice)

run_ids = ui.pick_runs(api, key="samples.runs", max_selections=10, default_count=2)
if not run_ids:
    st.stop()
names = ui.names_of(api, run_ids)
tab_samples, tab_tokens, tab_steps, tab_train, tab_judgements = st.tabs(
    ["Side by side", "Tokens", "Across steps", "Training rollouts", "Judgements"],
    key="samples.tab",
    on_change="rerun",
)


def verdict_text(vs: list) -> str:
    outcome = logic.prompt_outcome(vs)
    return {"A": "A wins", "B": "B wins", "tie": "tie", "invalid": "invalid"}[outcome]


# --- side by side ----------------------------------------------------------------------------------------

with tab_samples:
    if tab_samples.open:  # only the open tab's work is done
        steps: dict[int, int | None] = {}
        cols = st.columns(min(len(run_ids), 5))
        for i, rid in enumerate(run_ids):
            available = [s["step"] for s in ui.call(ui.sample_steps, api, rid) or []]
            with cols[i % len(cols)]:
                choice = st.selectbox(
                    f"Step of #{rid} {ui.md_escape(names[rid])}",
                    [LATEST, *reversed(available)],
                    key=f"samples.step.{rid}",
                    format_func=lambda s: "latest" if s == LATEST else f"step {s}",
                )
                if not available:
                    st.caption("no samples yet")
            steps[rid] = None if choice == LATEST else int(choice)

        c = st.columns([2, 2, 2, 1])
        baseline = c[0].selectbox(
            "Diff against", run_ids, key="samples.baseline", format_func=lambda r: f"#{r} {names[r]}"
        )
        mode = c[1].radio(
            "Prompts",
            ["intersection", "union"],
            horizontal=True,
            key="samples.mode",
            format_func={"intersection": "those all runs have", "union": "all"}.get,
        )
        order = c[2].selectbox(
            "Order",
            list(COMPARE_ORDERS),
            key="samples.order",
            format_func=COMPARE_ORDERS.get,
            disabled=len(run_ids) < 2,
        )
        page = int(c[3].number_input("Page", 1, 100000, 1, key="samples.page"))

        try:
            if len(run_ids) >= 2:
                step_arg = [steps[r] for r in run_ids] if any(steps[r] is not None for r in run_ids) else None
                if step_arg is not None and any(s is None for s in step_arg):
                    latest = {r: max([s["step"] for s in ui.sample_steps(api, r)] or [0]) for r in run_ids}
                    step_arg = [steps[r] if steps[r] is not None else latest[r] for r in run_ids]
                cmp = api.compare_samples(
                    run_ids, step_arg, mode=mode, sort=order, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
                )
            else:
                rid = run_ids[0]
                step = steps[rid]
                if step is None:
                    available = [s["step"] for s in ui.sample_steps(api, rid)]
                    step = available[-1] if available else None
                got = (
                    api.list_samples(rid, step=step, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
                    if step is not None
                    else {"items": [], "total": 0}
                )
                cmp = {
                    "runs": [{"run_id": rid, "step": step}],
                    "total": got["total"],
                    "items": [
                        {"prompt_id": s["prompt_id"], "prompt": s["prompt"], "samples": [s]}
                        for s in got["items"]
                    ],
                }
        except APIError as err:
            ui.show_error(err, "samples")
            st.stop()

        # verdicts of a judgement between two of these runs, matched to the prompts by prompt id
        judgements = [
            j
            for j in ui.call(ui.judgements_for, api, tuple(run_ids)) or []
            if j["run_a"] in run_ids and (j["run_b"] in run_ids or j["run_b"] is None)
        ]
        verdicts: dict[str, list] = {}
        judgement = None
        if judgements:
            # the newest automatic judgement with verdicts, else the newest with any (human votes)
            best = next(
                (i for i, j in enumerate(judgements) if j["completed"] and not logic.is_human(j)),
                next((i for i, j in enumerate(judgements) if j["completed"]), 0),
            )
            jid = st.selectbox(
                "Show verdicts of",
                [0, *[j["id"] for j in judgements]],
                index=1 + best,
                key="samples.judgement",
                format_func=lambda i: (
                    "no judgement"
                    if not i
                    else logic.judgement_label(next(j for j in judgements if j["id"] == i), names)
                ),
            )
            if jid:
                judgement = next(j for j in judgements if j["id"] == jid)
                try:
                    verdicts = logic.verdicts_by_prompt(ui.verdicts(api, jid, judgement["completed"]))
                except APIError as err:
                    ui.show_error(err, "verdicts")

        st.caption(
            f"{cmp['total']} prompt(s) · page {page} of {max(1, -(-cmp['total'] // PAGE_SIZE))} · "
            + ", ".join(
                f"#{r['run_id']} at step {r['step'] if r['step'] is not None else '–'}" for r in cmp["runs"]
            )
        )
        if not cmp["items"]:
            st.info(
                "No samples for these runs and steps (runs record samples every eval_interval iterations)."
            )
        base_index = run_ids.index(baseline)
        for item in cmp["items"]:
            with st.container(border=True):
                st.markdown(f"**Prompt** {ui.md_escape(item['prompt_id'])}")
                ui.text_block(item["prompt"])
                cols = st.columns(len(run_ids))
                base = item["samples"][base_index] if base_index < len(item["samples"]) else None
                for col, rid, sample in zip(cols, run_ids, item["samples"]):
                    with col:
                        st.markdown(
                            f"**#{rid} {ui.md_escape(names[rid])}**"
                            + (" (baseline)" if rid == baseline else "")
                        )
                        if sample is None:
                            st.caption("no sample for this prompt")
                            continue
                        st.caption(
                            f"score {logic.format_number(sample['score'])} · gold "
                            f"{logic.format_number(sample['gold_score'])} · KL "
                            f"{logic.format_number(sample['kl'])} · step {sample['step']}"
                        )
                        ui.text_block(sample["response"])
                        if rid != baseline and base is not None:
                            if base["response"] == sample["response"]:
                                st.caption(f"identical to #{baseline}")
                            else:
                                ops = logic.word_diff(base["response"], sample["response"])
                                same = 100 * logic.diff_ratio(base["response"], sample["response"])
                                st.caption(
                                    f"word diff against #{baseline}: \\[-removed-\\] {{+added+}} "
                                    f"({same:.0f}% of words shared)"
                                )
                                ui.text_block(logic.render_word_diff(ops))
                if judgement is not None and item["prompt_id"] in verdicts:
                    vs = verdicts[item["prompt_id"]]
                    a = f"#{judgement['run_a']}"
                    b = f"#{judgement['run_b']}" if judgement["run_b"] else "SFT"
                    human = logic.is_human(judgement)
                    with st.expander(
                        f"{'Human vote' if human else 'Judge'}: {verdict_text(vs)} (A = {a}, B = {b})"
                    ):
                        for v in vs:
                            if human:
                                side = "left" if v["order"] == "ab" else "right"
                                st.caption(
                                    f"A was shown on the {side}; voted {v.get('raw_output')} by "
                                    f"{ui.md_escape(v.get('voter') or '?')}"
                                )
                                if v.get("comment"):
                                    ui.text_block(v["comment"])
                                continue
                            st.caption(f"order {v['order']}: verdict {v['verdict']}")
                            ui.text_block(v.get("raw_output") or "(no judge output)")
                        st.caption(
                            "The responses voted on:"
                            if human
                            else "The responses the judge saw (generated by the judgement, "
                            f"{judgement['judge'].get('decoding', 'greedy')} decoding):"
                        )
                        jc = st.columns(2)
                        with jc[0]:
                            st.caption(f"A ({a})")
                            ui.text_block(vs[0]["response_a"])
                        with jc[1]:
                            st.caption(f"B ({b})")
                            ui.text_block(vs[0]["response_b"])


# --- tokens ----------------------------------------------------------------------------------------------

TOP_K = [10, 25, 50, 100, 200]
PAIR_LINE_CHARS = 48  # narrower lines side by side: each view fits its half of the page
MAX_HEATMAP_STEPS = 60  # the prompt-across-steps view shows one token record per step, at most this many


def step_picker(api: Client, rid: int, key: str) -> int | None:
    """A step (newest first) among those with eval samples of a run; None when it has none."""
    available = [s["step"] for s in ui.call(ui.sample_steps, api, rid) or []]
    if not available:
        st.caption(f"#{rid} has no samples yet")
        return None
    return st.selectbox(
        f"Step of #{rid} {ui.md_escape(names[rid])}",
        list(reversed(available)),
        key=key,
        format_func=lambda s: f"step {s}",
    )


def sample_query_controls(key: str) -> tuple[dict, int]:
    """Sort order, top/bottom k and min/max filters, as the keyword arguments of Client.list_samples
    (logic.sample_query; the API sorts and filters) and the k."""
    c = st.columns([2, 1, 1])
    sort = c[0].selectbox(
        "Sort by", list(logic.SORT_KEYS), key=f"{key}.sort", format_func=logic.SORT_KEYS.get
    )
    top = c[1].radio(
        "Show", ["top", "bottom"], horizontal=True, key=f"{key}.top", help="highest or lowest first"
    )
    k = c[2].selectbox("k", TOP_K, index=1, key=f"{key}.k")
    bounds = {}
    with st.expander("Filters (min / max)"):
        fc = st.columns(len(logic.FILTERS))
        for col, name in zip(fc, logic.FILTERS):
            with col:
                lo = st.number_input(f"min {name}", value=None, key=f"{key}.min_{name}", format="%g")
                hi = st.number_input(f"max {name}", value=None, key=f"{key}.max_{name}", format="%g")
            bounds[name] = (lo, hi)
    return logic.sample_query(sort, descending=top == "top", bounds=bounds), int(k)


def fetch_tokens(api: Client, sample: dict | None) -> dict | None:
    """A sample's SampleTokens, None (with a caption saying why) when it has none."""
    if sample is None:
        st.caption("no sample for this prompt")
        return None
    if not sample.get("has_tokens"):
        st.caption("This sample has no token data (recorded by runs that capture tokens).")
        return None
    return ui.call(ui.sample_tokens, api, sample["id"], what=f"the tokens of sample {sample['id']}")


def quantity_picker(samples: list[dict], key: str) -> str | None:
    present = logic.present_quantities(samples)
    if not present:
        st.caption("No per-token quantities recorded.")
        return None
    return st.selectbox(
        "Colour tokens by",
        present,
        key=key,
        help="Diverging scale centred on 0 for k1, k3, delta, advantage, reward; sequential for the others. "
        + " ".join(f"{q}: {logic.QUANTITY_HELP[q]}." for q in present if q in logic.QUANTITY_HELP),
    )


def sample_caption(rid: int, sample: dict) -> None:
    st.markdown(f"**#{rid} {ui.md_escape(names[rid])}**")
    st.caption(logic.sample_label(sample))


def tokens_of_one_run(api: Client, rid: int) -> None:
    """One run's samples at a step, sorted and filtered by the API, and the chosen one's token view."""
    step = step_picker(api, rid, key=f"tokens.step.{rid}")
    if step is None:
        return
    query, k = sample_query_controls("tokens.q")
    got = ui.call(api.list_samples, rid, step=step, kind="eval", limit=k, **query, what="samples")
    if got is None:  # the API's error is shown
        return
    if not got["items"]:
        st.info("No samples match.")
        return
    by_id = {s["id"]: s for s in got["items"]}
    sid = st.selectbox(
        f"Sample ({got['total']} match)",
        list(by_id),
        key="tokens.sample",
        format_func=lambda i: logic.sample_label(by_id[i]),
    )
    sample = by_id[sid]
    st.markdown(f"**Prompt** {ui.md_escape(sample['prompt_id'])}")
    ui.text_block(sample["prompt"])
    tokens = fetch_tokens(api, sample)
    if tokens is None:
        ui.text_block(sample["response"])
        return
    quantity = quantity_picker([tokens], key="tokens.quantity")
    if quantity:
        domain = logic.color_domain(quantity, [tokens["quantities"].get(quantity, [])])
        ui.token_view(tokens, quantity, domain, key="tokens.view")


def tokens_side_by_side(api: Client, pair: list[int]) -> None:
    """The same prompt for two runs (aligned by GET /samples/compare), each one's token view on one shared
    colour scale: where each spends its KL, token by token."""
    c = st.columns([1, 1, 1])
    steps = []
    for col, rid in zip(c[:2], pair):
        with col:
            steps.append(step_picker(api, rid, key=f"tokens.step.{rid}"))
    if any(s is None for s in steps):
        return
    page = int(c[2].number_input("Page of prompts", 1, 100000, 1, key="tokens.page"))
    cmp = ui.call(
        api.compare_samples,
        pair,
        steps,
        mode="intersection",
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
        what="samples",
    )
    if not cmp or not cmp["items"]:
        st.info("The two runs have no prompt in common at these steps.")
        return
    items = {item["prompt_id"]: item for item in cmp["items"]}
    pid = st.selectbox(
        f"Prompt ({cmp['total']} in common)", list(items), key="tokens.prompt", format_func=str
    )
    item = items[pid]
    st.markdown(f"**Prompt** {ui.md_escape(pid)}")
    ui.text_block(item["prompt"])
    picker = st.container()  # the quantity's selectbox above the two views (it needs both sides' tokens)
    cols = st.columns(2)
    sides = []
    for col, rid, sample in zip(cols, pair, item["samples"]):
        with col:
            if sample is not None:
                sample_caption(rid, sample)
            sides.append(fetch_tokens(api, sample))
    held = [t for t in sides if t is not None]
    if not held:
        return
    with picker:
        quantity = quantity_picker(held, key="tokens.pair_quantity")
    if not quantity:
        return
    # one domain for both sides: the same colour is the same value in either run
    domain = logic.color_domain(quantity, [t["quantities"].get(quantity, []) for t in held])
    for i, (col, tokens) in enumerate(zip(cols, sides)):
        with col:
            if tokens is None:
                continue
            if quantity not in logic.present_quantities([tokens]):
                st.caption(f"#{pair[i]} has no {quantity} (its algorithm does not compute it).")
                continue
            ui.token_view(tokens, quantity, domain, key=f"tokens.pair.{i}", line_chars=PAIR_LINE_CHARS)


with tab_tokens:
    if tab_tokens.open:  # only the open tab's work is done
        if len(run_ids) >= 2:
            st.caption(
                f"The same prompt for #{run_ids[0]} and #{run_ids[1]} (the first two runs selected), "
                "on one colour scale."
            )
            tokens_side_by_side(api, run_ids[:2])
        else:
            tokens_of_one_run(api, run_ids[0])


# --- one prompt across steps -----------------------------------------------------------------------------

with tab_steps:
    if tab_steps.open:  # only the open tab's work is done
        c = st.columns([1, 2, 1])
        rid = c[0].selectbox("Run", run_ids, key="steps.run", format_func=lambda r: f"#{r} {names[r]}")
        available = [s["step"] for s in ui.call(ui.sample_steps, api, rid) or []]
        latest = (
            ui.call(api.list_samples, rid, step=available[-1], limit=200, what="samples")
            if available
            else None
        )
        prompt_ids = sorted({s["prompt_id"] for s in (latest or {"items": []})["items"]})
        if not prompt_ids:
            st.info("No samples yet.")
        else:
            with c[1]:
                pid = st.selectbox("Prompt", prompt_ids, key="steps.prompt", format_func=str)
            view = c[2].radio("View", ["heatmap", "per step"], horizontal=True, key="steps.view")
            across = ui.call(api.prompt_samples, rid, pid, kind="eval", what="the prompt's samples") or []
            with_tokens = [s for s in across if s.get("has_tokens")]
            if across:
                ui.text_block(across[0]["prompt"])
            if not with_tokens:
                st.info("None of this prompt's samples has token data.")
            else:
                shown = with_tokens
                if len(shown) > MAX_HEATMAP_STEPS:  # evenly spaced steps, the last included
                    stride = -(-len(shown) // MAX_HEATMAP_STEPS)
                    shown = shown[::-1][::stride][::-1]
                    st.caption(f"Every {stride}th of {len(with_tokens)} steps with token data.")
                by_id = (
                    ui.call(ui.samples_tokens, api, tuple(s["id"] for s in shown), what="the token records")
                    or {}
                )
                pairs = [(s, by_id[s["id"]]) for s in shown if s["id"] in by_id]
                records = [t for _, t in pairs]
                quantity = quantity_picker(records, key="steps.quantity")
                if quantity:
                    domain = logic.color_domain(
                        quantity, [t["quantities"].get(quantity, []) for t in records]
                    )
                    if view == "heatmap":
                        st.altair_chart(
                            ui.token_heatmap(logic.steps_heatmap(records, quantity), quantity, domain),
                            width="stretch",
                        )
                    else:
                        for s, t in pairs:
                            with st.container(border=True):
                                st.caption(logic.sample_label(s))
                                ui.token_view(t, quantity, domain, key=f"steps.view.{s['id']}")


# --- training rollouts -----------------------------------------------------------------------------------

with tab_train:
    if tab_train.open:  # only the open tab's work is done
        c = st.columns([1, 1])
        rid = c[0].selectbox("Run", run_ids, key="train.run", format_func=lambda r: f"#{r} {names[r]}")
        newest = ui.call(api.list_samples, rid, kind="train", sort="-step", limit=1, what="training rollouts")
        if not newest or not newest["items"]:
            st.info(
                "No training rollouts recorded for this run (kept for the iterations its retention "
                "settings choose)."
            )
        else:
            step = int(
                c[1].number_input(
                    "Iteration",
                    0,
                    None,
                    newest["items"][0]["step"],
                    key=f"train.step.{rid}",
                    help="the newest iteration with training rollouts by default",
                )
            )
            query, k = sample_query_controls("train.q")
            got = ui.call(api.list_samples, rid, step=step, kind="train", limit=k, **query, what="rollouts")
            if got:
                st.caption(f"{got['total']} rollout(s) of iteration {step} match")
                if got["items"]:
                    st.dataframe(
                        logic.rollouts_frame(got["items"]),
                        hide_index=True,
                        width="stretch",
                        key="train.table",
                    )
                    by_id = {s["id"]: s for s in got["items"]}
                    sid = st.selectbox(
                        "Rollout",
                        list(by_id),
                        key="train.sample",
                        format_func=lambda i: logic.sample_label(by_id[i]),
                    )
                    sample = by_id[sid]
                    ui.text_block(sample["prompt"])
                    tokens = fetch_tokens(api, sample)
                    if tokens is None:
                        ui.text_block(sample["response"])
                    elif quantity := quantity_picker([tokens], key="train.quantity"):
                        domain = logic.color_domain(quantity, [tokens["quantities"].get(quantity, [])])
                        ui.token_view(tokens, quantity, domain, key="train.view")


# --- judgements ------------------------------------------------------------------------------------------


def judgement_rows(items: list[dict]) -> pd.DataFrame:
    rows = []
    for j in items:
        rows.append(
            {
                "id": j["id"],
                "A": f"#{j['run_a']}" + (f" @ {j['step_a']}" if j["step_a"] is not None else ""),
                "B": (f"#{j['run_b']}" if j["run_b"] else "SFT")
                + (f" @ {j['step_b']}" if j["step_b"] is not None else ""),
                "judge": j["judge"].get("backend", "?")
                + (f" {j['judge']['model']}" if j["judge"].get("model") else ""),
                "status": j["status"],
                "progress": logic.judgement_progress(j),
                "win rate of A": logic.format_win_rate(j["result"]),
                "A/B/tie/invalid": "{wins_a}/{wins_b}/{ties}/{invalid}".format(**j["result"]),
                "prompts": j["num_prompts"],
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "id",
            "A",
            "B",
            "judge",
            "status",
            "progress",
            "win rate of A",
            "A/B/tie/invalid",
            "prompts",
        ],
    )


def judgement_list(api: Client, run_ids: tuple[int, ...], live: bool) -> None:
    try:
        items = api.list_judgements(limit=100)["items"] if not run_ids else ui.judgements_for(api, run_ids)
        if live:  # fresh, not cached
            fresh = {
                j["id"]: j for rid in run_ids for j in api.list_judgements(run_id=rid, limit=100)["items"]
            }
            items = sorted(fresh.values(), key=lambda j: -j["id"]) if fresh else items
    except APIError as err:
        ui.show_error(err, "judgements")
        return
    if not items:
        st.caption("No judgements of these runs yet.")
        return
    st.dataframe(
        judgement_rows(items),
        hide_index=True,
        width="stretch",
        column_config={
            "progress": st.column_config.ProgressColumn(
                "progress", min_value=0.0, max_value=1.0, format="percent"
            ),
            "win rate of A": st.column_config.TextColumn("win rate of A", width="large"),
        },
    )
    for j in items:
        if j["status"] in logic.ACTIVE:
            st.progress(
                logic.judgement_progress(j),
                text=f"Judgement {j['id']}: {j['status']}, {j['completed']}/{j['total'] or '?'} "
                f"judged · win rate of A so far {logic.format_win_rate(j['result'])}",
            )
    if live and not any(j["status"] in logic.ACTIVE for j in items):
        ui.clear_caches()
        st.rerun(scope="app")


def submit_judgement() -> None:
    s = st.session_state
    judge = {"backend": s["judge.backend"], "decoding": s["judge.decoding"]}
    if (s.get("judge.model") or "").strip():
        judge["model"] = s["judge.model"].strip()
    try:
        j = api.create_judgement(
            s["judge.run_a"],
            None if s["judge.run_b"] == 0 else s["judge.run_b"],
            step_a=s.get("judge.step_a"),
            step_b=s.get("judge.step_b"),
            num_prompts=s["judge.num_prompts"],
            judge=judge,
            seed=s["judge.seed"],
            queue=(s.get("judge.queue") or "").strip() or None,
        )
    except APIError as err:
        s["judge.errors"] = err.field_errors or {"": [f"{err.status or 'no answer'}: {err.message}"]}
        return
    s.pop("judge.errors", None)
    s["samples.notice"] = f"Judgement {j['id']} queued."
    ui.clear_caches()


def field_errors(errors: dict, *names: str) -> None:
    for name in names:
        for field, msgs in errors.items():
            if field == name or field.startswith(name + "."):
                for m in msgs:
                    st.error(f"{field}: {m}" if field != name else m, icon=":material/error:")


with tab_judgements:
    if tab_judgements.open:  # only the open tab's work is done
        items = ui.call(ui.judgements_for, api, tuple(run_ids)) or []
        live = any(j["status"] in logic.ACTIVE for j in items)
        st.subheader("Judgements of the selected runs")
        st.fragment(run_every=2 if live else None)(judgement_list)(api, tuple(run_ids), live)

        finished = [j for j in items if j["result"]["win_rate"] is not None or j["status"] in logic.TERMINAL]
        if finished:
            st.subheader("Result")
            jid = st.selectbox(
                "Judgement",
                [j["id"] for j in finished],
                key="judge.show",
                format_func=lambda i: logic.judgement_label(next(j for j in finished if j["id"] == i), names),
            )
            j = next(x for x in finished if x["id"] == jid)
            r = j["result"]
            m = st.columns(4)
            m[0].metric(
                "Win rate of A",
                f"{100 * r['win_rate']:.1f}%" if r["win_rate"] is not None else "–",
                help="(wins of A + ties/2) / (wins + losses + ties); 95% Wilson score interval",
            )
            m[1].metric(
                "95% CI",
                f"{100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f}%" if r["ci_low"] is not None else "–",
            )
            m[2].metric(
                "A / B / tie / invalid", f"{r['wins_a']} / {r['wins_b']} / {r['ties']} / {r['invalid']}"
            )
            m[3].metric(
                "Position consistency",
                f"{100 * r['position_consistency']:.0f}%" if r["position_consistency"] is not None else "–",
            )
            length = ui.call(ui.judgement_length, api, jid, j["completed"], what="the length diagnostics")
            if length:
                lm = st.columns(4)
                lm[0].metric(
                    "Length-controlled win rate of A",
                    "–" if length["lc_win_rate"] is None else f"{100 * length['lc_win_rate']:.1f}%",
                    help=ui.LC_HELP,
                )
                lm[1].metric(
                    "95% CI (bootstrap)",
                    "–"
                    if length["lc_ci_low"] is None or length["lc_ci_high"] is None
                    else logic.percent_range(length["lc_ci_low"], length["lc_ci_high"]),
                    help="percentile bootstrap over the prompts, the model refitted each time",
                )
                lm[2].metric(
                    "Mean words A / B",
                    logic.format_mean_lengths(length),
                    help=f"over the {length['prompts']} prompt(s) with a valid verdict; words: "
                    "whitespace-separated",
                )
                lm[3].metric(
                    "Length preference",
                    logic.format_number(length["length_preference"], 3),
                    help="φ of the length model: > 0 the judge prefers the longer response, < 0 the shorter",
                )
                with st.expander("Win rate of A by length difference (words of A's response − B's)"):
                    st.dataframe(
                        logic.length_buckets_frame(length),
                        hide_index=True,
                        width="stretch",
                        column_config={
                            "mean difference": st.column_config.NumberColumn(format="%.1f"),
                            "A's win rate": st.column_config.NumberColumn(format="percent"),
                        },
                    )
            elif r["win_rate"] is not None:
                st.caption("Length diagnostics need two or more prompts with a valid verdict.")
            agreement = ui.call(
                ui.judgement_agreement, api, jid, j["completed"], what="the agreement with human votes"
            )
            st.markdown(
                "**Agreement of judges with these votes**"
                if logic.is_human(j)
                else "**Agreement with human votes**"
            )
            if agreement:
                st.dataframe(
                    logic.agreement_frame(agreement),
                    hide_index=True,
                    width="stretch",
                    column_config={
                        "agreement": st.column_config.NumberColumn(format="percent"),
                        "kappa": st.column_config.NumberColumn("Cohen's kappa", format="%.3f"),
                    },
                )
            else:
                st.caption(
                    "No human votes on these pairs yet."
                    if not logic.is_human(j)
                    else "No automatic judgement shares pairs with these votes yet."
                )
            if (
                not logic.is_human(j)
                and j["completed"]
                and st.button(
                    "Vote on these pairs blind",
                    icon=":material/how_to_vote:",
                    key="judge.vote",
                    help="Start a voting session on this judgement's pairs (the Vote page): its agreement "
                    "with your votes then shows here",
                )
            ):
                ui.go("vote", source=jid)
            if j.get("error"):
                st.error("The judgement failed:")
                ui.text_block(j["error"])
            if r["win_rate"] is not None and r["ci_low"] is not None:
                st.altair_chart(ui.judgement_chart(r, length), width="stretch")
            with st.expander("Verdicts (prompt, both responses, the judge's raw output)"):
                vpage = int(st.number_input("Page", 1, 10000, 1, key="judge.vpage"))
                got = ui.call(api.list_verdicts, jid, limit=50, offset=(vpage - 1) * 50, what="verdicts")
                if got:
                    st.caption(f"{got['total']} verdict(s)")
                    st.dataframe(logic.verdict_frame(got["items"]), hide_index=True, width="stretch")
            with st.expander("Judge log (stdout/stderr of the judge process)"):
                try:
                    log = api.judgement_log(jid, tail=200)
                except APIError as err:
                    if err.status == 404:
                        st.caption(err.message)  # e.g. not on this server's data directory
                    else:
                        ui.show_error(err, "the judge log")
                else:
                    ui.text_block("\n".join(log["lines"]), height=400 if len(log["lines"]) > 20 else None)
                    st.caption(f"The last {len(log['lines'])} line(s) of {logic.format_bytes(log['size'])}")
                    st.download_button(
                        "Download the judge log",
                        data=lambda j=jid: api.download_judgement_log(j),
                        file_name=f"klq-judgement-{jid}-judge.log",
                        mime="text/plain",
                        on_click="ignore",
                        key="judge.log_dl",
                    )

        st.subheader("New judgement")
        errors = st.session_state.get("judge.errors") or {}
        for msg in errors.get("", []):
            st.error(msg)
        choices = ui.choices_with(api, run_ids)
        all_ids = list(dict.fromkeys([*run_ids, *choices]))

        def label(i: int) -> str:
            return "the SFT (reference) policy of A" if i == 0 else ui.run_label(choices[i])

        c = st.columns(2)
        with c[0]:
            st.selectbox("Policy A: run", all_ids, key="judge.run_a", format_func=label)
            field_errors(errors, "run_a")
            st.number_input(
                "Step of A (empty: final checkpoint)", min_value=0, value=None, step=1, key="judge.step_a"
            )
            field_errors(errors, "step_a")
        with c[1]:
            b_options = [0, *all_ids]
            st.selectbox(
                "Policy B: run",
                b_options,
                key="judge.run_b",
                format_func=label,
                index=2 if len(run_ids) >= 2 else 0,
            )
            field_errors(errors, "run_b")
            st.number_input(
                "Step of B (empty: final checkpoint)", min_value=0, value=None, step=1, key="judge.step_b"
            )
            field_errors(errors, "step_b")
        c = st.columns(4)
        with c[0]:
            st.selectbox(
                "Judge",
                ui.JUDGE_BACKENDS,
                key="judge.backend",
                help="gold: the built-in task's gold reward; reward_model: a reward model; local_hf: a "
                "local causal LM; openai: the OpenAI-compatible endpoint configured on the server",
            )
            field_errors(errors, "judge.backend")
        with c[1]:
            st.text_input(
                "Judge model (optional)",
                key="judge.model",
                help="openai: a model name; local_hf/reward_model: builtin:<name>, a path under the "
                "server's model roots, or a hub id if allowed",
            )
            field_errors(errors, "judge.model")
            for field in [
                f for f in errors if f.startswith("judge") and f not in ("judge.backend", "judge.model")
            ]:
                for m in errors[field]:
                    st.error(f"{field}: {m}", icon=":material/error:")
        with c[2]:
            st.number_input("Held-out prompts", 1, 5000, 32, key="judge.num_prompts")
            field_errors(errors, "num_prompts")
            st.selectbox("Decoding", ["greedy", "sampled"], key="judge.decoding")
        with c[3]:
            st.number_input("Seed", 0, 2**31 - 1, 0, key="judge.seed")
            st.text_input("Queue (empty: server default)", key="judge.queue")
            field_errors(errors, "queue", "seed")
        st.button(
            "Queue judgement",
            type="primary",
            icon=":material/gavel:",
            on_click=submit_judgement,
            key="judge.submit",
        )
