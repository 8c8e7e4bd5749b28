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


@pytest.mark.parametrize(
    "n,text",
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 * 2**20, "3.0 MiB"), (5 * 2**30, "5.0 GiB")],
)
def test_format_bytes(n, text):
    assert logic.format_bytes(n) == text


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


def test_win_rate_panel_beside_the_reward_with_its_interval_as_a_band():
    keys = ["objective/scores", "eval/gold_scores", "objective/kl", "eval/judge_wins",
            "eval/win_rate_vs_ref", "eval/win_rate_vs_ref_ci_low", "eval/win_rate_vs_ref_ci_high"]
    groups = logic.group_keys(keys)
    assert list(groups)[:2] == ["Reward (RM score, gold)", "Win-rate vs reference (judge)"]
    assert groups["Win-rate vs reference (judge)"] == [
        "eval/win_rate_vs_ref", "eval/win_rate_vs_ref_ci_high", "eval/win_rate_vs_ref_ci_low"
    ]
    assert groups["Other"] == ["eval/judge_wins"]  # counts are not rates
    assert "Win-rate vs reference (judge)" in logic.DEFAULT_PANELS
    assert "Win-rate vs reference (judge)" not in logic.group_keys(keys[:3])  # no judge, no panel

    values = {"eval/win_rate_vs_ref": [0.5, 0.7], "eval/win_rate_vs_ref_ci_low": [0.3, 0.5],
              "eval/win_rate_vs_ref_ci_high": [0.7, 0.85]}
    df = logic.series_frame(
        [("run 1", k, logic.merge_series(None, series([5, 10], v), None)) for k, v in values.items()]
    )
    lines, band = logic.interval_bands(df)
    assert set(lines["key"]) == {"eval/win_rate_vs_ref"}
    assert band.to_dict("list") == {"run": ["run 1"] * 2, "key": ["eval/win_rate_vs_ref"] * 2, "x": [5, 10],
                                    "step": [5, 10], "low": [0.3, 0.5], "high": [0.7, 0.85]}
    only_rate = df[df["key"] == "eval/win_rate_vs_ref"]  # a bound missing: lines only
    lines, band = logic.interval_bands(only_rate)
    assert lines.equals(only_rate) and band.empty
    assert logic.interval_bands(logic.series_frame([]))[1].empty


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
    assert by_path["algorithm"].kind == "choice" and by_path["algorithm"].choices == ["klq", "ppo", "rloo", "grpo"]
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


# --- experiments -------------------------------------------------------------------------------------------


def interval(values, lo=None, hi=None):
    ok = [v for v in values if v is not None]
    return {
        "mean": sum(ok) / len(ok) if ok else None,
        "ci_low": lo,
        "ci_high": hi,
        "n": len(ok),
        "values": values,
    }


def results_json():
    """An experiment's results as GET /experiments/{id}/results sends them (validated against the API's
    model): KLQ and PPO at two taus, two seeds; PPO's seed 2 at tau 0.1 failed."""
    from backend.schemas import ExperimentResults

    def row(tau, alg, rewards, kls, failed=()):
        return {
            "kl_coef": tau,
            "algorithm": alg,
            "runs": 2,
            "succeeded": 2 - len(failed),
            "failed": list(failed),
            "pending": 0,
            "reward": interval(rewards, *((0.1, 0.9) if len(rewards) > 1 else (None, None))),
            "kl": interval(kls, *((0.5, 1.5) if len(kls) > 1 else (None, None))),
            "rlhf_reward": interval([r - tau * k for r, k in zip(rewards, kls)]),
            "gold": None,
            "wall_clock_s": interval([600.0] * len(rewards)),
            "iteration_s": interval([0.5] * len(rewards)),
        }

    oom = {"run_id": 8, "seed": 2, "status": "failed", "error": "RuntimeError: CUDA out of memory\nTraceback"}
    rows = [
        row(0.05, "klq", [0.6, 0.7], [1.0, 1.2]),
        row(0.05, "ppo", [0.5, 0.55], [1.5, 1.4]),
        row(0.1, "klq", [0.4, 0.45], [0.5, 0.6]),
        row(0.1, "ppo", [0.35], [0.9], failed=[oom]),
    ]
    points = []
    rid = 1
    for r in rows:
        for i, (rew, kl) in enumerate(zip(r["reward"]["values"], r["kl"]["values"])):
            points.append(
                {
                    "run_id": rid,
                    "algorithm": r["algorithm"],
                    "kl_coef": r["kl_coef"],
                    "seed": i + 1,
                    "status": "succeeded",
                    "kl": kl,
                    "reward": rew,
                    "rlhf_reward": rew - kl,
                }
            )
            rid += 1
    points.append(
        {
            "run_id": 8,
            "algorithm": "ppo",
            "kl_coef": 0.1,
            "seed": 2,
            "status": "failed",
            "kl": None,
            "reward": None,
            "rlhf_reward": None,
        }
    )

    def rate(kind, tau, alg, wins, losses, ties, lo, hi):
        n = wins + losses + ties
        return {
            "kind": kind,
            "kl_coef": tau,
            "algorithm": alg,
            "judgements": [1, 2],
            "pending": 0,
            "prompts": n,
            "wins": wins,
            "losses": losses,
            "ties": ties,
            "invalid": 0,
            "win_rate": (wins + ties / 2) / n,
            "ci_low": lo,
            "ci_high": hi,
        }

    results = {
        "experiment_id": 3,
        "status": "failed",
        "rows": rows,
        "win_rates": [
            rate("klq_vs_ppo", 0.05, None, 40, 20, 4, 0.5, 0.74),
            rate("vs_sft", 0.05, "klq", 50, 10, 4, 0.7, 0.88),
            rate("vs_sft", 0.05, "ppo", 45, 15, 4, 0.6, 0.8),
            rate("klq_vs_ppo", 0.1, None, 20, 10, 2, 0.45, 0.78),
        ],
        "not_judged": [
            {"kind": "vs_sft", "kl_coef": 0.1, "seed": 2, "algorithm": "ppo", "reason": "run 8 failed"}
        ],
        "points": points,
        # by algorithm, ordered by KL: KLQ 5 (0.5, 0.4), 6 (0.6, 0.45), 1 (1.0, 0.6), 2 (1.2, 0.7); PPO 7, 4, 3
        "frontier": {"klq": [5, 6, 1, 2], "ppo": [7, 4]},
        "compute": {"run_hours": 1.2, "gpu_hours": 0.0, "wall_clock_s": 1800.0},
    }
    return ExperimentResults.model_validate(results).model_dump(mode="json")


def test_parse_kl_coefs_and_seeds():
    assert logic.parse_kl_coefs("0.02, 0.05 1e-1") == ([0.02, 0.05, 0.1], [])
    values, problems = logic.parse_kl_coefs("0.1, -1, abc, 0, nan")
    assert values == [0.1] and len(problems) == 4 and "'abc' is not a positive number" in problems
    assert logic.parse_kl_coefs("  ") == ([], [])
    assert logic.parse_seeds("1-3, 7 9, 10 - 11") == ([1, 2, 3, 7, 9, 10, 11], [])
    values, problems = logic.parse_seeds("2, x, 5-2, 0-5000, -1")
    assert values == [2] and len(problems) == 4
    assert logic.parse_seeds("0") == ([0], [])


def test_parse_config_yaml():
    assert logic.parse_config_yaml("") == ({}, None)
    assert logic.parse_config_yaml("algorithm: ppo\ntrain: {batch_size: 8}") == (
        {"algorithm": "ppo", "train": {"batch_size": 8}},
        None,
    )
    assert logic.parse_config_yaml('{"kl_coef": 0.1}') == ({"kl_coef": 0.1}, None)
    config, problem = logic.parse_config_yaml("train: [1,")
    assert config is None and problem.startswith("not valid YAML")
    config, problem = logic.parse_config_yaml("- a\n- b")
    assert config is None and "mapping" in problem


def summary(**kw):
    from backend.schemas import ExperimentSummary

    e = {
        "id": 3,
        "name": "klq-vs-ppo",
        "status": "running",
        "error": None,
        "grid": {"algorithms": ["klq", "ppo"], "kl_coefs": [0.05, 0.1], "seeds": [1, 2]},
        "tags": ["study", "x"],
        "notes": "",
        "queue": "gpu",
        "created_at": NOW.isoformat(),
        "judging_started_at": None,
        "cancel_requested": False,
        "progress": {
            "runs_total": 8,
            "runs_finished": 3,
            "runs_failed": 1,
            "judgements_total": 0,
            "judgements_finished": 0,
            "judgements_failed": 0,
        },
        "compute": {"run_hours": 0.75, "gpu_hours": 0.5, "wall_clock_s": 3700.0},
    }
    e.update(kw)
    return ExperimentSummary.model_validate(e).model_dump(mode="json")


def test_experiments_frame_and_progress():
    df = logic.experiments_frame([summary(), summary(id=4, status="judging", cancel_requested=True)])
    first = df.iloc[0]
    assert first["runs"] == "3/8 (1 failed)" and first["judgements"] == "0/0"
    assert first["progress"] == pytest.approx(3 / 8)
    assert first["algorithms"] == "KLQ, PPO" and first["tau"] == "0.05, 0.1" and first["seeds"] == 2
    assert first["wall-clock"] == "1h 01m" and first["run-hours"] == 0.75 and first["tags"] == "study, x"
    assert df.iloc[1]["status"] == "judging (cancelling)"
    assert logic.experiments_frame([]).empty
    progress = {"runs_total": 8, "runs_finished": 8, "judgements_total": 12, "judgements_finished": 2}
    assert logic.experiment_progress(progress) == pytest.approx(10 / 20)
    assert logic.experiment_progress({"runs_total": 0}) == 0.0
    assert logic.format_hours(0.4213) == "0.42 h" and logic.format_hours(None) == "–"
    assert logic.format_hours(1e-5) == "<0.01 h" and logic.format_hours(0.0) == "0.00 h"
    assert logic.format_hours(250.4) == "250 h"


def test_preview_frame():
    preview = {
        "runs": [
            {
                "name": f"e/{a}-tau0.05-s{s}",
                "algorithm": a,
                "kl_coef": 0.05,
                "seed": s,
                "config": {
                    "task": {"name": "builtin"},
                    "train": {"total_episodes": 640, "batch_size": 64, "learning_rate": 3e-4},
                },
            }
            for a in ("klq", "ppo")
            for s in (1, 2)
        ],
        "judgements": 6,
    }
    df = logic.preview_frame(preview)
    assert list(df["name"]) == [
        "e/klq-tau0.05-s1",
        "e/klq-tau0.05-s2",
        "e/ppo-tau0.05-s1",
        "e/ppo-tau0.05-s2",
    ]
    assert list(df["algorithm"]) == ["KLQ", "KLQ", "PPO", "PPO"] and set(df["iterations"]) == {10}
    assert set(df["task"]) == {"builtin"} and set(df["learning_rate"]) == {3e-4}


def test_results_frame_keeps_failed_runs_with_their_reason():
    results = results_json()
    df = logic.results_frame(results)
    assert list(zip(df["tau"], df["algorithm"])) == [(0.05, "KLQ"), (0.05, "PPO"), (0.1, "KLQ"), (0.1, "PPO")]
    klq = df.iloc[0]
    assert klq["reward"] == pytest.approx(0.65) and klq["reward 95% CI"] == "[0.1, 0.9]"
    assert klq["KL"] == pytest.approx(1.1) and klq["KL 95% CI"] == "[0.5, 1.5]"
    assert klq["rlhf_reward"] == pytest.approx(0.65 - 0.05 * 1.1)
    assert klq["gold"] is None and klq["gold 95% CI"] == "–"  # not logged
    assert klq["wall-clock (s)"] == 600.0 and klq["s/iteration"] == 0.5
    assert klq["seeds"] == "2/2 succeeded" and klq["failed"] == ""
    ppo = df.iloc[3]
    assert ppo["seeds"] == "1/2 succeeded" and ppo["reward"] == pytest.approx(0.35)
    assert ppo["reward 95% CI"] == "n=1"  # one seed: no interval
    assert ppo["failed"] == "#8 seed 2 failed: RuntimeError: CUDA out of memory"
    assert logic.results_frame({"rows": []}).empty


def test_format_ci_and_failed_text():
    assert logic.format_ci({"mean": 1.0, "ci_low": 0.123456, "ci_high": 2.0, "n": 3}) == "[0.1235, 2]"
    assert logic.format_ci({"mean": None, "ci_low": None, "ci_high": None, "n": 0}) == "–"
    assert logic.format_ci(None) == "–"
    long = {"run_id": 1, "seed": 0, "status": "cancelled", "error": "x" * 500}
    text = logic.failed_text([long, {"run_id": 2, "seed": 1, "status": "failed", "error": None}])
    assert text.startswith("#1 seed 0 cancelled: xxx") and text.endswith(
        "#2 seed 1 failed: (no reason recorded)"
    )
    assert len(text) < 300


def test_win_rates_and_not_judged():
    results = results_json()
    df = logic.win_rates_frame(results)
    assert list(zip(df["tau"], df["comparison"])) == [
        (0.05, "KLQ vs PPO"),
        (0.05, "KLQ vs SFT"),
        (0.05, "PPO vs SFT"),
        (0.1, "KLQ vs PPO"),
    ]
    first = df.iloc[0]
    assert first["win rate"] == pytest.approx(42 / 64) and first["95% CI"] == "50.0–74.0%"
    assert (first["wins"], first["losses"], first["ties"], first["prompts"], first["judgements"]) == (
        40,
        20,
        4,
        64,
        2,
    )
    pending = dict(results["win_rates"][0], win_rate=None, ci_low=None, ci_high=None, pending=2)
    assert logic.win_rates_frame({"win_rates": [pending]}).iloc[0]["95% CI"] == "–"
    skipped = logic.not_judged_frame(results)
    assert skipped.to_dict("records") == [
        {"tau": 0.1, "comparison": "PPO vs SFT", "seed": 2, "reason": "run 8 failed"}
    ]
    assert logic.win_rates_frame({}).empty and logic.not_judged_frame({}).empty


def test_length_diagnostics_and_leaderboard_frames():
    length = {
        "unit": "words", "prompts": 6, "mean_length_a": 42.0, "mean_length_b": 35.456, "lc_win_rate": 0.5812,
        "lc_ci_low": 0.44, "lc_ci_high": 0.712, "length_preference": 0.8, "length_scale": 7.0,
        "buckets": [
            {"low": None, "high": -2.5, "prompts": 3, "mean_diff": -6.0, "win_rate": 1 / 3, "ci_low": 0.06, "ci_high": 0.79},
            {"low": -2.5, "high": None, "prompts": 3, "mean_diff": 4.0, "win_rate": 1.0, "ci_low": None, "ci_high": None},
        ],
    }  # fmt: skip
    assert logic.format_lc_win_rate(length) == "58.1% (95% CI 44.0–71.2%)"
    assert logic.format_lc_win_rate(None) == "–" and logic.format_mean_lengths(None) == "–"
    assert logic.format_mean_lengths(length) == "42.0 / 35.5"
    buckets = logic.length_buckets_frame(length)
    assert list(buckets["words A − B"]) == ["[−∞, -2.5)", "[-2.5, ∞)"]
    assert list(buckets["95% CI"]) == ["6.0–79.0%", "–"] and list(buckets["prompts"]) == [3, 3]
    assert logic.length_buckets_frame(None).empty

    results = results_json()
    results["win_rates"][0]["length"] = length
    rates = logic.win_rates_frame(results)
    assert rates.iloc[0]["length-controlled"] == "58.1% (95% CI 44.0–71.2%)"
    assert rates.iloc[0]["words A / B"] == "42.0 / 35.5" and rates.iloc[1]["length-controlled"] == "–"

    def player(key, kind, rating, **extra):
        return {"player": key, "label": extra.pop("label", key), "kind": kind, "run_ids": extra.pop("run_ids", [1]),
                "step": None, "algorithm": None, "kl_coef": None, "reference": None, "rating": rating,
                "ci_low": rating - 50, "ci_high": rating + 50, "comparisons": 8, "wins": 5, "ties": 1,
                "losses": 2, **extra}  # fmt: skip

    board = {"players": [
        player("run:3@50", "run", 1100.4, label="#3 klq-a @ step 50", algorithm="klq"),
        player("algorithm_tau:ppo@0.05", "algorithm_tau", 1020.0, algorithm="ppo", kl_coef=0.05, run_ids=[4, 5]),
        player("reference:builtin:sft", "reference", 1000.0, reference="builtin:sft"),
    ]}  # fmt: skip
    df = logic.leaderboard_frame(board, {"klq": "KLQ"})
    assert list(df["rank"]) == [1, 2, 3]
    assert list(df["player"]) == ["#3 klq-a @ step 50 (KLQ)", "PPO τ=0.05", "SFT (builtin:sft)"]
    assert df.iloc[0]["95% CI"] == "1050–1150" and df.iloc[1]["runs"] == "#4, #5"
    assert logic.leaderboard_frame({"players": []}).empty


def test_points_and_frontier_lines_per_algorithm():
    results = results_json()
    points = logic.experiment_points_frame(results).set_index("run_id")
    assert len(points) == 8  # every run, the failed one too
    assert points.loc[8, "status"] == "failed" and math.isnan(points.loc[8, "kl"])
    assert points.loc[8, "run"] == "#8 s2 (failed)" and points.loc[1, "run"] == "#1 s1"
    assert set(points.index[points["on_frontier"]]) == {5, 6, 1, 2, 7, 4}
    lines = logic.frontier_lines(results)
    klq = lines[lines["algorithm"] == "KLQ"]
    assert list(klq["run_id"]) == [5, 6, 1, 2] and list(klq["order"]) == [0, 1, 2, 3]
    assert list(klq["kl"]) == [0.5, 0.6, 1.0, 1.2] and list(klq["reward"]) == [0.4, 0.45, 0.6, 0.7]
    assert list(lines[lines["algorithm"] == "PPO"]["run_id"]) == [7, 4]
    # the server's frontier agrees with the dashboard's own Pareto frontier, per algorithm
    for alg, ids in results["frontier"].items():
        ok = [p for p in results["points"] if p["algorithm"] == alg and p["status"] == "succeeded"]
        idx = logic.pareto_frontier([(p["kl"], p["reward"]) for p in ok])
        assert [ok[i]["run_id"] for i in idx] == ids
    # a frontier run without values (never expected) is skipped rather than drawn at 0
    assert list(logic.frontier_lines(dict(results, frontier={"ppo": [8, 7]}))["run_id"]) == [7]


def test_curves_frame():
    from backend.schemas import ExperimentCurves

    curves = ExperimentCurves.model_validate(
        {
            "key": "objective/scores",
            "max_points": 500,
            "curves": [
                {
                    "algorithm": "klq",
                    "kl_coef": 0.05,
                    "runs": [1, 2],
                    "steps": [1, 2, 3],
                    "mean": [0.1, 0.2, None],
                    "low": [0.0, 0.1, None],
                    "high": [0.2, 0.3, None],
                    "seeds_at_step": [2, 2, 0],
                },
                {
                    "algorithm": "ppo",
                    "kl_coef": 0.05,
                    "runs": [3],
                    "steps": [],
                    "mean": [],
                    "low": [],
                    "high": [],
                    "seeds_at_step": [],
                },
            ],
        }
    ).model_dump(mode="json")
    df = logic.curves_frame(curves)
    assert list(df.columns) == ["series", "algorithm", "tau", "step", "mean", "low", "high", "seeds"]
    assert set(df["series"]) == {"KLQ τ=0.05"} and list(df["step"]) == [1, 2, 3]
    assert list(df["mean"])[:2] == [0.1, 0.2] and math.isnan(df["mean"].iloc[2])
    assert list(df["seeds"]) == [2, 2, 0] and df["low"].dtype == "float64"
    assert logic.curves_frame({"curves": []}).empty


def test_experiment_runs_frame():
    detail = {
        "runs": [
            {
                "run_id": 1,
                "name": "e/klq-tau0.05-s1",
                "algorithm": "klq",
                "kl_coef": 0.05,
                "seed": 1,
                "status": "succeeded",
                "iteration": 10,
                "total_iterations": 10,
                "error": None,
                "started_at": NOW.isoformat(),
                "finished_at": (NOW + timedelta(seconds=75)).isoformat(),
            },
            {
                "run_id": 2,
                "name": "e/ppo-tau0.05-s1",
                "algorithm": "ppo",
                "kl_coef": 0.05,
                "seed": 1,
                "status": "failed",
                "iteration": 3,
                "total_iterations": 10,
                "error": "ValueError: <b>x</b>\nmore",
                "started_at": NOW.isoformat(),
                "finished_at": None,
            },
        ]
    }
    df = logic.experiment_runs_frame(detail)
    assert (
        df.iloc[0]["duration"] == "1m 15s"
        and df.iloc[0]["iteration"] == "10/10"
        and df.iloc[0]["error"] == ""
    )
    assert df.iloc[1]["error"] == "ValueError: <b>x</b>" and df.iloc[1]["algorithm"] == "PPO"
