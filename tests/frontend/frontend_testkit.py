"""Helpers of the frontend tests: seeding a real API's database through backend.store (as a worker
writes), running dashboard pages in Streamlit's AppTest, and the end-to-end stack (API + `klq ui`) with a
real headless Chromium."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import pytest
from backend_testkit import REPO, Server, free_port, served_database
from streamlit.testing.v1 import AppTest

from backend import store

APP = REPO / "frontend" / "app.py"
TIMEOUT = 30

XSS_RESPONSE = "<script>alert('xss')</script> <b>bold</b> **not bold** [link](http://example.com) :red[x]"
XSS_PROMPT = "<i>italic?</i> review the tea :"
XSS_JUDGE = "<b>A</b> is better <script>steal()</script>"
PROMPTS = {
    "p0": "review the coffee :",
    "p1": "review the cake :",
    "p2": XSS_PROMPT,
    "p3": "review the soup :",
}


def seed_config(algorithm: str = "klq", *, kl_coef: float = 0.05, iterations: int = 50, **extra: Any) -> dict:
    """A valid run configuration of ``iterations`` iterations (never trained: there is no worker)."""
    cfg = {
        "algorithm": algorithm,
        "kl_coef": kl_coef,
        "train": {
            "total_episodes": 8 * iterations,
            "batch_size": 8,
            "minibatch_size": 4,
            "micro_batch_size": 4,
        },
    }
    cfg.update(extra)
    return cfg


def metric_rows(steps: range, values: dict[str, Any], wall0: float = 1.7e9) -> list[tuple]:
    """(key, step, value, wall_time) rows: ``values`` maps key -> f(step)."""
    return [(k, s, float(f(s)), wall0 + 0.5 * s) for s in steps for k, f in values.items()]


KLQ_METRICS = {
    "objective/scores": lambda s: 0.2 + 0.01 * s,
    "objective/gold_scores": lambda s: 0.1 + 0.008 * s,
    "objective/kl": lambda s: 0.05 * s,
    "objective/rlhf_reward": lambda s: 0.2 + 0.0075 * s,
    "objective/entropy": lambda s: 5.0 - 0.01 * s,
    "loss/q_avg": lambda s: 1.0 / s,
    "q/target_avg": lambda s: 0.3,
    "timing/iteration_s": lambda s: 0.5,
    "episode": lambda s: 8 * s,
}
PPO_METRICS = {
    "objective/scores": lambda s: 0.1 + 0.012 * s,
    "objective/kl": lambda s: 0.08 * s,
    "objective/rlhf_reward": lambda s: 0.1 + 0.008 * s,
    "loss/policy_avg": lambda s: -0.01,
    "loss/value_avg": lambda s: 0.5 / s,
    "timing/iteration_s": lambda s: 0.6,
}


@dataclass
class Seeded:
    klq: int
    ppo: int
    live: int
    failed: int
    queued: int
    judgement: int
    queued_judgement: int
    checkpoint: int
    ids: dict[str, int] = field(default_factory=dict)


def _run(session, server: Server, name: str, cfg: dict, *, tags: tuple[str, ...] = ("seed",)) -> int:
    run = store.create_run(session, cfg, name=name, tags=tags, notes=f"seeded {name}", queue="gpu")
    return run.id


def _start(session, run_id: int, iteration: int) -> None:
    store.set_status(session, run_id, "running")
    store.set_progress(
        session,
        run_id,
        iteration=iteration,
        episodes=8 * iteration,
        worker_host="test-host",
        worker_gpu="cpu",
    )


def samples(step: int, responses: dict[str, str], score0: float) -> list[dict]:
    return [
        {
            "step": step,
            "prompt_id": pid,
            "prompt": PROMPTS[pid],
            "response": responses[pid],
            "score": score0 + i / 10,
            "gold_score": score0 / 2 + i / 20,
            "kl": 1.0 + i,
        }
        for i, pid in enumerate(PROMPTS)
    ]


def seed(server: Server) -> Seeded:
    """Runs as a worker leaves them: a finished KLQ and PPO run with curves, samples, a checkpoint and a
    judgement between them; a running run; a failed run; a queued run and a queued judgement."""
    with server.db.write_session() as s:
        klq = _run(s, server, "seed-klq", seed_config("klq", kl_coef=0.05))
        ppo = _run(s, server, "seed-ppo", seed_config("ppo", kl_coef=0.1))
        live = _run(s, server, "seed-live", seed_config("klq", iterations=100))
        failed = _run(s, server, "seed-failed", seed_config("klq", kl_coef=0.01, iterations=10))
        queued = _run(s, server, "seed-queued", seed_config("ppo"), tags=("seed", "waiting"))

        for rid, metrics, n in ((klq, KLQ_METRICS, 50), (ppo, PPO_METRICS, 50)):
            _start(s, rid, n)
            store.write_metrics(s, rid, metric_rows(range(1, n + 1), metrics))
        store.write_metrics(s, klq, [("eval/scores", st, 0.3 + st / 100, None) for st in range(10, 51, 10)])

        base = {pid: f"the {PROMPTS[pid].split()[-2]} was good ." for pid in PROMPTS}
        store.write_samples(s, klq, samples(25, base, 0.3))
        store.write_samples(s, klq, samples(50, {**base, "p0": "the coffee was very good ."}, 0.5))
        ppo_text = {**base, "p0": "the coffee was hot and good .", "p1": XSS_RESPONSE}
        store.write_samples(s, ppo, samples(25, base, 0.2))
        store.write_samples(s, ppo, samples(50, ppo_text, 0.4))

        ckpt_dir = server.data_dir / "runs" / str(klq) / "checkpoints" / "step-0000050"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        (ckpt_dir / "model.safetensors").write_bytes(b"\0" * 64)
        checkpoint = store.add_checkpoint(s, klq, 50, ckpt_dir, is_final=True).id
        for rid in (klq, ppo):
            store.finish_run(s, rid, "succeeded")

        _start(s, live, 10)
        store.write_metrics(s, live, metric_rows(range(1, 11), KLQ_METRICS, wall0=time.time() - 20))

        _start(s, failed, 5)
        store.write_metrics(
            s,
            failed,
            metric_rows(range(1, 6), {"objective/scores": lambda st: 0.9, "objective/kl": lambda st: 5.0}),
        )
        store.finish_run(
            s, failed, "failed", error="RuntimeError: CUDA out of memory <b>not html</b>\nTraceback line 2"
        )

        j = store.create_judgement(
            s,
            run_a_id=klq,
            run_b_id=ppo,
            num_prompts=4,
            judge={"backend": "gold", "decoding": "greedy"},
            queue="gpu",
        )
        store.set_judgement_status(s, j.id, "running")
        verdicts = []
        for i, pid in enumerate(PROMPTS):
            for order in ("ab", "ba"):
                verdicts.append(
                    {
                        "prompt_id": pid,
                        "order": order,
                        "verdict": "A" if i < 3 else "B",
                        "prompt": PROMPTS[pid],
                        "response_a": base[pid],
                        "response_b": ppo_text[pid],
                        "raw_output": XSS_JUDGE,
                    }
                )
        store.record_verdicts(s, j.id, verdicts)
        store.set_judgement_status(s, j.id, "succeeded")
        judgement = j.id
        queued_j = store.create_judgement(
            s, run_a_id=klq, num_prompts=8, judge={"backend": "gold"}, queue="gpu"
        ).id
    return Seeded(
        klq,
        ppo,
        live,
        failed,
        queued,
        judgement,
        queued_j,
        checkpoint,
        {"seed-klq": klq, "seed-ppo": ppo, "seed-live": live, "seed-failed": failed, "seed-queued": queued},
    )


# --- experiments -----------------------------------------------------------------------------------------

EXPERIMENT_TAUS = (0.05, 0.1)
EXPERIMENT_SEEDS = (1, 2)
EXPERIMENT_STEPS = 20
EXPERIMENT_ERROR = "RuntimeError: CUDA out of memory <b>not html</b>\nTraceback line 2"


def experiment_final(algorithm: str, tau: float, seed: int) -> tuple[float, float]:
    """The final (reward, KL) of a seeded experiment run: less reward and KL at a larger tau, KLQ ahead.
    Rewards stay below the Compare page tests' failed run (0.9 at KL 5), which must stay on the frontier
    of all runs."""
    if algorithm == "klq":
        return 0.7 - 2 * tau + 0.02 * seed, 2.0 - 10 * tau + 0.1 * seed
    return 0.6 - 2 * tau + 0.03 * seed, 3.0 - 10 * tau + 0.2 * seed


@dataclass
class SeededExperiment:
    id: int
    runs: dict[tuple[str, float, int], int]  # (algorithm, tau, seed) -> run id
    failed: int  # PPO at tau 0.1, seed 2
    judgements: dict[str, list[int]]  # kind -> judgement ids
    active: int  # a second experiment whose runs are still queued


def seed_experiment(server: Server) -> SeededExperiment:
    """An experiment as the worker leaves it: KLQ and PPO x tau 0.05, 0.1 x seeds 1, 2 (8 runs) trained
    for 20 steps, PPO's tau-0.1 seed-2 run failed at step 5 (with markup in its error), and the
    judgements the experiment queued when its last run ended, judged with verdicts (KLQ wins 3 of 4
    prompts against PPO; each policy wins 3 of 4 against SFT and ties one). Also a second experiment,
    still queued, with no worker to run it."""
    from backend.schemas import ExperimentGrid, ExperimentJudge
    from klq.config import RunConfig

    judge = ExperimentJudge(num_prompts=len(PROMPTS)).model_dump(mode="json", exclude_none=True)
    with server.db.write_session() as s:
        exp, rows = store.create_experiment(
            s,
            name="study",
            base=RunConfig.model_validate(seed_config(iterations=EXPERIMENT_STEPS)),
            grid=ExperimentGrid(
                algorithms=["klq", "ppo"], kl_coefs=list(EXPERIMENT_TAUS), seeds=list(EXPERIMENT_SEEDS)
            ),
            judge=judge,
            tags=["study"],
            queue="gpu",
        )
        runs = {(r.algorithm, r.config["kl_coef"], r.config["seed"]): r.id for r in rows}
        failed = runs[("ppo", 0.1, 2)]
        for (algorithm, tau, seed), rid in runs.items():
            reward, kl = experiment_final(algorithm, tau, seed)
            steps = EXPERIMENT_STEPS if rid != failed else 5
            _start(s, rid, steps)
            curves = {
                "objective/scores": lambda st, r=reward: r * st / EXPERIMENT_STEPS,
                "objective/kl": lambda st, k=kl: k * st / EXPERIMENT_STEPS,
                "objective/rlhf_reward": lambda st, r=reward, k=kl, t=tau: (
                    (r - t * k) * st / EXPERIMENT_STEPS
                ),
                "timing/iteration_s": lambda st, a=algorithm: 0.5 if a == "klq" else 0.6,
            }
            store.write_metrics(s, rid, metric_rows(range(1, steps + 1), curves))
            if rid == failed:
                store.finish_run(s, rid, "failed", error=EXPERIMENT_ERROR)
            else:
                store.finish_run(s, rid, "succeeded")
        judgements: dict[str, list[int]] = {}
        for j in store.claim_judging(s, exp.id):
            judgements.setdefault(j.kind, []).append(j.id)
            store.set_judgement_status(s, j.id, "running")
            losing = "B" if j.kind == "klq_vs_ppo" else "tie"
            store.record_verdicts(
                s,
                j.id,
                [
                    {
                        "prompt_id": pid,
                        "order": order,
                        "verdict": "A" if i < 3 else losing,
                        "prompt": PROMPTS[pid],
                        "response_a": f"policy {j.run_a_id} on {pid}",
                        "response_b": f"policy {j.run_b_id} on {pid}",
                        "raw_output": XSS_JUDGE,
                    }
                    for i, pid in enumerate(PROMPTS)
                    for order in ("ab", "ba")
                ],
            )
            store.set_judgement_status(s, j.id, "succeeded")
        active, _ = store.create_experiment(
            s,
            name="waiting",
            base=RunConfig.model_validate(seed_config()),
            grid=ExperimentGrid(algorithms=["klq", "ppo"], kl_coefs=[0.2], seeds=[7]),
            judge=judge,
            queue="gpu",
        )
        return SeededExperiment(exp.id, runs, failed, judgements, active.id)


# --- AppTest ---------------------------------------------------------------------------------------------


def page(
    name: str, query: dict[str, Any] | None = None, *, tab: str | None = None, run: bool = True
) -> AppTest:
    """The dashboard (frontend/app.py) on one of its pages (frontend/views/<name>.py), run once; ``tab``:
    the page's open tab (only the open tab is drawn)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    for key, value in (query or {}).items():
        at.query_params[key] = str(value)
    if tab is not None:
        at.session_state[f"{name}.tab"] = tab
    at.switch_page(f"views/{name}.py")
    if run:
        at.run()
        check(at)
    return at


def open_tab(at: AppTest, name: str, tab: str) -> AppTest:
    at.session_state[f"{name}.tab"] = tab
    at.run()
    check(at)
    return at


def check(at: AppTest) -> None:
    """No uncaught exception on the page."""
    assert not at.exception, "\n".join(str(e.value) for e in at.exception)


def walk(node: Any) -> Iterator[Any]:
    """Every node of an AppTest tree, in page order."""
    yield node
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for key in sorted(children):
            yield from walk(children[key])


def elements(at: AppTest) -> list[Any]:
    return [
        n for n in walk(at.main) if not hasattr(n, "children") or n.type not in ("vertical", "horizontal")
    ]


def texts(at: AppTest, kind: str) -> list[str]:
    """Values of all elements of this kind (e.g. 'code', 'markdown', 'error', 'caption')."""
    return [str(getattr(e, "value", "")) for e in getattr(at, kind)]


def all_text(at: AppTest) -> str:
    parts = []
    for kind in (
        "title",
        "header",
        "subheader",
        "markdown",
        "caption",
        "code",
        "text",
        "error",
        "warning",
        "info",
        "success",
    ):
        parts += texts(at, kind)
    return "\n".join(parts)


def widget(at: AppTest, key: str) -> Any:
    return at.get_by_key(key) if hasattr(at, "get_by_key") else at.main.get_by_key(key)


def checkpoint_dir(server: Server, run_id: int) -> Path:
    return server.data_dir / "runs" / str(run_id) / "checkpoints" / "step-0000050"


# --- human votes -----------------------------------------------------------------------------------------

VOTE_MARKUP = "<script>document.title='pwned'</script> see [the docs](http://example.com) **now**"


@dataclass
class SeededVotes:
    run_a: int
    run_b: int
    name_a: str
    name_b: str
    judgement: int  # an automatic (gold) judgement of run_a against run_b, with verdicts on every prompt
    responses: dict[str, tuple[str, str]]  # prompt_id -> (run_a's response, run_b's)


def seed_votes(server: Server, tag: str) -> SeededVotes:
    """Two finished runs of their own (names ``vote-<tag>-left-run`` / ``-right-run``, tag ``votes``) with
    samples at step 10 on three prompts (one response carries HTML and a Markdown link) and a finished gold
    judgement of them whose verdicts carry the same responses: what a voting session is made from."""
    name_a, name_b = f"vote-{tag}-alpha-run", f"vote-{tag}-omega-run"
    prompts = {"v0": "describe the sea :", "v1": "describe the hill :", "v2": XSS_PROMPT}
    responses = {
        "v0": ("the sea is blue .", "the sea is blue and very wide ."),
        "v1": (VOTE_MARKUP, "the hill is green ."),
        "v2": ("the tea was fine .", "the tea was bitter ."),
    }
    with server.db.write_session() as s:
        a = _run(s, server, name_a, seed_config("klq"), tags=("votes",))
        b = _run(s, server, name_b, seed_config("ppo"), tags=("votes",))
        for rid, side in ((a, 0), (b, 1)):
            store.write_samples(
                s,
                rid,
                [
                    {"step": 10, "prompt_id": pid, "prompt": prompts[pid], "response": responses[pid][side]}
                    for pid in prompts
                ],
            )
            store.finish_run(s, rid, "succeeded")
        j = store.create_judgement(s, run_a_id=a, run_b_id=b, num_prompts=3, judge={"backend": "gold"})
        store.set_judgement_status(s, j.id, "running")
        store.record_verdicts(
            s,
            j.id,
            [
                {
                    "prompt_id": pid,
                    "order": order,
                    "verdict": "A" if pid != "v1" else "B",
                    "prompt": prompts[pid],
                    "response_a": responses[pid][0],
                    "response_b": responses[pid][1],
                    "raw_output": "gold",
                }
                for pid in prompts
                for order in ("ab", "ba")
            ],
        )
        store.set_judgement_status(s, j.id, "succeeded")
    return SeededVotes(a, b, name_a, name_b, j.id, responses)


# --- token records (issue 14) ----------------------------------------------------------------------------

TOKEN_SCRIPT = "<script>alert(1)</script>"
TOKEN_LINK = "[x](http://e.com)"
TOKEN_STEPS = (10, 20, 30)
TOKEN_PROMPTS = {"t0": "review the tea :", "t1": "review the <b>cake</b> :"}


def token_record(pieces: list[str], quantities: dict[str, list[float | None]]) -> dict:
    """A token record as the trainer captures it (a SampleTokens' token_ids, tokens and quantities)."""
    return {"token_ids": [1000 + i for i in range(len(pieces))], "tokens": pieces, "quantities": quantities}


def klq_quantities(n: int, step: int, offset: float) -> dict[str, list[float | None]]:
    """Per-token quantities of a KLQ sample (k1 of both signs, growing with the step)."""
    k1 = [(step / 10) * (0.3 if i % 2 == 0 else -0.1) + offset for i in range(n)]
    value = [0.1 * i for i in range(n)]
    return {
        "logp": [-1.0 - 0.1 * i for i in range(n)],
        "logp_ref": [-1.0 - 0.1 * i - k for i, k in enumerate(k1)],
        "k1": k1,
        "k3": [math.exp(-k) - 1 + k for k in k1],
        "entropy": [2.0 + 0.05 * i for i in range(n)],
        "value": value,
        "q": [0.05 * k + v for k, v in zip(k1, value)],
        "delta": [0.01 * (i - n / 2) for i in range(n)],
        "target": [0.2 + 0.01 * i for i in range(n)],
    }


def ppo_quantities(n: int, step: int, offset: float) -> dict[str, list[float | None]]:
    """Per-token quantities of a PPO sample (its KL spent on the last tokens)."""
    k1 = [(step / 10) * (0.5 if i >= n - 2 else 0.02) + offset for i in range(n)]
    return {
        "logp": [-1.2 - 0.1 * i for i in range(n)],
        "logp_ref": [-1.2 - 0.1 * i - k for i, k in enumerate(k1)],
        "k1": k1,
        "k3": [math.exp(-k) - 1 + k for k in k1],
        "entropy": [1.5] * n,
        "value": [0.3] * n,
        "reward": [-0.1 * k for k in k1[:-1]] + [1.0 - 0.1 * k1[-1]],
        "advantage_raw": [0.2 * (i - 1) for i in range(n)],
        "advantage": [0.5 * (i - 1) for i in range(n)],
        "return": [0.3 + 0.2 * (i - 1) for i in range(n)],
    }


TOKEN_PIECES = {  # t0's response holds markup that must show literally, t1's a line break
    "t0": [TOKEN_SCRIPT, " the", " tea", " ", TOKEN_LINK, " ."],
    "t1": [" the", " cake", "\n", " was", " good"],
}


@dataclass
class SeededTokens:
    klq: int
    ppo: int
    samples: dict[tuple[int, str, int], int]  # (run, prompt id, step) -> eval sample id
    train: dict[int, int]  # sample_index -> sample id of the KLQ run's training rollouts at the last step


def seed_tokens(server: Server) -> SeededTokens:
    """A KLQ and a PPO run with token records, as a worker writes them: eval samples of prompts t0 and t1 at
    steps 10, 20, 30, and (KLQ) four training rollouts of iteration 30 with different scores, gold scores,
    KL and lengths."""
    with server.db.write_session() as s:
        klq = _run(s, server, "tokens-klq", seed_config("klq", kl_coef=0.05, iterations=30))
        ppo = _run(s, server, "tokens-ppo", seed_config("ppo", kl_coef=0.1, iterations=30))
        for rid, quantities in ((klq, klq_quantities), (ppo, ppo_quantities)):
            _start(s, rid, 30)
            rows = []
            for step in TOKEN_STEPS:
                for i, pid in enumerate(TOKEN_PROMPTS):
                    pieces = TOKEN_PIECES[pid]
                    q = quantities(len(pieces), step, 0.01 * i)
                    rows.append(
                        {
                            "step": step,
                            "prompt_id": pid,
                            "prompt": TOKEN_PROMPTS[pid],
                            "response": "".join(pieces),
                            "response_length": len(pieces),
                            "score": 0.01 * step + i,
                            "gold_score": 0.005 * step,
                            "kl": math.fsum(q["k1"]),
                            "tokens": token_record(pieces, q),
                        }
                    )
            store.write_samples(s, rid, rows)
        train = []
        for index, (score, gold, n) in enumerate(
            [(0.9, 0.1, 3), (0.2, 0.3, 5), (0.5, 0.5, 4), (0.7, -0.2, 2)]
        ):
            pieces = [f" w{j}" for j in range(n)]
            q = klq_quantities(n, 30, 0.1 * index)
            train.append(
                {
                    "kind": "train",
                    "step": 30,
                    "prompt_id": "t0",
                    "sample_index": index,
                    "prompt": TOKEN_PROMPTS["t0"],
                    "response": "".join(pieces),
                    "response_length": n,
                    "score": score,
                    "gold_score": gold,
                    "kl": math.fsum(q["k1"]),
                    "tokens": token_record(pieces, q),
                }
            )
        store.write_samples(s, klq, train)
        for rid in (klq, ppo):
            store.finish_run(s, rid, "succeeded")
        ids = {
            (row.run_id, row.prompt_id, row.step): row.id
            for rid in (klq, ppo)
            for row in store.list_samples(s, rid, limit=100)[0]
        }
        train_ids = {
            row.sample_index: row.id for row in store.list_samples(s, klq, kind="train", limit=100)[0]
        }
    return SeededTokens(klq, ppo, ids, train_ids)


# --- end to end in Chromium ------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "e2e"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CHROMIUM_MARKS = [  # the pytestmark of every end-to-end module
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing: install Debian's chromium "
        "(apt-get install -y chromium; `./klq-lab test` does it when run as root)",
    ),
]


def spawn_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`klq <args>` in its own process group, stdout and stderr into ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "klqlab.cli", *args],
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_cli(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of ``proc`` (spawn_cli's), SIGKILL if it is still there after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_ui(ui: subprocess.Popen, ui_url: str, log: Path, timeout: float = 60) -> None:
    """Wait until the Streamlit server answers its health check; fail with its log if it died or hung."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ui_url + "/_stcore/health", timeout=2).text == "ok":
                return
        if ui.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the UI did not start:\n" + log.read_text())
        time.sleep(0.3)


T = TypeVar("T")


@dataclass
class UiStack(Generic[T]):
    api: Server
    ui_url: str
    seeded: T  # what the ``seed`` given to ui_stack returned


@contextlib.contextmanager
def ui_stack(tmp: Path, seed: Callable[[Server], T], log_name: str) -> Iterator[UiStack[T]]:
    """A fresh, migrated SQLite database under ``tmp`` behind a real API server, seeded by ``seed(api)``,
    and the dashboard (`klq ui`, no worker) on a free port, pointed at it. On exit both are stopped and
    the dashboard's log is copied to ARTIFACTS / ``log_name``."""
    data = tmp / "data"
    with served_database("sqlite", tmp, data) as api:
        ui = None
        try:
            seeded = seed(api)
            port = free_port()
            ui = spawn_cli(
                ["ui", "--port", str(port), "--api-url", api.url],
                dict(api.env, KLQ_PRINT_INITIAL_TOKEN="false"),
                data / "ui.log",
            )
            ui_url = f"http://127.0.0.1:{port}"
            wait_ui(ui, ui_url, data / "ui.log")
            yield UiStack(api, ui_url, seeded)
        finally:
            if ui is not None:
                stop_cli(ui)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(data / "ui.log", ARTIFACTS / log_name)


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    """Debian's headless Chromium (CHROMIUM, CHROMIUM_ARGS) driven by Playwright: a playwright Browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_browser_tab(browser: Any, height: int, *, watch_dialogs: bool = True) -> Iterator[Any]:
    """A new page of ``browser`` (1440 x ``height`` px, 30 s default timeout). With ``watch_dialogs``,
    every dialog (alert, confirm, ...) is dismissed and recorded, and the block must end with none: an
    injected script's alert() would open one."""
    page = browser.new_page(viewport={"width": 1440, "height": height})
    page.set_default_timeout(30_000)
    dialogs: list[str] = []
    if watch_dialogs:
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        yield page
        assert not dialogs, f"a dialog opened (a script ran?): {dialogs}"
    finally:
        page.close()


def stack_fixture(tmp_name: str, seed: Callable[[Server], Any], log_name: str) -> Any:
    """A module-scoped pytest fixture ``stack``: ui_stack(<a fresh tmp folder named tmp_name>, seed,
    log_name)'s UiStack. Assign it in the test module: ``stack = stack_fixture(...)``."""

    @pytest.fixture(scope="module", name="stack")
    def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
        with ui_stack(tmp_path_factory.mktemp(tmp_name), seed, log_name) as s:
            yield s

    return stack


def tab_fixtures(height: int, *, watch_dialogs: bool = True) -> tuple[Any, Any]:
    """Two pytest fixtures: ``browser`` (module-scoped chromium_browser, started after ``stack``) and
    ``tab`` (open_browser_tab(browser, height, watch_dialogs=...), one per test). Assign them in the test
    module: ``browser, tab = tab_fixtures(...)``."""

    @pytest.fixture(scope="module", name="browser")
    def browser(stack: UiStack) -> Iterator[Any]:
        with chromium_browser() as b:
            yield b

    @pytest.fixture(name="tab")
    def tab(browser: Any) -> Iterator[Any]:
        with open_browser_tab(browser, height, watch_dialogs=watch_dialogs) as page:
            yield page

    return browser, tab


def shot(page: Any, name: str) -> Path:
    """A full-page screenshot of ``page`` at ARTIFACTS / <name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_idle(page: Any, timeout: float = 30) -> None:
    """Until Streamlit has finished running the script: the app's script state (an attribute of its root
    element, set by the browser as soon as a widget asks for a rerun) is notRunning, and no 'Running...'
    status widget shows. The short pause first lets an input's change event reach the app."""
    page.wait_for_timeout(300)
    page.locator("[data-testid=stApp][data-test-script-state=notRunning]").wait_for(timeout=timeout * 1000)
    page.locator("[data-testid=stStatusWidget]").wait_for(state="detached", timeout=timeout * 1000)
