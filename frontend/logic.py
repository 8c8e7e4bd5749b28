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
        text += f" (95% CI {100 * result['ci_low']:.1f}–{100 * result['ci_high']:.1f}%)"
    return text


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
) -> pd.DataFrame:
    """The runs table: one row per run (task and tau come from the run's config when known)."""
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
                "algorithm": r["algorithm"].upper(),
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
    """Form values (dotted path -> value) of a stored config; fields it lacks keep their default."""
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
