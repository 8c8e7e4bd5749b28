"""The dashboard's logic as plain functions (no Streamlit): data shaping for tables and charts, live
series merging, smoothing, ETA, the reward-vs-KL Pareto frontier, config diffs, word diffs, judgement
summaries, and the launch form's fields derived from the server's RunConfig JSON schema."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pandas as pd

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE = frozenset({"queued", "running"})

REWARD_KEY = "objective/scores"
GOLD_KEY = "objective/gold_scores"
KL_KEY = "objective/kl"
RLHF_KEY = "objective/rlhf_reward"

# --- formatting ------------------------------------------------------------------------------------------


def parse_time(value: str | datetime | None) -> datetime | None:
    """An API timestamp (ISO 8601, 'Z' or offset; naive means UTC) as an aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def format_duration(seconds: float | None) -> str:
    """'45s', '12m 03s', '3h 07m', '2d 04h'; '' for None."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s % 3600) // 60:02d}m"
    return f"{s // 86400}d {(s % 86400) // 3600:02d}h"


def format_bytes(n: int) -> str:
    """512 -> '512 B', 1536 -> '1.5 KiB', 3 * 2**20 -> '3.0 MiB'."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}"


def format_win_rate(result: Mapping[str, Any] | None) -> str:
    """'62.5% (95% CI 48.1–75.0%)' for a judgement's result; '–' while it has none."""
    if not result or result.get("win_rate") is None:
        return "–"
    text = f"{100 * result['win_rate']:.1f}%"
    if result.get("ci_low") is not None and result.get("ci_high") is not None:
        text += f" (95% CI {percent_range(result['ci_low'], result['ci_high'])})"
    return text


def percent_range(low: float, high: float) -> str:
    """'48.1–75.0%': an interval of shares."""
    return f"{100 * low:.1f}–{100 * high:.1f}%"


# --- runs table ------------------------------------------------------------------------------------------


def eta_seconds(run: Mapping[str, Any], now: datetime | None = None) -> float | None:
    """Seconds until a running run finishes: the latest ``timing/iteration_s`` times the remaining
    iterations if the run logs it, else the mean time per iteration so far. None if unknown."""
    if run.get("status") != "running":
        return None
    total, done = run.get("total_iterations"), run.get("iteration") or 0
    if not total:
        return None
    remaining = max(0, total - done)
    if remaining == 0:
        return 0.0
    latest = run.get("latest") or {}
    per_iter = (latest.get("timing/iteration_s") or {}).get("value")
    if per_iter is not None and math.isfinite(per_iter) and per_iter > 0:
        return per_iter * remaining
    started = parse_time(run.get("started_at"))
    if started is None or done <= 0:
        return None
    now = now or datetime.now(timezone.utc)
    elapsed = (now - started).total_seconds()
    if elapsed <= 0:
        return None
    return elapsed / done * remaining


def latest_value(run: Mapping[str, Any], key: str) -> float | None:
    entry = (run.get("latest") or {}).get(key)
    return None if entry is None else entry.get("value")


def runs_frame(
    runs: Sequence[Mapping[str, Any]],
    configs: Mapping[int, Mapping[str, Any]] | None = None,
    now: datetime | None = None,
    labels: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The runs table: one row per run (task and tau come from the run's config when known; the algorithm
    as ``labels`` names it, see algorithm_label)."""
    configs = configs or {}
    rows = []
    for r in runs:
        cfg = configs.get(r["id"]) or {}
        progress = r.get("progress")
        rows.append(
            {
                "id": r["id"],
                "name": r["name"],
                "status": r["status"]
                + (" (cancelling)" if r.get("cancel_requested") and r["status"] in ACTIVE else ""),
                "algorithm": algorithm_label(r["algorithm"], labels),
                "task": (cfg.get("task") or {}).get("name"),
                "tau": cfg.get("kl_coef"),
                "reward": latest_value(r, REWARD_KEY),
                "gold": latest_value(r, GOLD_KEY),
                "KL": latest_value(r, KL_KEY),
                "progress": None if progress is None else float(progress),
                "iteration": f"{r.get('iteration') or 0}/{r.get('total_iterations') or '?'}",
                "ETA": format_duration(eta_seconds(r, now)),
                "tags": ", ".join(r.get("tags") or []),
                "queue": r.get("queue"),
                "created": parse_time(r.get("created_at")),
            }
        )
    columns = [
        "id",
        "name",
        "status",
        "algorithm",
        "task",
        "tau",
        "reward",
        "gold",
        "KL",
        "progress",
        "ETA",
        "iteration",
        "tags",
        "queue",
        "created",
    ]
    return pd.DataFrame(rows, columns=columns)


# --- metric series ---------------------------------------------------------------------------------------

PANELS: list[tuple[str, Any]] = [
    ("Reward (RM score, gold)", re.compile(r"^(objective|eval)/(scores|gold_scores|raw_scores)$")),
    ("KL", re.compile(r"^(objective|eval)/kl$")),
    ("RLHF reward", re.compile(r"^objective/(rlhf_reward|non_score_reward)$")),
    ("Losses", re.compile(r"^loss/")),
    ("Entropy", re.compile(r"^(objective/entropy|policy/entropy.*)$")),
    ("Q values (KLQ)", re.compile(r"^q/")),
    ("Policy", re.compile(r"^(policy|val)/")),
    ("Timing", re.compile(r"^timing/")),
    ("Throughput", re.compile(r"^perf/.*per_s$")),
    ("System", re.compile(r"^system/")),
]
DEFAULT_PANELS = (
    "Reward (RM score, gold)",
    "KL",
    "RLHF reward",
    "Losses",
    "Entropy",
    "Q values (KLQ)",
    "Timing",
)
HIDDEN_KEYS = frozenset({"iteration", "episode"})


def group_keys(keys: Iterable[str]) -> dict[str, list[str]]:
    """Metric keys grouped into the Run page's panels (in PANELS order, then 'Other')."""
    groups: dict[str, list[str]] = {name: [] for name, _ in PANELS}
    other: list[str] = []
    for key in sorted(set(keys)):
        if key in HIDDEN_KEYS:
            continue
        for name, pattern in PANELS:
            if pattern.search(key):
                groups[name].append(key)
                break
        else:
            other.append(key)
    if other:
        groups["Other"] = other
    return {name: ks for name, ks in groups.items() if ks}


@dataclass
class SeriesData:
    """The points of one (run, key) series held by the page, extended by live tails."""

    steps: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    wall_times: list[float | None] = field(default_factory=list)
    total_points: int = 0
    downsampled: bool = False

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    def __len__(self) -> int:
        return len(self.steps)


def merge_series(held: SeriesData | None, new: Mapping[str, Any], since_step: int | None) -> SeriesData:
    """Held points plus a response series fetched with ``since_step``: points after ``since_step`` are
    replaced by the response's (a step re-sent is not duplicated; a late write for it wins)."""
    steps = list(new.get("steps") or [])
    values = list(new.get("values") or [])
    walls = list(new.get("wall_times") or [None] * len(steps))
    if held is None or since_step is None:
        return SeriesData(
            steps, values, walls, int(new.get("total_points") or len(steps)), bool(new.get("downsampled"))
        )
    keep = len(held.steps)
    while keep and held.steps[keep - 1] > since_step:
        keep -= 1
    dropped = len(held.steps) - keep
    merged = SeriesData(
        held.steps[:keep] + steps,
        held.values[:keep] + values,
        held.wall_times[:keep] + walls,
        held.total_points - dropped + int(new.get("total_points") or len(steps)),
        held.downsampled or bool(new.get("downsampled")),
    )
    return merged


def tail_since(held: Mapping[str, SeriesData]) -> int | None:
    """The ``since_step`` of the next live request: one before the newest step held, so that a late
    write at the newest step (e.g. a worker heartbeat's system metrics) is picked up again."""
    lasts = [s.last_step for s in held.values() if s.last_step is not None]
    return max(lasts) - 1 if lasts else None


def ema(values: Sequence[float | None], weight: float) -> list[float | None]:
    """TensorBoard's smoothing: a debiased exponential moving average (weight 0: none, 0.99: heavy).
    Missing values stay missing and do not reset the average."""
    if weight <= 0:
        return list(values)
    weight = min(weight, 0.999)
    out: list[float | None] = []
    last = 0.0
    n = 0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
            continue
        last = last * weight + (1 - weight) * v
        n += 1
        out.append(last / (1 - weight**n))
    return out


def series_frame(
    items: Iterable[tuple[str, str, SeriesData]], *, x: str = "step", smoothing: float = 0.0
) -> pd.DataFrame:
    """Long-format points for charts: columns run, key, x, value, smoothed.

    ``items``: (run label, key, data). ``x``: "step", "relative" (minutes since the series' first point,
    from wall times) or "time" (wall-clock datetime)."""
    frames = []
    for run, key, data in items:
        if not data.steps:
            continue
        if x == "step":
            xs: list[Any] = list(data.steps)
        else:
            walls = data.wall_times
            if not walls or all(w is None for w in walls):
                continue
            if x == "relative":
                first = next(w for w in walls if w is not None)
                xs = [None if w is None else (w - first) / 60.0 for w in walls]
            else:
                xs = [None if w is None else datetime.fromtimestamp(w, timezone.utc) for w in walls]
        frames.append(
            pd.DataFrame(
                {
                    "run": run,
                    "key": key,
                    "x": xs,
                    "step": data.steps,
                    "value": pd.array(data.values, dtype="Float64"),
                    "smoothed": pd.array(ema(data.values, smoothing), dtype="Float64"),
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=["run", "key", "x", "step", "value", "smoothed"])
    df = pd.concat(frames, ignore_index=True)
    df = df[df["x"].notna()]
    df["value"] = df["value"].astype("float64")
    df["smoothed"] = df["smoothed"].astype("float64")
    return df


# --- reward vs KL ----------------------------------------------------------------------------------------


def tail_mean(values: Sequence[float | None], n: int) -> float | None:
    """Mean of the last ``n`` finite values (n <= 1: the last one)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    tail = finite[-max(1, n) :]
    return sum(tail) / len(tail)


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points on the reward-vs-KL Pareto frontier (lower KL and higher reward are better),
    sorted by KL. ``points``: (kl, reward). A point is on it if no other point has KL <= and reward >=
    with one of them strictly better; exact duplicates are all kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    frontier: list[int] = []
    best = -math.inf
    best_kl = None
    for i in order:
        kl, reward = points[i]
        if not (math.isfinite(kl) and math.isfinite(reward)):
            continue
        if reward > best:
            frontier.append(i)
            best, best_kl = reward, kl
        elif reward == best and kl == best_kl:
            frontier.append(i)
    return frontier


def tradeoff_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Reward-vs-KL points, one per run: rows with run_id, run, algorithm, tau, kl, reward; adds
    ``on_frontier``; rows missing kl or reward are kept with on_frontier False."""
    df = pd.DataFrame(list(rows), columns=["run_id", "run", "algorithm", "tau", "status", "kl", "reward"])
    df["on_frontier"] = False
    ok = df[df["kl"].notna() & df["reward"].notna()]
    idx = pareto_frontier(list(zip(ok["kl"].astype(float), ok["reward"].astype(float))))
    df.loc[ok.index[idx], "on_frontier"] = True
    return df


# --- config diff -----------------------------------------------------------------------------------------

_ABSENT = "(absent)"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"batch_size": 8}} -> {"train.batch_size": 8} (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def config_diff(configs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Only the fields whose values differ between the configs: index = dotted field, one column per
    config (its label), values as text ('(absent)' where a config lacks the field)."""
    flats = {label: flatten(cfg) for label, cfg in configs.items()}
    keys = sorted(set().union(*[f.keys() for f in flats.values()])) if flats else []
    rows = {}
    for key in keys:
        values = [f.get(key, _ABSENT) for f in flats.values()]
        if any(v != values[0] for v in values[1:]):
            rows[key] = [_show(v) for v in values]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(flats)).rename_axis("field")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- samples: word diff ----------------------------------------------------------------------------------

_WORDS = re.compile(r"\s+|[^\s]+")


def word_diff(baseline: str, text: str) -> list[tuple[str, str]]:
    """Word-level diff of ``text`` against ``baseline``: [(op, chunk)] with op 'equal', 'delete' (only in
    the baseline) or 'insert' (only in text); whitespace is kept so that chunks join back to the texts."""
    a = _WORDS.findall(baseline or "")
    b = _WORDS.findall(text or "")
    out: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out.append(("equal", "".join(b[j1:j2])))
        else:
            if i2 > i1:
                out.append(("delete", "".join(a[i1:i2])))
            if j2 > j1:
                out.append(("insert", "".join(b[j1:j2])))
    return out


def render_word_diff(ops: Sequence[tuple[str, str]]) -> str:
    """Plain text in ``git diff --word-diff=plain`` style: [-removed-]{+added+}."""
    parts = []
    for op, chunk in ops:
        if op == "delete":
            parts.append(f"[-{chunk}-]")
        elif op == "insert":
            parts.append(f"{{+{chunk}+}}")
        else:
            parts.append(chunk)
    return "".join(parts)


def diff_ratio(baseline: str, text: str) -> float:
    """Share of words the two texts have in common (1: identical)."""
    a, b = (baseline or "").split(), (text or "").split()
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


# --- judgements ------------------------------------------------------------------------------------------


def judgement_progress(j: Mapping[str, Any]) -> float:
    total = j.get("total") or 0
    if total <= 0:
        return 1.0 if j.get("status") == "succeeded" else 0.0
    return max(0.0, min(1.0, (j.get("completed") or 0) / total))


def verdicts_by_prompt(verdicts: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Verdicts grouped by prompt id, the 'ab' order first."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for v in verdicts:
        out.setdefault(str(v["prompt_id"]), []).append(v)
    for items in out.values():
        items.sort(key=lambda v: v.get("order") != "ab")
    return out


def prompt_outcome(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """One prompt's outcome from its verdicts in both orders: 'A', 'B', 'tie' or 'invalid'
    (A and B disagreeing across the two orders counts as a tie, as klq.judge does)."""
    votes = [v["verdict"] for v in verdicts if v.get("verdict") in ("A", "B", "tie")]
    if not votes:
        return "invalid"
    score = sum(1.0 if v == "A" else 0.0 if v == "B" else 0.5 for v in votes) / len(votes)
    return "A" if score > 0.5 else "B" if score < 0.5 else "tie"


def verdict_frame(verdicts: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            "prompt_id": v["prompt_id"],
            "order": v["order"],
            "verdict": v["verdict"],
            "prompt": v["prompt"],
            "response A": v["response_a"],
            "response B": v["response_b"],
            "judge output": v.get("raw_output"),
        }
        for v in verdicts
    ]
    return pd.DataFrame(
        rows, columns=["prompt_id", "order", "verdict", "prompt", "response A", "response B", "judge output"]
    )


def judgement_label(j: Mapping[str, Any], names: Mapping[int, str] | None = None) -> str:
    names = names or {}

    def side(run: int | None, step: int | None, default: str) -> str:
        if run is None:
            return default
        label = f"#{run} {names.get(run, '')}".strip()
        return label + (f" @ step {step}" if step is not None else "")

    a = side(j.get("run_a"), j.get("step_a"), "?")
    b = side(j.get("run_b"), j.get("step_b"), f"SFT of #{j.get('run_a')}")
    return f"Judgement {j['id']}: {a} vs {b} ({j.get('status')})"


# --- launch form from the RunConfig JSON schema ----------------------------------------------------------


@dataclass
class FormField:
    """One input of the launch form: ``path`` is the dotted config field (e.g. 'train.batch_size')."""

    path: str
    kind: str  # "int", "float", "str", "bool", "choice", "list"
    default: Any = None
    nullable: bool = False
    choices: list[Any] | None = None
    description: str = ""
    title: str = ""
    bounds: str = ""

    @property
    def section(self) -> str:
        return self.path.split(".", 1)[0] if "." in self.path else ""

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]


def _resolve(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if ref:
        return defs[ref.rsplit("/", 1)[-1]]
    return schema


def _bounds(s: Mapping[str, Any]) -> str:
    parts = []
    if "minimum" in s:
        parts.append(f">= {_num(s['minimum'])}")
    if "exclusiveMinimum" in s:
        parts.append(f"> {_num(s['exclusiveMinimum'])}")
    if "maximum" in s:
        parts.append(f"<= {_num(s['maximum'])}")
    if "exclusiveMaximum" in s:
        parts.append(f"< {_num(s['exclusiveMaximum'])}")
    if "maxLength" in s:
        parts.append(f"at most {s['maxLength']} characters")
    return ", ".join(parts)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def form_fields(defs: Mapping[str, Any], root: str = "RunConfig") -> list[FormField]:
    """The launch form's fields from a JSON schema's definitions (an OpenAPI document's
    ``components.schemas``, or ``RunConfig.model_json_schema()['$defs']`` plus the root), in schema order;
    nested models become dotted paths. Defaults are the schema's (the paper's)."""
    out: list[FormField] = []

    def walk(schema: Mapping[str, Any], prefix: str) -> None:
        for name, prop in (schema.get("properties") or {}).items():
            path = prefix + name
            target = _resolve(prop, defs)
            if target.get("type") == "object" or "properties" in target:
                walk(target, path + ".")
                continue
            variants = [_resolve(v, defs) for v in prop.get("anyOf", [])] or [target]
            nullable = any(v.get("type") == "null" for v in variants)
            main = next((v for v in variants if v.get("type") != "null"), {})
            kind, choices = "str", None
            if "enum" in main:
                kind, choices = "choice", list(main["enum"])
            elif "const" in main:
                kind, choices = "choice", [main["const"]]
            elif main.get("type") == "integer":
                kind = "int"
            elif main.get("type") == "number":
                kind = "float"
            elif main.get("type") == "boolean":
                kind = "bool"
            elif main.get("type") == "array":
                kind = "list"
            default = prop.get("default", [] if kind == "list" else None)
            out.append(
                FormField(
                    path=path,
                    kind=kind,
                    default=default,
                    nullable=nullable,
                    choices=choices,
                    description=prop.get("description", "") or main.get("description", ""),
                    title=prop.get("title", name),
                    bounds=_bounds(main),
                )
            )

    walk(defs[root], "")
    return out


def schema_defs_from_openapi(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schemas of an OpenAPI document, with the run configuration under 'RunConfig' (FastAPI names it
    'RunConfig-Input' when its input and output schemas differ)."""
    schemas = dict((doc.get("components") or {}).get("schemas") or {})
    for name in ("RunConfig", "RunConfig-Input"):
        if name in schemas:
            schemas["RunConfig"] = schemas[name]
            return schemas
    return None


def local_schema_defs() -> dict[str, Any]:
    """The RunConfig schema of the locally installed klq (when the server's is unavailable)."""
    from klq.config import RunConfig

    schema = RunConfig.model_json_schema()
    defs = dict(schema.pop("$defs", {}))
    defs["RunConfig"] = schema
    return defs


def defaults_of(fields: Iterable[FormField]) -> dict[str, Any]:
    return {f.path: f.default for f in fields}


def values_from_config(fields: Iterable[FormField], config: Mapping[str, Any]) -> dict[str, Any]:
    """Form values (dotted path -> value) of a stored config; fields it lacks keep their default, or under
    `convention: paper` take that convention's value, as the server would fill them."""
    from klq.config import PAPER_CONVENTION, apply_convention

    if config.get("convention") == "paper":
        config = apply_convention(dict(config), PAPER_CONVENTION)
    flat = flatten(config)
    values = {}
    for f in fields:
        values[f.path] = flat.get(f.path, f.default)
    return values


def config_from_values(fields: Iterable[FormField], values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested config of the form's values (all fields: the backend validates it as a whole)."""
    flat: dict[str, Any] = {}
    for f in fields:
        value = values.get(f.path, f.default)
        if f.kind == "list" and isinstance(value, str):
            value = [line for line in value.splitlines() if line.strip()]
        if f.kind == "str" and f.nullable and isinstance(value, str) and not value.strip():
            value = None
        if f.kind == "str" and isinstance(value, str):
            value = value.strip()
        flat[f.path] = value
    return unflatten(flat)


def config_overrides(base: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted overrides turning ``base`` into ``new`` (for POST /runs/{id}/clone)."""
    a, b = flatten(base), flatten(new)
    return {k: v for k, v in b.items() if k not in a or a[k] != v}


def errors_for_form(field_errors: Mapping[str, Sequence[str]], paths: Iterable[str]) -> dict[str, list[str]]:
    """A 422's field errors keyed by the form's config paths: 'config.train.batch_size' and
    'overrides.train.batch_size' both become 'train.batch_size'; an error on a section (a model-level
    check, e.g. 'config.train') stays on the section; other fields ('name', 'queue', 'tags.0') keep their
    first part; what matches nothing is under ''."""
    known = set(paths)
    sections = {p.split(".", 1)[0] for p in known if "." in p}
    out: dict[str, list[str]] = {}
    for raw, msgs in field_errors.items():
        path = raw
        for prefix in ("config.", "overrides."):
            if path.startswith(prefix):
                path = path[len(prefix) :]
                break
        else:
            if path in ("config", "overrides"):
                path = ""
        target = ""
        if path in known or path in sections:
            target = path
        else:
            parts = path.split(".")
            for i in range(len(parts) - 1, 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in known or candidate in sections:
                    target = candidate
                    break
            else:
                if parts[0] in ("name", "queue", "tags", "notes"):
                    target = parts[0]
        out.setdefault(target, []).extend(msgs)
    return out


# --- experiments (docs/EXPERIMENTS.md) -------------------------------------------------------------------

EXPERIMENT_ACTIVE = frozenset({"queued", "running", "judging"})
# the results' per-(tau, algorithm) intervals, in table order: (field, column label)
RESULT_METRICS = (
    ("reward", "reward"),
    ("kl", "KL"),
    ("rlhf_reward", "rlhf_reward"),
    ("gold", "gold"),
    ("wall_clock_s", "wall-clock (s)"),
    ("iteration_s", "s/iteration"),
)
PAIR_PREFIX = (
    "klq_vs_"  # judgement kinds klq_vs_<algorithm>: KLQ against that algorithm (docs/EXPERIMENTS.md)
)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_RANGE = re.compile(r"^(\d+)-(\d+)$")
MAX_SEED_RANGE = 1000  # a typo such as 1-1000000 is refused here rather than expanded


def algorithm_labels(algorithms: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """name -> display label of the server's algorithms (GET /algorithms)."""
    return {a["name"]: a.get("label") or a["name"].upper() for a in algorithms}


def algorithm_label(algorithm: str | None, labels: Mapping[str, str] | None = None) -> str:
    """The display label of an algorithm: the server's (``labels``, from algorithm_labels), else its name
    in capitals (an algorithm the server no longer has)."""
    return (labels or {}).get(algorithm or "", str(algorithm or "").upper())


def comparison_label(item: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """'KLQ vs PPO' for a pairing (kind klq_vs_<vs>), 'PPO vs SFT' for vs_sft: of a pooled win-rate, a
    judgement or a pair not judged."""
    kind = item.get("kind") or ""
    vs = item.get("vs") or (kind[len(PAIR_PREFIX) :] if kind.startswith(PAIR_PREFIX) else None)
    if vs:
        return f"{algorithm_label('klq', labels)} vs {algorithm_label(vs, labels)}"
    return f"{algorithm_label(item.get('algorithm'), labels)} vs SFT"


def series_label(algorithm: str, kl_coef: float, labels: Mapping[str, str] | None = None) -> str:
    """'KLQ τ=0.05': one (algorithm, tau) cell of an experiment's grid."""
    return f"{algorithm_label(algorithm, labels)} τ={kl_coef:g}"


def parse_kl_coefs(text: str) -> tuple[list[float], list[str]]:
    """Tau values typed as '0.02, 0.05 0.1' (commas and/or spaces): the values in order and the
    problems of what is not a positive number (the server checks the rest: distinct, at most 8)."""
    values: list[float] = []
    problems: list[str] = []
    for part in re.split(r"[,\s]+", text or ""):
        if not part:
            continue
        value = float(part) if _NUMBER.match(part) else None
        if value is None or not math.isfinite(value) or value <= 0:
            problems.append(f"{part!r} is not a positive number")
        else:
            values.append(value)
    return values, problems


def parse_seeds(text: str) -> tuple[list[int], list[str]]:
    """Seeds typed as '1, 2, 5' or ranges '1-4, 7' (inclusive): the values in order and the problems."""
    values: list[int] = []
    problems: list[str] = []
    for part in re.split(r"[,\s]+", re.sub(r"\s*-\s*", "-", text or "")):
        if not part:
            continue
        if part.isdigit():
            values.append(int(part))
        elif m := _RANGE.match(part):
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo or hi - lo >= MAX_SEED_RANGE:
                problems.append(f"{part!r}: a range is low-high with at most {MAX_SEED_RANGE} seeds")
            else:
                values.extend(range(lo, hi + 1))
        else:
            problems.append(f"{part!r} is not a non-negative integer or a range such as 1-4")
    return values, problems


def parse_config_yaml(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """A run configuration typed as YAML (or JSON): (the mapping, None) or (None, the problem). Only
    the syntax is checked here; the server validates the configuration itself."""
    import yaml

    try:
        data = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as err:
        return None, f"not valid YAML: {err}"
    if not isinstance(data, dict):
        return None, f"a run configuration is a mapping of fields, not a {type(data).__name__}"
    return data, None


def experiment_progress(progress: Mapping[str, Any]) -> float:
    """The share of an experiment's work finished: its runs and judgements counted alike (judgements
    are only known once judging has started, so this can step back then)."""
    total = (progress.get("runs_total") or 0) + (progress.get("judgements_total") or 0)
    done = (progress.get("runs_finished") or 0) + (progress.get("judgements_finished") or 0)
    return max(0.0, min(1.0, done / total)) if total else 0.0


def format_hours(hours: float | None) -> str:
    """'0.42 h', '12.50 h', '250 h'; '<0.01 h' for a few seconds; '–' for None."""
    if hours is None or not math.isfinite(hours):
        return "–"
    if 0 < hours < 0.005:
        return "<0.01 h"
    return f"{hours:.2f} h" if hours < 100 else f"{hours:.0f} h"


def experiments_frame(
    items: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The experiments table: one row per experiment with its grid, progress and compute."""
    rows = []
    for e in items:
        p, grid, compute = e["progress"], e["grid"], e["compute"]
        runs = f"{p['runs_finished']}/{p['runs_total']}" + (
            f" ({p['runs_failed']} failed)" if p.get("runs_failed") else ""
        )
        judged = f"{p['judgements_finished']}/{p['judgements_total']}" + (
            f" ({p['judgements_failed']} failed)" if p.get("judgements_failed") else ""
        )
        rows.append(
            {
                "id": e["id"],
                "name": e["name"],
                "status": e["status"]
                + (" (cancelling)" if e.get("cancel_requested") and e["status"] in EXPERIMENT_ACTIVE else ""),
                "progress": experiment_progress(p),
                "runs": runs,
                "judgements": judged,
                "algorithms": ", ".join(algorithm_label(a, labels) for a in grid["algorithms"]),
                "tau": ", ".join(f"{t:g}" for t in grid["kl_coefs"]),
                "seeds": len(grid["seeds"]),
                "run-hours": compute.get("run_hours"),
                "wall-clock": format_duration(compute.get("wall_clock_s")),
                "tags": ", ".join(e.get("tags") or []),
                "created": parse_time(e.get("created_at")),
            }
        )
    columns = ["id", "name", "status", "progress", "runs", "judgements", "algorithms", "tau", "seeds",
               "run-hours", "wall-clock", "tags", "created"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def preview_frame(preview: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The runs an experiment would queue (POST /experiments/preview): name, grid values, and the
    size of each run (identical for all, which is the point; group-baseline algorithms spread the same
    responses over fewer prompts: responses/prompt)."""
    rows = []
    for r in preview.get("runs") or []:
        cfg = r.get("config") or {}
        train = cfg.get("train") or {}
        episodes, batch = train.get("total_episodes"), train.get("batch_size")
        rows.append(
            {
                "name": r["name"],
                "algorithm": algorithm_label(r["algorithm"], labels),
                "tau": r["kl_coef"],
                "seed": r["seed"],
                "task": (cfg.get("task") or {}).get("name"),
                "episodes": episodes,
                "iterations": episodes // batch if episodes and batch else None,
                "responses/prompt": (cfg.get("rollout") or {}).get("num_generations"),
                "learning_rate": train.get("learning_rate"),
            }
        )
    columns = [
        "name", "algorithm", "tau", "seed", "task", "episodes", "iterations", "responses/prompt", "learning_rate"
    ]
    return pd.DataFrame(rows, columns=columns)


def format_ci(interval: Mapping[str, Any] | None, digits: int = 4) -> str:
    """An interval's 95% CI as '[0.551, 0.672]'; 'n=1' with one seed (no interval); '–' with none."""
    if not interval or interval.get("mean") is None:
        return "–"
    low, high = interval.get("ci_low"), interval.get("ci_high")
    if low is None or high is None:
        return f"n={interval.get('n', 0)}"
    return f"[{format_number(low, digits)}, {format_number(high, digits)}]"


def _first_line(text: str | None, limit: int = 200) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "(no reason recorded)"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failed_text(failed: Sequence[Mapping[str, Any]]) -> str:
    """The failed or cancelled runs of a results row: '#12 seed 2 failed: RuntimeError: ...; ...'."""
    return "; ".join(
        f"#{f['run_id']} seed {f['seed']} {f['status']}: {_first_line(f.get('error'))}" for f in failed
    )


def results_frame(results: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The results table: one row per (tau, algorithm) with the run counts, each metric's mean over the
    succeeded seeds and its 95% CI (text), and the failed runs with their reasons (never dropped)."""
    rows = []
    for r in results.get("rows") or []:
        row: dict[str, Any] = {
            "tau": r["kl_coef"],
            "algorithm": algorithm_label(r["algorithm"], labels),
            "seeds": f"{r['succeeded']}/{r['runs']} succeeded"
            + (f", {r['pending']} pending" if r.get("pending") else ""),
        }
        for name, label in RESULT_METRICS:
            interval = r.get(name)
            row[label] = interval.get("mean") if interval else None
            row[f"{label} 95% CI"] = format_ci(interval)
        row["failed"] = failed_text(r.get("failed") or [])
        rows.append(row)
    columns = ["tau", "algorithm", "seeds"]
    for _, label in RESULT_METRICS:
        columns += [label, f"{label} 95% CI"]
    return pd.DataFrame(rows, columns=[*columns, "failed"])


def win_rates_frame(results: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Pooled win-rates: per tau, KLQ against each other algorithm and each algorithm against its SFT policy, with the
    95% Wilson interval and the counts; a comparison with nothing judged (a failed run) is listed by
    ``not_judged_frame``."""
    rows = []
    for w in results.get("win_rates") or []:
        comparison = comparison_label(w, labels)
        rows.append(
            {
                "tau": w["kl_coef"],
                "comparison": comparison,
                "win rate": w.get("win_rate"),
                "ci_low": w.get("ci_low"),
                "ci_high": w.get("ci_high"),
                "95% CI": percent_range(w["ci_low"], w["ci_high"])
                if w.get("ci_low") is not None and w.get("ci_high") is not None
                else "–",
                "wins": w["wins"],
                "losses": w["losses"],
                "ties": w["ties"],
                "invalid": w["invalid"],
                "prompts": w["prompts"],
                "judgements": len(w.get("judgements") or []),
                "pending": w.get("pending", 0),
            }
        )
    columns = ["tau", "comparison", "win rate", "ci_low", "ci_high", "95% CI", "wins", "losses", "ties",
               "invalid", "prompts", "judgements", "pending"]  # fmt: skip
    df = pd.DataFrame(rows, columns=columns)
    return df.sort_values(["tau", "comparison"], kind="stable").reset_index(drop=True)


def not_judged_frame(results: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The pairs that were not judged (a failed or cancelled run) with the reason."""
    rows = [
        {
            "tau": n["kl_coef"],
            "comparison": comparison_label(n, labels),
            "seed": n["seed"],
            "reason": n["reason"],
        }
        for n in results.get("not_judged") or []
    ]
    return pd.DataFrame(rows, columns=["tau", "comparison", "seed", "reason"])


def experiment_points_frame(
    results: Mapping[str, Any], labels: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Every run of an experiment as a reward-vs-KL point (tradeoff_frame's columns plus seed and
    rlhf_reward); ``on_frontier``: on its algorithm's Pareto frontier as the server computed it."""
    on_frontier = {rid for ids in (results.get("frontier") or {}).values() for rid in ids}
    rows = [
        {
            "run_id": p["run_id"],
            "run": f"#{p['run_id']} s{p['seed']}"
            + ("" if p["status"] == "succeeded" else f" ({p['status']})"),
            "algorithm": algorithm_label(p["algorithm"], labels),
            "tau": p["kl_coef"],
            "seed": p["seed"],
            "status": p["status"],
            "kl": p.get("kl"),
            "reward": p.get("reward"),
            "rlhf_reward": p.get("rlhf_reward"),
            "on_frontier": p["run_id"] in on_frontier,
        }
        for p in results.get("points") or []
    ]
    columns = ["run_id", "run", "algorithm", "tau", "seed", "status", "kl", "reward", "rlhf_reward",
               "on_frontier"]  # fmt: skip
    df = pd.DataFrame(rows, columns=columns)
    for col in ("kl", "reward", "rlhf_reward"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def frontier_lines(results: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The Pareto frontier of each algorithm as a line: its runs' (kl, reward) in the server's order
    (by KL); columns algorithm, order, run_id, kl, reward. Runs without both values are skipped."""
    points = {p["run_id"]: p for p in results.get("points") or []}
    rows = []
    for algorithm, ids in (results.get("frontier") or {}).items():
        order = 0
        for rid in ids:
            p = points.get(rid)
            if p is None or p.get("kl") is None or p.get("reward") is None:
                continue
            rows.append(
                {
                    "algorithm": algorithm_label(algorithm, labels),
                    "order": order,
                    "run_id": rid,
                    "kl": float(p["kl"]),
                    "reward": float(p["reward"]),
                }
            )
            order += 1
    return pd.DataFrame(rows, columns=["algorithm", "order", "run_id", "kl", "reward"])


def curves_frame(curves: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Seed-averaged curves (GET /experiments/{id}/curves) in long form: one row per (series, step)
    with the mean, the min-max band over seeds and how many seeds reached the step."""
    frames = []
    for c in curves.get("curves") or []:
        n = len(c["steps"])
        if not n:
            continue
        frames.append(
            pd.DataFrame(
                {
                    "series": series_label(c["algorithm"], c["kl_coef"], labels),
                    "algorithm": algorithm_label(c["algorithm"], labels),
                    "tau": c["kl_coef"],
                    "step": c["steps"],
                    "mean": pd.array(c["mean"], dtype="Float64"),
                    "low": pd.array(c["low"], dtype="Float64"),
                    "high": pd.array(c["high"], dtype="Float64"),
                    "seeds": c.get("seeds_at_step") or [None] * n,
                }
            )
        )
    columns = ["series", "algorithm", "tau", "step", "mean", "low", "high", "seeds"]
    if not frames:
        return pd.DataFrame(columns=columns)
    df = pd.concat(frames, ignore_index=True)
    for col in ("mean", "low", "high"):
        df[col] = df[col].astype("float64")
    return df[columns]


def experiment_runs_frame(detail: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """An experiment's runs: grid cell, status, progress and, for a failed run, its reason."""
    rows = []
    for r in detail.get("runs") or []:
        started, finished = parse_time(r.get("started_at")), parse_time(r.get("finished_at"))
        rows.append(
            {
                "id": r["run_id"],
                "name": r["name"],
                "algorithm": algorithm_label(r["algorithm"], labels),
                "tau": r["kl_coef"],
                "seed": r["seed"],
                "status": r["status"],
                "iteration": f"{r.get('iteration') or 0}/{r.get('total_iterations') or '?'}",
                "duration": format_duration((finished - started).total_seconds())
                if started and finished
                else "",
                "error": _first_line(r["error"]) if r.get("error") else "",
            }
        )
    columns = ["id", "name", "algorithm", "tau", "seed", "status", "iteration", "duration", "error"]
    return pd.DataFrame(rows, columns=columns)
