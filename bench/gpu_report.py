"""The report of bench/gpu_check.sh: OUT/gpu_report.md, OUT/gpu_report.json, OUT/gpu_check_logs.txt.

Reads what the stages left in the work directory (standard library only, so that it runs whatever failed):
stages.tsv (each stage's status, exit code, seconds, limit), env-*.json (versions and the GPU as each
stage's Python saw them), nvidia-smi.txt, gpu_tests.xml (pytest's junit XML, xunit1: each test's outcome,
time, skip reason and its peak_memory_gib property), throughput-<side>.json (bench/train_throughput.py
--json; the table comes from train_throughput.py --report-from, unedited), and every stage's log.
Prints the summary last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOAL_EPISODES_PER_S = 12.0  # ours PPO at the Pythia-1B shape on one H100/H200 (issue 9 and 17)
TRL_ISSUE_EPISODES_PER_S = 1.95  # TRL's PPOTrainer at that shape on one H100, as the issue measured it
LOG_TAIL_BYTES = 400_000  # per stage log in gpu_check_logs.txt (the device tool returns files up to 16 MB)


def read_stages(work: Path) -> list[dict]:
    """stages.tsv -> [{stage, status, rc, seconds, limit, note}]."""
    lines = (work / "stages.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    rows = [dict(zip(head, line.split("\t"))) for line in lines[1:] if line.strip()]
    for row in rows:
        row["seconds"] = float(row.get("seconds") or 0)
    return rows


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_tests(xml_file: Path) -> dict | None:
    """pytest's junit XML -> counts and one row per test (outcome, seconds, message, properties)."""
    if not xml_file.exists():
        return None
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as err:
        return {"error": f"unreadable junit XML: {err}"}
    cases = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (node.get("message") or node.text or "").strip()
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases.append({"name": case.get("name"), "module": case.get("classname"), "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message[:2000], "properties": props})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "cases": cases}


def throughput(work: Path) -> dict:
    """Each side's summary from its --json file, ratios, and train_throughput's own table over all of them."""
    files = sorted(work.glob("throughput-*.json"))
    sides: dict[str, dict] = {}
    args: dict = {}
    for path in files:
        saved = read_json(path)
        if not saved:
            continue
        args = args or saved["args"]
        for side, summary in saved["summary"].items():
            runs = saved["results"][side]
            peaks = [r.get("peak_gib") for r in runs if r.get("peak_gib")]
            sides[side] = {
                "iteration_s": summary["iteration_s"], "best_s": summary["best_s"], "cpu_s": summary["cpu_s"],
                "episodes_per_s": saved["args"]["batch_size"] / summary["iteration_s"],
                "generation_s": summary["generation"], "scoring_s": summary["scoring"],
                "training_s": summary["training"], "peak_gpu_gib": max(peaks) if peaks else None,
                "peak_rss_gib": summary.get("peak_rss_gib"), "iterations": [r["iteration_s"] for r in runs],
            }
    table = ""
    if files:
        done = subprocess.run([sys.executable, str(HERE / "train_throughput.py"), "--report-from",
                               *map(str, files)], capture_output=True, text=True)
        table = done.stdout.strip() or done.stderr.strip()[-2000:]
    result: dict = {"sides": sides, "table": table, "batch_size": args.get("batch_size")}
    ours, trl = sides.get("ours-ppo"), sides.get("trl")
    if ours:
        result["goal_episodes_per_s"] = GOAL_EPISODES_PER_S
        result["ours_ppo_episodes_per_s"] = ours["episodes_per_s"]
        if trl:
            result["ours_ppo_over_trl"] = ours["episodes_per_s"] / trl["episodes_per_s"]
            result["trl_source"] = "measured in this run"
        else:
            result["ours_ppo_over_trl"] = ours["episodes_per_s"] / TRL_ISSUE_EPISODES_PER_S
            result["trl_source"] = f"not measured in this run: the issue's {TRL_ISSUE_EPISODES_PER_S} episodes/s"
    return result


def write_logs(work: Path, stages: list[dict], path: Path) -> None:
    with path.open("w") as out:
        for row in stages:
            log = work / f"{row['stage']}.log"
            out.write(f"===== {row['stage']}: {row['status']} (exit {row['rc']}, {row['seconds']:.1f} s) =====\n")
            if log.exists():
                data = log.read_bytes()
                if len(data) > LOG_TAIL_BYTES:
                    out.write(f"[... first {len(data) - LOG_TAIL_BYTES} bytes left out ...]\n")
                out.write(data[-LOG_TAIL_BYTES:].decode(errors="replace"))
            out.write("\n")


def markdown(report: dict) -> str:
    env = report["env"].get("klq") or report["env"].get("image") or {}
    gpu = env.get("gpu") or {}
    lines = [
        f"# bench/gpu_check.sh: {report['device']}, shape {report['shape']}",
        "",
        f"- started {report['started']}, {report['total_s']:.0f} s of a {report['budget_s']} s budget; "
        f"commit {report['commit']}",
        f"- GPU: {gpu.get('name', 'none')} ({gpu.get('memory_gib', '-')} GiB, compute capability "
        f"{gpu.get('capability', '-')}); nvidia-smi: {report['nvidia_smi'] or '-'}",
        f"- python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), transformers "
        f"{env.get('transformers')}, accelerate {env.get('accelerate')}, pydantic {env.get('pydantic')}",
    ]
    if report["env"].get("trl"):
        t = report["env"]["trl"]
        lines.append(f"- TRL side: trl {t.get('trl')}, transformers {t.get('transformers')}, datasets {t.get('datasets')}")
    lines += ["", "## Stages", "", "| stage | status | exit | seconds | limit | note |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {s['stage']} | {s['status']} | {s['rc']} | {s['seconds']:.1f} | {s['limit']} | {s.get('note', '')} |"
              for s in report["stages"]]
    tests = report.get("tests")
    lines += ["", "## GPU tests (tests/gpu)", ""]
    if not tests:
        lines.append("not run (see the stages)")
    elif "error" in tests:
        lines.append(tests["error"])
    else:
        c = tests["counts"]
        lines += [f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped", "",
                  "| test | outcome | seconds | peak GPU memory (GiB) | message |", "| --- | --- | --- | --- | --- |"]
        for case in tests["cases"]:
            message = case["message"].replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {case['name']} | {case['outcome']} | {case['seconds']:.1f} | "
                         f"{case['properties'].get('peak_memory_gib', '-')} | {message} |")
    tp = report["throughput"]
    lines += ["", "## Throughput (bench/train_throughput.py, one side per stage)", ""]
    if tp.get("table"):
        lines += ["```", tp["table"], "```", ""]
    if "ours_ppo_episodes_per_s" in tp:
        met = "met" if tp["ours_ppo_episodes_per_s"] >= tp["goal_episodes_per_s"] else "not met"
        lines.append(f"ours PPO: {tp['ours_ppo_episodes_per_s']:.2f} episodes/s (goal >= {tp['goal_episodes_per_s']:g}: "
                     f"{met}); {tp['ours_ppo_over_trl']:.2f}x TRL ({tp['trl_source']})")
    else:
        lines.append("ours PPO: not measured (see the stages)")
    return "\n".join(lines) + "\n"


def summary_lines(report: dict) -> list[str]:
    out = [f"gpu_check: {report['device']} {report['shape']}, {report['total_s']:.0f} s, commit {report['commit']}"]
    out += [f"  {s['stage']:<10} {s['status']:<8} {s['seconds']:6.1f} s  {s.get('note', '')}" for s in report["stages"]]
    tests = report.get("tests")
    if tests and "counts" in tests:
        c = tests["counts"]
        out.append(f"  tests: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped")
        for case in tests["cases"]:
            if case["outcome"] != "passed":
                out.append(f"    {case['outcome']}: {case['name']}: {case['message'].splitlines()[0][:200] if case['message'] else ''}")
        peaks = [float(c["properties"]["peak_memory_gib"]) for c in tests["cases"] if "peak_memory_gib" in c["properties"]]
        if peaks:
            out.append(f"    peak GPU memory of a test: {max(peaks):.2f} GiB")
    tp = report["throughput"]
    for side, s in tp["sides"].items():
        peak = f", peak GPU {s['peak_gpu_gib']:.1f} GiB" if s["peak_gpu_gib"] else ""
        out.append(f"  {side:<9} {s['episodes_per_s']:.2f} episodes/s ({s['iteration_s']:.2f} s/iteration: gen "
                   f"{s['generation_s']:.2f}, score {s['scoring_s']:.2f}, train {s['training_s']:.2f}){peak}")
    if "ours_ppo_episodes_per_s" in tp:
        out.append(f"  ours PPO / TRL: {tp['ours_ppo_over_trl']:.2f}x ({tp['trl_source']}); goal >= "
                   f"{tp['goal_episodes_per_s']:g} episodes/s: "
                   f"{'met' if tp['ours_ppo_episodes_per_s'] >= tp['goal_episodes_per_s'] else 'not met'}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", required=True)
    p.add_argument("--shape", required=True)
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--started", type=int, required=True, help="epoch seconds")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    stages = read_stages(a.work)
    smi = (a.work / "nvidia-smi.txt").read_text().strip().splitlines() if (a.work / "nvidia-smi.txt").exists() else []
    commit = (a.work / "commit.txt").read_text().strip() if (a.work / "commit.txt").exists() else "unknown"
    report = {
        "device": a.device, "shape": a.shape, "budget_s": a.budget,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(a.started)),
        "total_s": time.time() - a.started, "commit": commit,
        "nvidia_smi": smi[-1] if len(smi) > 1 else "",
        "env": {name: read_json(a.work / f"env-{name}.json") for name in ("image", "klq", "trl")},
        "stages": stages,
        "tests": read_tests(a.work / "gpu_tests.xml"),
        "throughput": throughput(a.work),
    }
    (a.out / "gpu_report.json").write_text(json.dumps(report, indent=2))
    (a.out / "gpu_report.md").write_text(markdown(report))
    write_logs(a.work, stages, a.out / "gpu_check_logs.txt")
    print(report["throughput"].get("table", ""))
    print()
    print("\n".join(summary_lines(report)))
    print(f"report: {a.out / 'gpu_report.md'}, {a.out / 'gpu_report.json'}; logs: {a.out / 'gpu_check_logs.txt'}")


if __name__ == "__main__":
    main()
