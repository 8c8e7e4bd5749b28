"""Streamlit helpers shared by the pages: the API client of this session, cached reads, run pickers,
charts and error display. Page scripts stay thin; data shaping lives in frontend.logic."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
import yaml

from frontend import logic
from klq.client import DEFAULT_API_URL, APIConnectionError, APIError, Client, resolve_token

PAGE_FILES = {
    "runs": "views/runs.py",
    "launch": "views/launch.py",
    "run": "views/run.py",
    "compare": "views/compare.py",
    "samples": "views/samples.py",
    "experiments": "views/experiments.py",
    "leaderboard": "views/leaderboard.py",
    "vote": "views/vote.py",
}
# the judge backends a worker runs (POST /judgements); "human" (people's votes) is started on the Vote page
JUDGE_BACKENDS = ["gold", "reward_model", "local_hf", "openai"]
LC_HELP = (
    "Length-controlled win-rate of A (AlpacaEval 2's model of the verdicts on the length difference): "
    "the win-rate it predicts for responses of equal length."
)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the presets offered by Launch and Experiments
CHART_HEIGHT = 360  # the whole chart: title, plot, axes and legend
RUN_LIST_LIMIT = 200  # runs offered by the pickers (newest first; ids in the URL are added)

_HASH = {Client: lambda c: c.identity}
TABLE_KEYS = (logic.REWARD_KEY, logic.GOLD_KEY, logic.KL_KEY, logic.RLHF_KEY, "timing/iteration_s")


# --- the client ------------------------------------------------------------------------------------------


def api_url() -> str:
    return (os.environ.get("KLQ_API_URL") or DEFAULT_API_URL).rstrip("/")


@st.cache_resource(show_spinner=False, max_entries=16)
def _client(url: str, token: str | None) -> Client:
    return Client(url, token or None, timeout=float(os.environ.get("KLQ_UI_TIMEOUT", "30")))


def current_token() -> str | None:
    """KLQ_API_TOKEN, else <KLQ_DATA_DIR>/api_token, else what the user typed in the sidebar."""
    return resolve_token() or (st.session_state.get("api_token") or "").strip() or None


def client() -> Client:
    return _client(api_url(), current_token())


def connection_sidebar() -> None:
    """The sidebar's connection box: the API address, its health, and a token field if none is known."""
    api = client()
    with st.sidebar:
        st.caption(f"API: `{api.base_url}`")
        if resolve_token() is None:
            st.text_input(
                "API token",
                type="password",
                key="api_token",
                help="Not found in KLQ_API_TOKEN or <KLQ_DATA_DIR>/api_token. The first admin "
                "token is printed by `klq up` and written to <data dir>/api_token.",
            )
        try:
            health = _health(api)
        except APIError as err:
            st.error(f"API unreachable: {err.message}")
            return
        if health.get("status") != "ok":
            st.warning(f"API unhealthy: database {health.get('database')}")
        elif not api.token:
            st.warning("No API token: enter one above.")


@st.cache_data(ttl=10, hash_funcs=_HASH, show_spinner=False)
def _health(api: Client) -> dict:
    return dict(api.health())


def show_error(err: Exception, what: str = "") -> None:
    """An API failure as a readable message (422 field errors one per line)."""
    prefix = f"{what}: " if what else ""
    if isinstance(err, APIConnectionError):
        st.error(f"{prefix}{err.message}")
    elif isinstance(err, APIError):
        if err.status == 401:
            st.error(
                f"{prefix}the API refused the token (401). Set KLQ_API_TOKEN or enter a token in the sidebar."
            )
        elif err.field_errors:
            lines = "\n".join(f"- `{f}`: {m}" for f, msgs in err.field_errors.items() for m in msgs)
            st.error(f"{prefix}the API refused the request (422):\n{lines}")
        else:
            st.error(f"{prefix}{err.status}: {err.message}")
    else:
        st.error(f"{prefix}{type(err).__name__}: {err}")


def call(fn: Callable[..., Any], *args: Any, what: str = "", **kwargs: Any) -> Any:
    """fn(*args, **kwargs), showing an API error instead of raising it (returns None then)."""
    try:
        return fn(*args, **kwargs)
    except APIError as err:
        show_error(err, what)
        return None


def clear_caches() -> None:
    """After a write (cancel, delete, tag, launch): the cached lists are stale."""
    for fn in (
        runs_page,
        run_choices,
        run_detail,
        list_tags,
        judgements_for,
        sample_steps,
        experiments_page,
        experiment_detail,
        experiment_results,
        experiment_curves,
    ):
        fn.clear()


# --- cached reads ----------------------------------------------------------------------------------------


@st.cache_data(ttl=3, hash_funcs=_HASH, show_spinner=False, max_entries=100)
def runs_page(
    api: Client,
    status: tuple[str, ...] = (),
    algorithm: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    q: str = "",
    order: str = "newest",
    limit: int = 50,
    offset: int = 0,
    latest: tuple[str, ...] = TABLE_KEYS,
) -> dict:
    return dict(
        api.list_runs(
            status=status or None,
            algorithm=algorithm or None,
            tag=tags or None,
            q=q or None,
            order=order,
            latest=latest,
            limit=limit,
            offset=offset,
        )
    )


@st.cache_data(ttl=5, hash_funcs=_HASH, show_spinner=False, max_entries=20)
def run_choices(api: Client, limit: int = RUN_LIST_LIMIT) -> list[dict]:
    """The newest runs, for pickers: id, name, algorithm, status."""
    page = api.list_runs(limit=limit, latest=[logic.REWARD_KEY])
    return [{k: r[k] for k in ("id", "name", "algorithm", "status", "created_at")} for r in page["items"]]


@st.cache_data(ttl=3, hash_funcs=_HASH, show_spinner=False, max_entries=200)
def run_detail(api: Client, run_id: int) -> dict:
    return dict(api.get_run(run_id))


@st.cache_data(ttl=30, hash_funcs=_HASH, show_spinner=False)
def list_tags(api: Client) -> list[str]:
    return [t["tag"] for t in api.list_tags()]


@st.cache_data(ttl=5, hash_funcs=_HASH, show_spinner=False, max_entries=200)
def sample_steps(api: Client, run_id: int) -> list[dict]:
    return list(api.sample_steps(run_id))


@st.cache_data(ttl=600, hash_funcs=_HASH, show_spinner=False, max_entries=200)
def sample_tokens(api: Client, sample_id: int) -> dict:
    """A sample's per-token record (GET /samples/{id}/tokens); written once with its sample, never changed."""
    return dict(api.sample_tokens(sample_id))


@st.cache_data(ttl=600, hash_funcs=_HASH, show_spinner=False, max_entries=50)
def samples_tokens(api: Client, sample_ids: tuple[int, ...]) -> dict[int, dict]:
    """Several samples' token records in one request (GET /samples/tokens): {sample id: record}, without
    the samples that have none."""
    return {t["sample_id"]: dict(t) for t in api.samples_tokens(sample_ids)}


@st.cache_data(ttl=3, hash_funcs=_HASH, show_spinner=False, max_entries=100)
def judgements_for(api: Client, run_ids: tuple[int, ...] = (), limit: int = 100) -> list[dict]:
    """Judgements involving any of these runs (all recent ones if none), newest first."""
    if not run_ids:
        return list(api.list_judgements(limit=limit)["items"])
    seen: dict[int, dict] = {}
    for rid in run_ids:
        for j in api.list_judgements(run_id=rid, limit=limit)["items"]:
            seen[j["id"]] = j
    return sorted(seen.values(), key=lambda j: -j["id"])


@st.cache_data(ttl=60, hash_funcs=_HASH, show_spinner=False, max_entries=20)
def verdicts(api: Client, judgement_id: int, completed: int) -> list[dict]:
    """All verdicts of a judgement (cached per progress count: new verdicts mean a new entry)."""
    return list(api.iter_verdicts(judgement_id))


@st.cache_data(ttl=60, hash_funcs=_HASH, show_spinner=False, max_entries=50)
def judgement_length(api: Client, judgement_id: int, completed: int) -> dict | None:
    """A judgement's length diagnostics (GET /judgements/{id}: a bootstrap on the server), cached per
    progress count like ``verdicts``; None while fewer than two prompts have a valid verdict."""
    return api.get_judgement(judgement_id, include_verdicts=False)["result"]["length"]


@st.cache_data(ttl=10, hash_funcs=_HASH, show_spinner=False, max_entries=50)
def judgement_agreement(api: Client, judgement_id: int, completed: int) -> list[dict]:
    """A judgement's agreement with the judgements of the other kind (human votes for an automatic one),
    cached briefly per progress count (the other judgements' votes change it too: a short ttl)."""
    return list(api.judgement_agreement(judgement_id))


@st.cache_data(ttl=10, hash_funcs=_HASH, show_spinner=False, max_entries=50)
def leaderboard(
    api: Client,
    judge_backend: str,
    judge_model: str | None,
    tags: tuple[str, ...],
    experiment_id: int | None,
    group_by: str,
) -> dict:
    return api.leaderboard(
        judge_backend, judge_model=judge_model, tag=tags, experiment_id=experiment_id, group_by=group_by
    )


@st.cache_data(ttl=600, hash_funcs=_HASH, show_spinner=False)
def algorithms(api: Client) -> list[dict]:
    """The server's registered algorithms (GET /algorithms): name, label, parameter-group schema."""
    return [dict(a) for a in api.algorithms()]


@st.cache_data(ttl=600, hash_funcs=_HASH, show_spinner=False)
def config_schema(api: Client) -> dict:
    """The RunConfig JSON schema definitions: the server's (its OpenAPI document), else the local klq's."""
    try:
        defs = logic.schema_defs_from_openapi(api.openapi())
    except APIError:
        defs = None
    return defs or logic.local_schema_defs()


@st.cache_data(ttl=3, hash_funcs=_HASH, show_spinner=False, max_entries=50)
def experiments_page(api: Client, limit: int = 50, offset: int = 0) -> dict:
    return dict(api.list_experiments(limit=limit, offset=offset))


@st.cache_data(ttl=3, hash_funcs=_HASH, show_spinner=False, max_entries=50)
def experiment_detail(api: Client, experiment_id: int) -> dict:
    return dict(api.get_experiment(experiment_id))


@st.cache_data(ttl=5, hash_funcs=_HASH, show_spinner=False, max_entries=50)
def experiment_results(api: Client, experiment_id: int) -> dict:
    return dict(api.experiment_results(experiment_id))


@st.cache_data(ttl=5, hash_funcs=_HASH, show_spinner=False, max_entries=50)
def experiment_curves(api: Client, experiment_id: int, key: str, max_points: int = 500) -> dict:
    return dict(api.experiment_curves(experiment_id, key, max_points=max_points))


@st.cache_data(ttl=60, hash_funcs=_HASH, show_spinner=False, max_entries=50)
def experiment_preview(api: Client, body_json: str) -> dict:
    """POST /experiments/preview of a body (as canonical JSON: the cache key); nothing is created."""
    body = json.loads(body_json)
    base, grid = body.pop("base"), body.pop("grid")
    return dict(api.preview_experiment(base, grid, **body))


def presets() -> dict[str, dict]:
    """Starting configurations: the paper's defaults (an empty config) and every configs/*.yaml."""
    out: dict[str, dict] = {"Paper defaults": {}}
    for path in sorted(CONFIGS.glob("*.yaml")) if CONFIGS.is_dir() else []:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict):
            out[f"configs/{path.name}"] = data
    return out


class _ConfigCache:
    """Run configs never change (PATCH edits name, tags and notes only): keep them, keyed by server,
    token, run id and creation time (ids of deleted runs may be reused)."""

    def __init__(self, size: int = 5000) -> None:
        self._data: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get_many(self, api: Client, runs: Sequence[Mapping[str, Any]]) -> dict[int, dict]:
        out: dict[int, dict] = {}
        missing = []
        with self._lock:
            for r in runs:
                key = (*api.identity, r["id"], r.get("created_at"))
                if key in self._data:
                    self._data.move_to_end(key)
                    out[r["id"]] = self._data[key]
                else:
                    missing.append((key, r["id"]))
        if missing:

            def fetch(rid: int) -> dict | None:
                try:
                    return api.get_run(rid)["config"]
                except APIError:
                    return None

            with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                fetched = list(pool.map(fetch, [rid for _, rid in missing]))
            with self._lock:
                for (key, rid), cfg in zip(missing, fetched):
                    if cfg is not None:
                        self._data[key] = cfg
                        out[rid] = cfg
                while len(self._data) > self._size:
                    self._data.popitem(last=False)
        return out


@st.cache_resource(show_spinner=False)
def _config_cache() -> _ConfigCache:
    return _ConfigCache()


def run_configs(api: Client, runs: Sequence[Mapping[str, Any]]) -> dict[int, dict]:
    """Configs of these runs (one request per run not seen before, eight at a time)."""
    return _config_cache().get_many(api, runs)


# --- navigation and pickers ------------------------------------------------------------------------------


def go(page: str, **params: Any) -> None:
    """Switch to a page with query parameters (lists become comma-separated)."""
    query = {
        k: ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
        for k, v in params.items()
        if v is not None
    }
    st.switch_page(PAGE_FILES[page], query_params=query)


def query_ids(name: str) -> list[int]:
    """Run ids from a query parameter: '3' or '1,2,5'."""
    raw = st.query_params.get(name, "")
    out = []
    for part in str(raw).split(","):
        part = part.strip()
        if part.isdigit():
            out.append(int(part))
    return list(dict.fromkeys(out))


def run_label(run: Mapping[str, Any]) -> str:
    return f"#{run['id']} {run['name']} ({run['algorithm'].upper()})"


def choices_with(api: Client, ids: Iterable[int]) -> dict[int, dict]:
    choices = {r["id"]: r for r in call(run_choices, api) or []}
    for rid in ids:
        if rid not in choices:
            try:
                r = run_detail(api, rid)
            except APIError:
                continue
            choices[rid] = {k: r[k] for k in ("id", "name", "algorithm", "status", "created_at")}
    return choices


def pick_run(api: Client, *, key: str, param: str = "run", label: str = "Run") -> int | None:
    """A run selectbox (the newest runs plus the one in the URL), kept in the URL as ?run=ID."""
    wanted = query_ids(param)
    choices = choices_with(api, wanted)
    if not choices:
        st.info("No runs yet: launch one on the Launch page.")
        return None
    ids = list(choices)
    if key not in st.session_state or st.session_state[key] not in ids:
        st.session_state[key] = wanted[0] if wanted and wanted[0] in ids else ids[0]
    rid = st.selectbox(label, ids, key=key, format_func=lambda i: run_label(choices[i]))
    if rid is not None and query_ids(param) != [rid]:
        st.query_params[param] = str(rid)
    return rid


def pick_runs(
    api: Client,
    *,
    key: str,
    param: str = "runs",
    label: str = "Runs",
    max_selections: int | None = None,
    default_count: int = 2,
) -> list[int]:
    """A multiselect of runs, kept in the URL as ?runs=1,2."""
    wanted = query_ids(param)
    choices = choices_with(api, wanted)
    if not choices:
        st.info("No runs yet: launch one on the Launch page.")
        return []
    ids = list(choices)
    if key not in st.session_state:
        st.session_state[key] = [i for i in wanted if i in ids] or ids[:default_count]
    else:
        st.session_state[key] = [i for i in st.session_state[key] if i in ids]
    selected = st.multiselect(
        label, ids, key=key, format_func=lambda i: run_label(choices[i]), max_selections=max_selections
    )
    value = ",".join(str(i) for i in selected)
    if st.query_params.get(param, "") != value:
        if value:
            st.query_params[param] = value
        elif param in st.query_params:
            del st.query_params[param]
    return list(selected)


def names_of(api: Client, ids: Iterable[int]) -> dict[int, str]:
    choices = choices_with(api, ids)
    return {i: choices[i]["name"] if i in choices else f"run {i}" for i in ids}


# --- charts ----------------------------------------------------------------------------------------------


def line_chart(
    df: pd.DataFrame,
    *,
    color: str,
    x: str = "step",
    title: str = "",
    smoothing: float = 0.0,
    height: int = CHART_HEIGHT,
    band: pd.DataFrame | None = None,
) -> alt.Chart:
    """Lines of ``df`` (logic.series_frame's columns) coloured by ``color``; with smoothing, the raw
    values are drawn faintly behind the smoothed ones. ``band`` (logic.interval_bands' bands): shaded
    intervals from ``low`` to ``high`` behind the lines, in their line's colour."""
    x_enc = {
        "step": alt.X("x:Q", title="step", axis=alt.Axis(format="d", tickMinStep=1)),
        "relative": alt.X("x:Q", title="minutes since start"),
        "time": alt.X("x:T", title="wall-clock time"),
    }[x]
    tooltip = [alt.Tooltip(f"{color}:N"), alt.Tooltip("step:Q"), alt.Tooltip("value:Q", format=".4g")]
    legend = alt.Legend(orient="bottom", title=None, columns=2, labelLimit=240, symbolType="stroke")
    base = alt.Chart(df).encode(x=x_enc, color=alt.Color(f"{color}:N", legend=legend))
    if smoothing > 0:
        raw = base.mark_line(opacity=0.25, strokeWidth=1).encode(y=alt.Y("value:Q", title=None))
        smooth = base.mark_line(strokeWidth=2).encode(y=alt.Y("smoothed:Q", title=None), tooltip=tooltip)
        chart = alt.layer(raw, smooth)
    else:
        chart = base.mark_line(strokeWidth=1.5, point=len(df) <= 60).encode(
            y=alt.Y("value:Q", title=None), tooltip=tooltip
        )
    if band is not None and not band.empty:
        area = (
            alt.Chart(band)
            .mark_area(opacity=0.18)
            .encode(
                x=x_enc,
                y=alt.Y("low:Q", title=None),
                y2="high:Q",
                color=alt.Color(f"{color}:N", legend=legend),
            )
        )
        chart = alt.layer(area, chart)
    return chart.properties(title=title, height=height).interactive(bind_y=False)


def tradeoff_chart(
    df: pd.DataFrame, *, reward_label: str, kl_label: str, frontier: pd.DataFrame | None = None
) -> alt.Chart:
    """Reward-vs-KL scatter (one point per run) with the Pareto frontier as a step line: one grey line
    through the ``on_frontier`` points, or with ``frontier`` (logic.frontier_lines: algorithm, order, kl,
    reward) one line per algorithm in its colour."""
    data = df.dropna(subset=["kl", "reward"])
    color = alt.Color("algorithm:N", legend=alt.Legend(orient="bottom"))
    points = (
        alt.Chart(data)
        .mark_point(filled=True, size=90)
        .encode(
            x=alt.X("kl:Q", title=kl_label, scale=alt.Scale(zero=False, padding=40)),
            y=alt.Y("reward:Q", title=reward_label, scale=alt.Scale(zero=False, padding=25)),
            color=color,
            shape=alt.Shape("on_frontier:N", title="on frontier"),
            tooltip=[
                "run",
                "algorithm",
                "tau",
                "status",
                alt.Tooltip("kl:Q", format=".4g"),
                alt.Tooltip("reward:Q", format=".4g"),
            ],
        )
    )
    labels = (
        alt.Chart(data)
        .mark_text(align="left", dx=7, dy=-7, fontSize=11)
        .encode(x="kl:Q", y="reward:Q", text="run:N")
    )
    if frontier is None:
        line = (
            alt.Chart(data[data["on_frontier"]].sort_values("kl"))
            .mark_line(interpolate="step-after", strokeDash=[4, 3], color="gray")
            .encode(x="kl:Q", y="reward:Q")
        )
    else:
        line = (
            alt.Chart(frontier)
            .mark_line(interpolate="step-after", strokeDash=[4, 3])
            .encode(x="kl:Q", y="reward:Q", color=color, order="order:Q", detail="algorithm:N")
        )
    return alt.layer(line, points, labels).properties(height=380).interactive()


def band_chart(df: pd.DataFrame, *, title: str = "", height: int = CHART_HEIGHT) -> alt.Chart:
    """Seed-averaged curves (logic.curves_frame): the mean of each series as a line over its min-max
    band across seeds."""
    legend = alt.Legend(orient="bottom", title=None, columns=2, labelLimit=240, symbolType="stroke")
    base = alt.Chart(df).encode(
        x=alt.X("step:Q", title="step", axis=alt.Axis(format="d", tickMinStep=1)),
        color=alt.Color("series:N", legend=legend),
    )
    band = base.mark_area(opacity=0.18).encode(y=alt.Y("low:Q", title=None), y2="high:Q")
    line = base.mark_line(strokeWidth=2).encode(
        y=alt.Y("mean:Q", title=None),
        tooltip=[
            alt.Tooltip("series:N"),
            alt.Tooltip("step:Q"),
            alt.Tooltip("mean:Q", format=".4g"),
            alt.Tooltip("low:Q", title="min", format=".4g"),
            alt.Tooltip("high:Q", title="max", format=".4g"),
            alt.Tooltip("seeds:Q"),
        ],
    )
    return alt.layer(band, line).properties(title=title, height=height).interactive(bind_y=False)


def win_rate_chart(df: pd.DataFrame) -> alt.Chart:
    """Win-rates (logic.win_rates_frame) as points with their 95% intervals, one row per comparison and
    tau, against the 50% line (no better than the other side)."""
    data = df.dropna(subset=["win rate"]).assign(
        label=lambda d: d["comparison"] + ", τ=" + d["tau"].map("{:g}".format)
    )
    y = alt.Y("label:N", title=None, sort=None)
    x_scale = alt.Scale(domain=[0, 1])
    rules = (
        alt.Chart(data)
        .mark_rule(strokeWidth=2)
        .encode(
            x=alt.X("ci_low:Q", title="win rate (95% CI)", scale=x_scale, axis=alt.Axis(format="%")),
            x2="ci_high:Q",
            y=y,
            color=alt.Color("comparison:N", legend=None),
        )
    )
    points = (
        alt.Chart(data)
        .mark_point(filled=True, size=80)
        .encode(
            x="win rate:Q",
            y=y,
            color=alt.Color("comparison:N", legend=None),
            tooltip=[
                "comparison",
                "tau",
                alt.Tooltip("win rate:Q", format=".1%"),
                "95% CI",
                "wins",
                "losses",
                "ties",
            ],
        )
    )
    even = alt.Chart(pd.DataFrame({"x": [0.5]})).mark_rule(strokeDash=[4, 3], color="gray").encode(x="x:Q")
    return alt.layer(even, rules, points).properties(height=max(120, 28 * len(data) + 60))


def judgement_chart(result: Mapping[str, Any], length: Mapping[str, Any] | None) -> alt.Chart:
    """A judgement's win-rate of A with its 95% Wilson interval and, with length diagnostics, its
    length-controlled win-rate with the bootstrap interval, against the 50% line."""
    rows = [
        {
            "measure": "win rate",
            "rate": result["win_rate"],
            "low": result["ci_low"],
            "high": result["ci_high"],
        }
    ]
    if length and length["lc_win_rate"] is not None and length["lc_ci_low"] is not None:
        rows.append(
            {
                "measure": "length-controlled",
                "rate": length["lc_win_rate"],
                "low": length["lc_ci_low"],
                "high": length["lc_ci_high"],
            }
        )
    base = alt.Chart(pd.DataFrame(rows)).encode(y=alt.Y("measure:N", title=None, sort=None))
    return alt.layer(
        base.mark_rule(strokeWidth=2).encode(
            x=alt.X("low:Q", scale=alt.Scale(domain=[0, 1]), title="win rate of A (95% CI)"), x2="high:Q"
        ),
        base.mark_point(filled=True, size=120).encode(x="rate:Q"),
        alt.Chart(pd.DataFrame({"x": [0.5]})).mark_rule(strokeDash=[4, 4], color="gray").encode(x="x:Q"),
    ).properties(height=60 + 30 * len(rows))


def rating_chart(df: pd.DataFrame) -> alt.Chart:
    """Leaderboard ratings (logic.leaderboard_frame): each player's Elo rating as a point on its 95%
    bootstrap interval, best at the top, against the 1000 line (the anchor, or the mean)."""
    data = df.dropna(subset=["ci_low", "ci_high"])
    y = alt.Y("player:N", title=None, sort=list(data["player"]))
    rules = (
        alt.Chart(data)
        .mark_rule(strokeWidth=2)
        .encode(
            x=alt.X("ci_low:Q", title="rating (Elo scale, 95% CI)", scale=alt.Scale(zero=False)),
            x2="ci_high:Q",
            y=y,
        )
    )
    points = (
        alt.Chart(data)
        .mark_point(filled=True, size=80)
        .encode(
            x="rating:Q",
            y=y,
            tooltip=[
                "player",
                alt.Tooltip("rating:Q", format=".0f"),
                "95% CI",
                "comparisons",
                "wins",
                "ties",
                "losses",
            ],
        )
    )
    level = alt.Chart(pd.DataFrame({"x": [1000]})).mark_rule(strokeDash=[4, 3], color="gray").encode(x="x:Q")
    return alt.layer(level, rules, points).properties(height=max(120, 28 * len(data) + 60))


def text_block(text: str | None, *, height: int | None = None) -> None:
    """Model-generated (or any untrusted) text, shown literally: a code block never renders HTML or
    Markdown."""
    st.code(
        text if text is not None else "",
        language=None,
        wrap_lines=True,
        height=height if height is not None else "content",
    )


# --- series of several runs ------------------------------------------------------------------------------

MAX_RUNS_PER_REQUEST = 20  # the API's limit on run_id per series request
MAX_SERIES_PER_REQUEST = 400  # the API's default KLQ_MAX_SERIES_PER_REQUEST


def _chunks(ids: Sequence[int], n_keys: int) -> list[list[int]]:
    size = max(1, min(MAX_RUNS_PER_REQUEST, MAX_SERIES_PER_REQUEST // max(1, n_keys)))
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


@st.cache_data(ttl=5, hash_funcs=_HASH, show_spinner=False, max_entries=50)
def series(
    api: Client,
    run_ids: tuple[int, ...],
    keys: tuple[str, ...],
    max_points: int = 1000,
    include_wall_time: bool = True,
) -> list[dict]:
    """Series of many runs and keys (several requests if the API's per-request limits need it)."""
    out: list[dict] = []
    for chunk in _chunks(run_ids, len(keys)):
        out += api.series(chunk, keys, max_points=max_points, include_wall_time=include_wall_time)["series"]
    return out


@st.cache_data(ttl=10, hash_funcs=_HASH, show_spinner=False, max_entries=50)
def final_values(api: Client, runs: tuple[tuple[int, int, int], ...], key: str, n: int) -> dict[int, float]:
    """The mean of the last ``n`` points of ``key`` for each run; ``runs``: (run id, the key's latest step,
    step stride of the key, e.g. the eval interval for eval/* keys). One request per group of runs that
    share a starting step."""
    groups: dict[int, list[int]] = {}
    for rid, last_step, stride in runs:
        groups.setdefault(max(-1, last_step - n * max(1, stride)), []).append(rid)
    values: dict[int, float] = {}
    for since, ids in groups.items():
        for chunk in _chunks(ids, 1):
            for s in api.series(chunk, [key], max_points=max(10, 2 * n), since_step=since)["series"]:
                v = logic.tail_mean(s["values"], n)
                if v is not None:
                    values[s["run_id"]] = v
    return values


_MD_SPECIAL = set("\\`*_{}[]()#+-.!|~<>$:&")


def md_escape(text: object) -> str:
    """User text (run names, prompt ids) made literal inside Markdown labels and captions."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in str(text)).replace("\n", " ")


# --- token views -----------------------------------------------------------------------------------------

# Colour schemes of the token views (logic.ink_for assumes their dark ends: both ends of the diverging one,
# the top of the sequential one). Positive k1 (the policy above the reference) is red.
DIVERGING_SCHEME = "redblue"
SEQUENTIAL_SCHEME = "viridis"
TOKEN_CHAR_PX = 8.5  # px per character of the token view's monospace text at TOKEN_FONT_PX
TOKEN_FONT_PX = 13
TOKEN_LINE_PX = 24
TOKEN_LEGEND_PX = 240  # length of the colour legend's gradient
HEATMAP_ROW_PX = 22  # height of a step's row in the prompt-across-steps heatmap
# the columns of logic.token_layout that are not quantities (those go into the tooltips)
_LAYOUT_COLUMNS = {"position", "token", "id", "label", "x", "x2", "line", "shown", "ink"}


def token_color_scale(quantity: str, domain: Sequence[float] | None) -> alt.Scale:
    """The colour scale of a quantity: diverging around 0 or sequential (logic.quantity_kind), over ``domain``
    (logic.color_domain: shared by the samples shown together, so that equal colours mean equal values)."""
    if logic.quantity_kind(quantity) == "diverging":
        # redblue runs from red (low) to blue (high): reversed, the positive side is red
        return alt.Scale(scheme=DIVERGING_SCHEME, domain=list(domain or [-1, 1]), domainMid=0, reverse=True)
    return alt.Scale(scheme=SEQUENTIAL_SCHEME, domain=list(domain) if domain else alt.Undefined, reverse=True)


def token_chart(
    layout: pd.DataFrame, quantity: str, domain: Sequence[float] | None, *, title: str = ""
) -> alt.LayerChart:
    """The token view: one rectangle per token coloured by ``quantity`` with the token's text drawn on it,
    laid out like the text (logic.token_layout), every quantity in its tooltip, and a colour legend.

    An Altair (Vega-Lite) chart rather than HTML: Vega draws text marks as text (never parsed as HTML or
    Markdown, so a token like ``<script>`` or ``[x](http://e.com)`` shows literally, and vega-tooltip
    escapes what it shows), it gives hover tooltips and a colour legend without custom code, and one
    mark per token keeps each value inspectable. (A styled DataFrame in st.dataframe colours cells but has
    neither tooltips nor a legend, and a cell per token does not read like text.)"""
    quantities = [c for c in layout.columns if c not in _LAYOUT_COLUMNS]
    lines = int(layout["line"].max()) + 1 if len(layout) else 1
    width_chars = max(int(layout["x2"].max()) if len(layout) else 1, 1)
    x = alt.X("x:Q", axis=None, scale=alt.Scale(domain=[0, width_chars], nice=False, zero=True))
    y = alt.Y("line:O", axis=None)
    tooltip = [
        alt.Tooltip("token:N", title="token"),
        alt.Tooltip("id:Q", title="id"),
        alt.Tooltip("position:Q", title="position"),
        *[alt.Tooltip(f"{q}:Q", title=q, format=".4g") for q in quantities],
    ]
    base = alt.Chart(layout).encode(x=x, y=y, tooltip=tooltip)
    rects = base.mark_rect(stroke="white", strokeWidth=1).encode(
        x2="x2:Q",
        color=alt.Color(
            "shown:Q",
            title=quantity,
            scale=token_color_scale(quantity, domain),
            legend=alt.Legend(orient="top", direction="horizontal", gradientLength=TOKEN_LEGEND_PX),
        ),
    )
    text = base.mark_text(
        align="left", baseline="middle", dx=1, font="monospace", fontSize=TOKEN_FONT_PX
    ).encode(
        text=alt.Text("label:N"),
        color=alt.Color("ink:N", scale=None),
    )
    # "pad": the plot gets exactly this size (one character column is TOKEN_CHAR_PX wide, like the text),
    # the legend is added around it; "fit" would squeeze the plot to make room for the legend
    chart = alt.layer(rects, text).properties(
        width=width_chars * TOKEN_CHAR_PX, height=lines * TOKEN_LINE_PX, autosize=alt.AutoSizeParams(type="pad")
    )
    return chart.properties(title=title) if title else chart


def token_heatmap(frame: pd.DataFrame, quantity: str, domain: Sequence[float] | None) -> alt.Chart:
    """One prompt across a run's steps (logic.steps_heatmap): a step x token-position grid coloured by
    ``quantity``, each cell's token and value in its tooltip."""
    return (
        alt.Chart(frame)
        .mark_rect()
        .encode(
            x=alt.X("position:O", title="token position", axis=alt.Axis(labelOverlap=True)),
            y=alt.Y("step:O", title="step", sort="ascending"),
            color=alt.Color("value:Q", title=quantity, scale=token_color_scale(quantity, domain)),
            tooltip=[
                alt.Tooltip("step:Q"),
                alt.Tooltip("position:Q"),
                alt.Tooltip("token:N"),
                alt.Tooltip("value:Q", title=quantity, format=".4g"),
            ],
        )
        .properties(height=alt.Step(HEATMAP_ROW_PX))  # a row per step, whatever the number of steps
    )


def token_view(
    sample_tokens: Mapping[str, Any],
    quantity: str,
    domain: Sequence[float] | None,
    *,
    key: str,
    line_chars: int = logic.LINE_CHARS,
) -> None:
    """A sample's token view (token_chart, lines of ``line_chars`` characters) and, below it, the table of
    its tokens: text, id and every quantity."""
    layout = logic.token_layout(sample_tokens, quantity, domain, line_chars)
    if layout.empty:
        st.caption("This sample has no response tokens.")
        return
    st.altair_chart(token_chart(layout, quantity, domain), width="content", key=f"{key}.chart")
    totals = logic.token_totals(sample_tokens)
    if totals:
        st.caption(" · ".join(f"Σ {q} {logic.format_number(v)}" for q, v in totals.items()))
    st.dataframe(
        logic.token_table(sample_tokens),
        hide_index=True,
        width="stretch",
        height=min(400, 38 + 35 * len(layout)),
        column_config={
            "token": st.column_config.TextColumn("token", width="medium"),
            **{
                q: st.column_config.NumberColumn(q, format="%.4g", help=logic.QUANTITY_HELP.get(q))
                for q in logic.present_quantities([sample_tokens])
            },
        },
        key=f"{key}.table",
    )
