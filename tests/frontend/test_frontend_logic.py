"""Unit tests of frontend.logic: the pages' data shaping, without Streamlit or a server."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import pytest

from frontend import logic
from klq.config import RunConfig

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


# --- ETA and the runs table --------------------------------------------------------------------------------


def run(**kw):
    base = {
        "id": 1,
        "name": "r",
        "algorithm": "klq",
        "status": "running",
        "iteration": 10,
        "total_iterations": 40,
        "progress": 0.25,
        "started_at": (NOW - timedelta(seconds=100)).isoformat(),
        "latest": {},
        "tags": ["a", "b"],
        "queue": "gpu",
        "created_at": NOW.isoformat(),
        "cancel_requested": False,
    }
    base.update(kw)
    return base


def test_eta_from_iteration_time_metric():
    r = run(latest={"timing/iteration_s": {"step": 10, "value": 2.0}})
    assert logic.eta_seconds(r, NOW) == pytest.approx(60.0)  # 30 iterations left at 2 s


def test_eta_from_elapsed_time_when_no_timing_metric():
    assert logic.eta_seconds(run(), NOW) == pytest.approx(300.0)  # 10 s per iteration so far


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "queued"},
        {"status": "succeeded"},
        {"total_iterations": None},
        {"iteration": 0},
        {"started_at": None},
    ],
)
def test_eta_unknown(changes):
    assert logic.eta_seconds(run(**changes), NOW) is None


def test_eta_done_and_naive_timestamps():
    assert logic.eta_seconds(run(iteration=40), NOW) == 0.0
    naive = run(started_at="2026-01-01T11:58:20")  # the API's UTC without offset
    assert logic.eta_seconds(naive, NOW) == pytest.approx(300.0)


@pytest.mark.parametrize(
    "seconds,text",
    [
        (None, ""),
        (float("nan"), ""),
        (0, "0s"),
        (59.4, "59s"),
        (61, "1m 01s"),
        (3600 * 3 + 420, "3h 07m"),
        (86400 * 2 + 3600 * 4, "2d 04h"),
        (-5, "0s"),
    ],
)
def test_format_duration(seconds, text):
    assert logic.format_duration(seconds) == text


def test_runs_frame_columns_from_summaries_and_configs():
    r = run(
        latest={
            "objective/scores": {"step": 9, "value": 0.5},
            "objective/kl": {"step": 9, "value": 1.5},
            "objective/gold_scores": {"step": 9, "value": None},
        },
        cancel_requested=True,
    )
    df = logic.runs_frame([r], {1: {"kl_coef": 0.1, "task": {"name": "tldr"}}}, now=NOW)
    row = df.iloc[0]
    assert row["task"] == "tldr" and row["tau"] == 0.1
    assert row["reward"] == 0.5 and row["KL"] == 1.5 and row["gold"] is None
    assert row["status"] == "running (cancelling)" and row["algorithm"] == "KLQ"
    assert row["iteration"] == "10/40" and row["ETA"] == "5m 00s" and row["tags"] == "a, b"
    assert list(df.columns)[:10] == [
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
    ]
    assert logic.runs_frame([], {}).empty


# --- series ------------------------------------------------------------------------------------------------


def test_group_keys_panels():
    keys = [
        "objective/scores",
        "objective/gold_scores",
        "eval/kl",
        "objective/kl",
        "loss/q_avg",
        "q/td_error_avg",
        "timing/update_s",
        "perf/elapsed_s",
        "objective/entropy",
        "policy/entropy_avg",
        "iteration",
        "lr",
        "objective/rlhf_reward",
        "system/rss_gb",
        "perf/tokens_per_s",
    ]
    groups = logic.group_keys(keys)
    assert groups["Reward (RM score, gold)"] == ["objective/gold_scores", "objective/scores"]
    assert groups["KL"] == ["eval/kl", "objective/kl"]
    assert groups["Losses"] == ["loss/q_avg"] and groups["Q values (KLQ)"] == ["q/td_error_avg"]
    assert groups["Timing"] == ["timing/update_s"] and groups["Throughput"] == ["perf/tokens_per_s"]
    assert groups["Other"] == ["lr", "perf/elapsed_s"] and groups["System"] == ["system/rss_gb"]
    assert groups["Entropy"] == ["objective/entropy", "policy/entropy_avg"]
    assert "iteration" not in sum(groups.values(), [])
    assert list(groups)[0] == "Reward (RM score, gold)"


def series(steps, values=None, **kw):
    return {
        "steps": list(steps),
        "values": list(values if values is not None else [float(s) for s in steps]),
        "wall_times": [100.0 + s for s in steps],
        "total_points": len(list(steps)),
        "downsampled": False,
        **kw,
    }


def test_merge_series_appends_tails_without_duplicates():
    held = logic.merge_series(None, series(range(1, 11)), None)
    assert held.last_step == 10 and len(held) == 10
    since = logic.tail_since({"k": held})
    assert since == 9
    # the tail re-sends step 10 (a late write changed it) and brings 11, 12
    tail = series([10, 11, 12], [99.0, 11.0, 12.0])
    merged = logic.merge_series(held, tail, since)
    assert merged.steps == list(range(1, 13))
    assert merged.values[9] == 99.0 and merged.total_points == 12
    # an empty tail changes nothing
    assert logic.merge_series(merged, series([]), 12).steps == merged.steps


def test_tail_since_uses_the_newest_series():
    a = logic.merge_series(None, series([5, 10]), None)
    b = logic.merge_series(None, series(range(1, 13)), None)
    assert logic.tail_since({"eval": a, "dense": b}) == 11
    assert logic.tail_since({}) is None


def test_ema_matches_tensorboard_debiased_smoothing():
    assert logic.ema([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    out = logic.ema([1.0, None, 3.0, float("nan")], 0.5)
    assert out[0] == pytest.approx(1.0)  # debiased: the first point is itself
    assert out[1] is None and out[3] is None
    assert out[2] == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)
    const = logic.ema([4.0] * 50, 0.99)
    assert all(v == pytest.approx(4.0) for v in const)


def test_series_frame_x_axes_and_smoothing():
    data = logic.merge_series(None, series([0, 1, 2], [1.0, None, 3.0]), None)
    df = logic.series_frame([("run 1", "k", data)], x="step", smoothing=0.5)
    assert list(df["x"]) == [0, 1, 2] and list(df["run"]) == ["run 1"] * 3
    assert math.isnan(df["value"].iloc[1])
    rel = logic.series_frame([("r", "k", data)], x="relative")
    assert list(rel["x"]) == pytest.approx([0.0, 1 / 60, 2 / 60])
    abs_ = logic.series_frame([("r", "k", data)], x="time")
    assert abs_["x"].iloc[0] == datetime.fromtimestamp(100.0, timezone.utc)
    no_wall = logic.SeriesData([1, 2], [1.0, 2.0], [None, None])
    assert logic.series_frame([("r", "k", no_wall)], x="relative").empty
    assert logic.series_frame([], x="step").empty


# --- reward vs KL ----------------------------------------------------------------------------------------


def brute_frontier(points):
    out = []
    for i, (kl, r) in enumerate(points):
        dominated = any(
            (k2 <= kl and r2 >= r) and (k2 < kl or r2 > r) for j, (k2, r2) in enumerate(points) if j != i
        )
        if not dominated:
            out.append(i)
    return sorted(out, key=lambda i: (points[i][0], -points[i][1]))


def test_pareto_frontier_small_cases():
    assert logic.pareto_frontier([]) == []
    pts = [(1.0, 0.5), (2.0, 0.7), (1.5, 0.4), (3.0, 0.7), (0.5, 0.1)]
    assert logic.pareto_frontier(pts) == [4, 0, 1]  # (1.5, 0.4) and (3.0, 0.7) are dominated
    assert logic.pareto_frontier([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # exact duplicates both kept
    assert logic.pareto_frontier([(1.0, 1.0), (1.0, 0.5)]) == [0]
    assert logic.pareto_frontier([(float("nan"), 1.0), (1.0, 0.5)]) == [1]


def test_pareto_frontier_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        pts = [(round(rng.uniform(0, 5), 1), round(rng.uniform(0, 1), 1)) for _ in range(rng.randint(1, 12))]
        assert logic.pareto_frontier(pts) == brute_frontier(pts), pts


def test_tail_mean_and_tradeoff_frame():
    assert logic.tail_mean([1.0, 2.0, None, 4.0], 2) == pytest.approx(3.0)
    assert logic.tail_mean([1.0, 2.0], 1) == 2.0 and logic.tail_mean([None], 3) is None
    df = logic.tradeoff_frame(
        [
            {
                "run_id": 1,
                "run": "a",
                "algorithm": "KLQ",
                "tau": 0.05,
                "status": "succeeded",
                "kl": 1.0,
                "reward": 0.6,
            },
            {
                "run_id": 2,
                "run": "b",
                "algorithm": "PPO",
                "tau": 0.05,
                "status": "succeeded",
                "kl": 2.0,
                "reward": 0.5,
            },
            {
                "run_id": 3,
                "run": "c",
                "algorithm": "PPO",
                "tau": 0.01,
                "status": "running",
                "kl": 4.0,
                "reward": 0.9,
            },
            {
                "run_id": 4,
                "run": "d",
                "algorithm": "KLQ",
                "tau": 0.1,
                "status": "queued",
                "kl": None,
                "reward": None,
            },
        ]
    )
    assert dict(zip(df["run_id"], df["on_frontier"])) == {1: True, 2: False, 3: True, 4: False}


# --- config diff -------------------------------------------------------------------------------------------


def test_flatten_unflatten_roundtrip():
    cfg = RunConfig().model_dump(mode="json")
    flat = logic.flatten(cfg)
    assert flat["train.batch_size"] == 64 and flat["rollout.stop_sequences"] == []
    assert logic.unflatten(flat) == cfg


def test_config_diff_shows_only_differing_fields():
    a = RunConfig(algorithm="klq", kl_coef=0.05).model_dump(mode="json")
    b = RunConfig(algorithm="ppo", kl_coef=0.1, train={"batch_size": 32, "minibatch_size": 16}).model_dump(
        mode="json"
    )
    c = dict(a, extra={"only": True})
    diff = logic.config_diff({"#1": a, "#2": b, "#3": c})
    assert set(diff.index) == {"algorithm", "kl_coef", "train.batch_size", "extra.only"}
    assert diff.loc["algorithm"].tolist() == ["klq", "ppo", "klq"]
    assert diff.loc["extra.only"].tolist() == ["(absent)", "(absent)", "true"]
    assert diff.loc["kl_coef"].tolist() == ["0.05", "0.1", "0.05"]
    assert logic.config_diff({"x": a, "y": dict(a)}).empty


# --- word diff ---------------------------------------------------------------------------------------------


def test_word_diff_ops_join_back_to_both_texts():
    base, text = "the coffee was hot .", "the coffee was very  hot and good ."
    ops = logic.word_diff(base, text)
    assert "".join(c for op, c in ops if op != "delete") == text
    assert "".join(c for op, c in ops if op != "insert") == base
    assert logic.render_word_diff(ops) == "the coffee was {+very  +}hot {+and good +}."
    assert logic.render_word_diff(logic.word_diff("a b c", "a x c")) == "a [-b-]{+x+} c"
    assert logic.word_diff("", "") == []
    assert logic.diff_ratio("a b", "a b") == 1.0 and logic.diff_ratio("", "") == 1.0
    assert logic.diff_ratio("a b c d", "a b x y") == pytest.approx(0.5)


def test_word_diff_keeps_markup_as_plain_text():
    out = logic.render_word_diff(logic.word_diff("hello", "<script>x</script> hello"))
    assert out == "{+<script>x</script> +}hello"


# --- judgements ------------------------------------------------------------------------------------------


def test_judgement_helpers():
    assert (
        logic.format_win_rate({"win_rate": 0.625, "ci_low": 0.481, "ci_high": 0.75})
        == "62.5% (95% CI 48.1–75.0%)"
    )
    assert logic.format_win_rate({"win_rate": None}) == "–" and logic.format_win_rate(None) == "–"
    assert logic.judgement_progress({"completed": 3, "total": 12}) == 0.25
    assert logic.judgement_progress({"completed": 0, "total": 0, "status": "succeeded"}) == 1.0
    vs = [
        {"prompt_id": "p", "order": "ba", "verdict": "B"},
        {"prompt_id": "p", "order": "ab", "verdict": "A"},
        {"prompt_id": "q", "order": "ab", "verdict": "A"},
        {"prompt_id": "q", "order": "ba", "verdict": "tie"},
    ]
    grouped = logic.verdicts_by_prompt(vs)
    assert [v["order"] for v in grouped["p"]] == ["ab", "ba"]
    assert logic.prompt_outcome(grouped["p"]) == "tie"  # inconsistent across orders
    assert logic.prompt_outcome(grouped["q"]) == "A"
    assert logic.prompt_outcome([{"verdict": "invalid"}]) == "invalid"
    label = logic.judgement_label(
        {"id": 3, "run_a": 1, "step_a": None, "run_b": None, "step_b": None, "status": "running"}, {1: "klq"}
    )
    assert label == "Judgement 3: #1 klq vs SFT of #1 (running)"


# --- the launch form from the schema ---------------------------------------------------------------------


def test_form_fields_follow_runconfig_defaults():
    fields = logic.form_fields(logic.local_schema_defs())
    by_path = {f.path: f for f in fields}
    defaults = logic.flatten(RunConfig().model_dump(mode="json"))
    assert set(by_path) == set(defaults)  # every field, nested ones dotted
    for path, f in by_path.items():
        assert f.default == defaults[path], path
    assert by_path["algorithm"].kind == "choice" and by_path["algorithm"].choices == ["klq", "ppo"]
    assert (
        by_path["train.learning_rate"].kind == "float" and by_path["train.learning_rate"].default == 1.41e-5
    )
    assert by_path["train.batch_size"].kind == "int" and by_path["train.batch_size"].bounds == ">= 1"
    assert by_path["klq.value_clip"].nullable and by_path["klq.value_clip"].kind == "float"
    assert by_path["model.reference"].nullable and by_path["model.reference"].kind == "str"
    assert by_path["rollout.stop_sequences"].kind == "list"
    assert by_path["model.gradient_checkpointing"].kind == "bool"
    assert by_path["kl_coef"].bounds == "> 0" and "tau" in by_path["kl_coef"].description
    assert by_path["train.batch_size"].section == "train" and by_path["seed"].section == ""


def test_form_fields_from_an_openapi_document():
    from backend.main import create_app

    doc = create_app().openapi()
    defs = logic.schema_defs_from_openapi(doc)
    assert defs is not None
    server = {f.path: f.default for f in logic.form_fields(defs)}
    local = {f.path: f.default for f in logic.form_fields(logic.local_schema_defs())}
    assert server == local
    assert logic.schema_defs_from_openapi({"components": {"schemas": {}}}) is None


def test_config_from_values_roundtrip_and_overrides():
    fields = logic.form_fields(logic.local_schema_defs())
    source = RunConfig(
        algorithm="ppo",
        kl_coef=0.2,
        model={"reference": "builtin:sft"},
        rollout={"stop_sequences": ["\n\n", "END"]},
    ).model_dump(mode="json")
    values = logic.values_from_config(fields, source)
    values["rollout.stop_sequences"] = "\n\nEND\n\n"  # as typed in the text area: blank lines dropped
    values["model.value"] = "   "  # an empty optional text means null
    cfg = logic.config_from_values(fields, values)
    assert RunConfig.model_validate(cfg).model_dump(mode="json") == dict(
        source, rollout=dict(source["rollout"], stop_sequences=["END"])
    )
    assert logic.config_overrides(source, cfg) == {"rollout.stop_sequences": ["END"]}
    assert logic.config_overrides(source, source) == {}


def test_errors_for_form_maps_api_fields_to_form_paths():
    paths = ["kl_coef", "train.batch_size", "train.minibatch_size", "model.policy", "task.name"]
    errors = logic.errors_for_form(
        {
            "config.kl_coef": ["Input should be greater than 0"],
            "config.train": ["train.minibatch_size (4) must divide train.batch_size (10)"],
            "overrides.model.policy": ["not an allowed model"],
            "config.task.dataset.extra": ["deep"],
            "queue": ["unknown queue 'x'"],
            "tags.0": ["bad tag"],
            "config": ["whole config"],
            "something.else": ["?"],
        },
        paths,
    )
    assert errors["kl_coef"] == ["Input should be greater than 0"]
    assert errors["train"] == ["train.minibatch_size (4) must divide train.batch_size (10)"]
    assert errors["model.policy"] == ["not an allowed model"]
    assert errors["task"] == ["deep"]
    assert errors["queue"] == ["unknown queue 'x'"] and errors["tags"] == ["bad tag"]
    assert errors[""] == ["whole config", "?"]
