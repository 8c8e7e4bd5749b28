"""Launch: a form for a new run. Its fields and defaults (the paper's) come from the server's RunConfig
schema; the backend validates the run and its 422 messages are shown beside the fields.
``?clone=ID`` pre-fills the form from run ID and queues the result as a clone of it (lineage kept)."""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from frontend import logic, ui
from klq.client import APIError

PREFIX = "launch.f."
META = ("launch.name", "launch.tags", "launch.notes", "launch.queue")
DEFAULT_QUEUE = "(server default)"
SECTIONS = {
    "": "General",
    "task": "Task",
    "model": "Models",
    "rollout": "Rollout (generation)",
    "train": "Training",
    "eval_judge": "Eval judge (win-rate vs reference)",
}  # then one per algorithm with parameters, from the server (GET /algorithms)
LABELS = {"kl_coef": "kl_coef (tau)", "lam": "lam (lambda)"}
MODEL_HELP = (
    "builtin:sft / builtin:reward (the built-in task), an absolute path under the server's model "
    "roots, or a Hugging Face hub id if the server allows them"
)

api = ui.client()
ALGORITHMS = ui.call(ui.algorithms, api, what="algorithms") or []
ALGORITHM_LABELS = logic.algorithm_labels(ALGORITHMS)
SECTIONS.update({a["name"]: a["label"] for a in ALGORITHMS if a.get("params")})
fields = [f for f in logic.form_fields(ui.config_schema(api)) if f.path != "name"]
paths = [f.path for f in fields]
by_path = {f.path: f for f in fields}


def to_widget(f: logic.FormField, value: Any) -> Any:
    if f.kind == "list":
        return "\n".join(str(v) for v in value or [])
    if f.kind == "str":
        return "" if value is None else str(value)
    if f.kind == "float" and value is not None:
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    if f.kind == "int" and value is not None:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if f.kind == "bool":
        return bool(value)
    if f.kind == "choice" and value not in (f.choices or []) and not (f.nullable and value is None):
        return f.default
    return value


def load(
    source: tuple,
    config: dict,
    *,
    name: str = "",
    tags: list[str] | None = None,
    notes: str = "",
    queue: str | None = None,
) -> None:
    """Put a configuration into the form's widgets (state set before they are drawn)."""
    values = logic.values_from_config(fields, config)
    st.session_state["launch.values"] = {p: to_widget(by_path[p], v) for p, v in values.items()}
    st.session_state["launch.meta"] = {
        "launch.name": name or (config.get("name") or ""),
        "launch.tags": ", ".join(tags or []),
        "launch.notes": notes,
        "launch.queue": queue or DEFAULT_QUEUE,
    }
    for p, v in st.session_state["launch.values"].items():
        st.session_state[PREFIX + p] = v
    for k, v in st.session_state["launch.meta"].items():
        st.session_state[k] = v
    st.session_state["launch.source"] = source
    st.session_state.pop("launch.errors", None)


def on_preset() -> None:
    name = st.session_state["launch.preset"]
    load(("preset", name), ui.presets().get(name, {}))


def form_values() -> dict[str, Any]:
    values = {}
    for f in fields:
        v = st.session_state.get(PREFIX + f.path, f.default)
        if f.kind == "float" and isinstance(v, float) and not math.isfinite(v):
            v = None
        values[f.path] = v
    return values


def request_parts() -> tuple[dict, dict]:
    config = logic.config_from_values(fields, form_values())
    name = (st.session_state.get("launch.name") or "").strip()
    if name:
        config["name"] = name
    queue = st.session_state.get("launch.queue") or DEFAULT_QUEUE
    meta = {
        "name": name or None,
        "tags": [t.strip() for t in (st.session_state.get("launch.tags") or "").split(",") if t.strip()],
        "notes": st.session_state.get("launch.notes") or "",
        "queue": None if queue == DEFAULT_QUEUE else queue.strip(),
    }
    return config, meta


def submit() -> None:
    config, meta = request_parts()
    source = st.session_state.get("launch.source") or ()
    try:
        if source and source[0] == "clone":
            base = ui.run_detail(api, source[1])["config"]
            run = api.clone_run(source[1], logic.config_overrides(base, config), **meta)
        else:
            run = api.create_run(config, **meta)
    except APIError as err:
        if err.field_errors:
            st.session_state["launch.errors"] = logic.errors_for_form(err.field_errors, paths)
        else:
            st.session_state["launch.errors"] = {"": [f"{err.status or 'no answer'}: {err.message}"]}
        return
    st.session_state.pop("launch.errors", None)
    st.session_state["launch.created"] = run
    ui.clear_caches()


# --- page ------------------------------------------------------------------------------------------------

if created := st.session_state.pop("launch.created", None):
    st.session_state["run.notice"] = (
        f"Run {created['id']} ({ui.md_escape(created['name'])}) queued on '{created['queue']}'."
    )
    ui.go("run", run=created["id"])

st.title("Launch a run")

clone_ids = ui.query_ids("clone")
if clone_ids and st.session_state.get("launch.source") != ("clone", clone_ids[0]):
    try:
        src = ui.run_detail(api, clone_ids[0])
    except APIError as err:
        ui.show_error(err, f"loading run {clone_ids[0]}")
        st.stop()
    load(
        ("clone", src["id"]),
        src["config"],
        name=f"{src['name']} (clone)"[:200],
        tags=src["tags"],
        notes=src["notes"],
        queue=src["queue"],
    )
elif "launch.source" not in st.session_state:
    load(("preset", "Paper defaults"), {})
else:  # widgets not drawn on the last run (another page) lost their state: restore it
    for p, v in (st.session_state.get("launch.values") or {}).items():
        st.session_state.setdefault(PREFIX + p, v)
    for k, v in (st.session_state.get("launch.meta") or {}).items():
        st.session_state.setdefault(k, v)

source = st.session_state["launch.source"]
errors: dict[str, list[str]] = st.session_state.get("launch.errors") or {}

top = st.columns([2, 1])
with top[0]:
    if source[0] == "clone":
        st.info(
            f"Pre-filled from run #{source[1]}: it will be queued as a clone of that run (lineage kept). "
            "Pick a preset to start afresh instead."
        )
with top[1]:
    options = list(ui.presets())
    st.selectbox(
        "Start from",
        options,
        key="launch.preset",
        on_change=on_preset,
        index=None,
        placeholder="a preset configuration…",
        help="Paper defaults are for 1B-parameter models; the configs/*.yaml presets are tuned for "
        "the built-in task on a CPU.",
    )

if errors.get(""):
    st.error("The API refused the run:\n" + "\n".join(f"- {m}" for m in errors[""]))


def field_help(f: logic.FormField) -> str:
    parts = [f.description] if f.description else []
    if f.section == "model" and f.name in ("policy", "reference", "reward", "value"):
        parts.append(MODEL_HELP)
    if f.bounds:
        parts.append(f"Allowed: {f.bounds}.")
    default = "null" if f.default is None else f.default
    parts.append(f"Default: `{default}`.")
    return "  \n".join(parts)


def draw(f: logic.FormField) -> None:
    key = PREFIX + f.path
    label = LABELS.get(f.path, f.name)
    help_ = field_help(f)
    if f.kind == "bool":
        st.checkbox(label, key=key, help=help_)
    elif f.kind == "choice":
        options = ([None] if f.nullable else []) + list(f.choices or [])
        st.selectbox(
            label, options, key=key, help=help_, format_func=lambda v: "(default)" if v is None else str(v)
        )
    elif f.kind == "int":
        st.number_input(label, key=key, step=1, help=help_, placeholder="(default)" if f.nullable else None)
    elif f.kind == "float":
        st.number_input(
            label, key=key, format="%g", step=None, help=help_, placeholder="(none)" if f.nullable else None
        )
    elif f.kind == "list":
        st.text_area(f"{label} (one per line)", key=key, help=help_, height=80)
    else:
        st.text_input(label, key=key, help=help_, placeholder="(default)" if f.nullable else None)
    for msg in errors.get(f.path, []):
        st.error(msg, icon=":material/error:")


def draw_section(section: str, items: list[logic.FormField], columns: int = 3) -> None:
    for msg in errors.get(section, []) if section else []:
        st.error(msg, icon=":material/error:")
    cols = st.columns(columns)
    for i, f in enumerate(items):
        with cols[i % columns]:
            draw(f)


with st.container(border=True):
    st.subheader("Run")
    c = st.columns(3)
    with c[0]:
        st.text_input("name", key="launch.name", max_chars=200, placeholder="(default: <algorithm>-<time>)")
        for msg in errors.get("name", []):
            st.error(msg, icon=":material/error:")
    with c[1]:
        queues = [DEFAULT_QUEUE, "gpu", "cpu"]
        if st.session_state.get("launch.queue") not in (*queues, None):
            queues.append(st.session_state["launch.queue"])
        st.selectbox(
            "queue",
            queues,
            key="launch.queue",
            accept_new_options=True,
            help="The worker queue: GPU workers listen on 'gpu', CPU workers on 'cpu'; type another "
            "name for a custom queue.",
        )
        for msg in errors.get("queue", []):
            st.error(msg, icon=":material/error:")
    with c[2]:
        st.text_input("tags (comma-separated)", key="launch.tags")
        for msg in errors.get("tags", []):
            st.error(msg, icon=":material/error:")
    st.text_area("notes", key="launch.notes", height=68)
    for msg in errors.get("notes", []):
        st.error(msg, icon=":material/error:")
    draw_section("", [f for f in fields if f.section == ""])

algorithm = st.session_state.get(PREFIX + "algorithm", "klq")
for section, title in SECTIONS.items():
    if not section:
        continue
    items = [f for f in fields if f.section == section]
    if not items:
        continue
    unused = section in ALGORITHM_LABELS and section != algorithm
    has_errors = bool(errors.get(section)) or any(errors.get(f.path) for f in items)
    label = title + (f" (not used by {logic.algorithm_label(algorithm, ALGORITHM_LABELS)})" if unused else "")
    expanded = has_errors or (section in ("task", "model", "train") or section == algorithm)
    with st.expander(label, expanded=expanded):
        draw_section(section, items)
for section in {f.section for f in fields} - set(SECTIONS):
    with st.expander(section, expanded=bool(errors)):
        draw_section(section, [f for f in fields if f.section == section])

with st.expander("Request preview (JSON)"):
    config, meta = request_parts()
    st.json({"config": config, **meta}, expanded=False)

with st.container(horizontal=True, vertical_alignment="center"):
    st.button(
        "Queue run", type="primary", icon=":material/rocket_launch:", on_click=submit, key="launch.submit"
    )
    if errors:
        count = sum(len(v) for v in errors.values())
        st.error(f"{count} problem(s): see the messages beside the fields.", icon=":material/error:")
