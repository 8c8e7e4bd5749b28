"""klq.client, the REST client of scripts and of the dashboard, against a real API server: every method,
every response against its klq.api_types type, errors (401/404/409/422 field errors, no server), tokens
from the environment and the data directory."""

from __future__ import annotations

import io
import pickle
import sys
import types
import zipfile
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest
from backend_testkit import free_port
from frontend_testkit import PROMPTS, seed_config

from backend import store
from klq.api_types import SampleStep
from klq.client import APIConnectionError, APIError, Client, ExperimentFailedError, WaitTimeout, resolve_token


@pytest.fixture
def api(server):
    with Client(server.url, server.token, timeout=10) as c:
        yield c


def test_client_imports_no_dashboard_server_or_worker():
    """The library's client stands alone: the dashboard imports it, never the other way round, and a
    script or the dashboard gets neither the server, the worker nor torch with it."""
    import subprocess

    code = (
        "import sys, klq.client, klq.api_types; "
        "print(sorted(m for m in ('streamlit', 'frontend', 'backend', 'worker', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "[]"


def _problems(value: Any, tp: Any, where: str) -> list[str]:
    """How ``value`` (decoded JSON) differs from the annotation ``tp``: keys of a TypedDict exactly, then
    each value's type, recursively ([] if it conforms)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return []
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__}, not an object ({tp.__name__})"]
        hints = get_type_hints(tp)
        if set(value) != set(hints):
            return [
                f"{where}: keys {sorted(set(value) ^ set(hints))} differ between {tp.__name__} and the answer"
            ]
        return [p for key, hint in hints.items() for p in _problems(value[key], hint, f"{where}.{key}")]
    if origin in (Union, types.UnionType):
        each = [_problems(value, a, where) for a in args]
        return [] if any(not p for p in each) else [f"{where}: {value!r:.60} is none of {tp}: {each}"]
    if origin is Literal:
        return [] if value in args else [f"{where}: {value!r} not in {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {type(value).__name__}, not a list"]
        return [p for i, item in enumerate(value) for p in _problems(item, args[0], f"{where}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__}, not an object"]
        return [p for k, v in value.items() for p in _problems(v, args[1], f"{where}[{k!r}]")]
    expected = {type(None): (type(None),), float: (int, float), int: (int,), str: (str,), bool: (bool,)}[tp]
    if isinstance(value, bool) and tp is not bool or not isinstance(value, expected):
        return [f"{where}: {value!r:.60} is not {tp.__name__}"]
    return []


def _conforms(api: Client, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``api.<method>`` and check the answer against the method's return annotation."""
    answer = getattr(api, method)(*args, **kwargs)
    expected = get_type_hints(getattr(Client, method))["return"]
    problems = _problems(answer, expected, method)
    assert not problems, "\n".join(problems)
    return answer


def test_every_response_has_the_shape_of_its_type(api, seeded, experiment):
    """Each read's answer has exactly the keys of the klq.api_types type its method returns (generated
    from the server's schema; a field with a default is sent too) with values of their types."""
    assert _problems({"step": 1}, SampleStep, "s") == [
        "s: keys ['count'] differ between SampleStep and the answer"
    ]
    assert _problems([{"step": 1, "count": "2"}], list[SampleStep], "s") == ["s[0].count: '2' is not int"]
    for method, args, kwargs in [
        ("health", (), {}),
        ("me", (), {}),
        ("get_run", (seeded.klq,), {}),
        ("get_run", (seeded.failed,), {}),
        ("list_runs", (), {"limit": 5}),
        ("list_tags", (), {}),
        ("metric_keys", (seeded.klq,), {}),
        ("series", ([seeded.klq],), {"max_points": 10, "include_wall_time": True}),
        ("list_samples", (seeded.klq,), {}),
        ("sample_steps", (seeded.klq,), {}),
        ("compare_samples", ([seeded.klq, seeded.ppo],), {"mode": "union"}),
        ("list_checkpoints", (seeded.klq,), {}),
        ("get_judgement", (seeded.judgement,), {}),
        ("get_judgement", (seeded.queued_judgement,), {"include_verdicts": False}),
        ("list_judgements", (), {}),
        ("list_verdicts", (seeded.judgement,), {}),
        ("list_experiments", (), {}),
        ("get_experiment", (experiment.id,), {}),
        ("experiment_results", (experiment.id,), {}),
        ("experiment_curves", (experiment.id,), {}),
    ]:
        answer = _conforms(api, method, *args, **kwargs)
        assert answer, f"{method}: empty answer checks nothing"


def test_base_url_forms_and_health(server):
    for url in (server.url, server.url + "/", server.url + "/api/v1", server.url + "/api/v1/"):
        with Client(url, server.token) as c:
            assert c.base_url == server.url
            assert c.health()["status"] == "ok"
    with Client(server.url, server.token) as c:
        assert "RunConfig" in c.openapi()["components"]["schemas"]
        assert "admin" in c.me()["scopes"]
        assert repr(c) == f"Client({server.url!r}, token=set)"


def test_runs_crud(api, seeded):
    run = _conforms(
        api,
        "create_run",
        seed_config("ppo", kl_coef=0.2),
        name="client-run",
        tags=["client", "x"],
        notes="n",
        queue="cpu",
    )
    assert run["status"] == "queued" and run["config"]["kl_coef"] == 0.2 and run["queue"] == "cpu"
    rid = run["id"]
    assert api.get_run(rid)["name"] == "client-run"
    page = api.list_runs(tag=["client"], algorithm=["ppo"], status=["queued"])
    assert [r["id"] for r in page["items"]] == [rid] and page["total"] == 1
    assert api.list_runs(q="client-run", latest=["objective/scores"])["total"] == 1
    updated = api.update_run(rid, tags=["client", "y"], notes="changed")
    assert updated["tags"] == ["client", "y"] and updated["notes"] == "changed"
    assert {"tag": "client", "runs": 1} in api.list_tags()
    clone = api.clone_run(rid, {"train.num_epochs": 2}, name="client-clone")
    assert clone["parent_id"] == rid and clone["config"]["train"]["num_epochs"] == 2
    assert clone["tags"] == ["client", "y"]
    assert api.cancel_run(clone["id"])["status"] == "cancelled"
    api.delete_run(clone["id"])
    api.delete_run(rid)
    with pytest.raises(APIError) as err:
        api.get_run(rid)
    assert err.value.status == 404 and "not found" in err.value.message
    ids = {r["id"] for r in api.iter_runs(page_size=2, tag=["seed"])}
    assert set(seeded.ids.values()) <= ids


def test_validation_errors_are_parsed_per_field(api):
    cfg = {"kl_coef": -1, "train": {"batch_size": 10, "minibatch_size": 4}}
    with pytest.raises(APIError) as err:
        api.create_run(cfg)
    e = err.value
    assert e.status == 422
    assert e.field_errors["config.kl_coef"] == ["Input should be greater than 0"]
    assert "must divide" in e.field_errors["config.train"][0]
    assert "config.kl_coef: Input should be greater than 0" in str(e)
    with pytest.raises(APIError) as err:
        api.create_run(seed_config(), queue="nope")
    assert "unknown queue" in err.value.field_errors["queue"][0]
    with pytest.raises(APIError) as err:
        api.create_run(seed_config(model={"policy": "/etc"}))
    assert list(err.value.field_errors) == ["config.model.policy"]
    # picklable (Streamlit may cache or move errors between threads)
    again = pickle.loads(pickle.dumps(err.value))
    assert again.status == 422 and again.field_errors == err.value.field_errors


def test_conflicts_auth_and_connection_errors(server, api, seeded):
    with pytest.raises(APIError) as err:
        api.cancel_run(seeded.klq)  # finished
    assert err.value.status == 409
    with Client(server.url, "klq_wrong") as bad, pytest.raises(APIError) as err:
        bad.list_runs()
    assert err.value.status == 401
    with (
        Client(f"http://127.0.0.1:{free_port()}", "x", timeout=2) as gone,
        pytest.raises(APIConnectionError) as err,
    ):
        gone.health()
    assert err.value.status == 0 and "cannot reach" in err.value.message


def test_resolve_token_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("KLQ_API_TOKEN", raising=False)
    monkeypatch.setenv("KLQ_DATA_DIR", str(tmp_path))
    assert resolve_token() is None
    (tmp_path / "api_token").write_text("klq_from_file\n")
    assert resolve_token() == "klq_from_file"
    monkeypatch.setenv("KLQ_API_TOKEN", "klq_from_env")
    assert resolve_token() == "klq_from_env"
    assert resolve_token("klq_given") == "klq_given"
    with Client("http://127.0.0.1:1") as c:
        assert c.token == "klq_from_env" and c.identity == ("http://127.0.0.1:1", "klq_from_env")


def test_metrics(api, seeded):
    keys = {k["key"]: k for k in api.metric_keys(seeded.klq)}
    assert keys["objective/scores"]["last_step"] == 50
    resp = api.series(
        [seeded.klq, seeded.ppo], ["objective/scores", "objective/kl"], max_points=20, include_wall_time=True
    )
    assert len(resp["series"]) == 4
    s = resp["series"][0]
    assert s["downsampled"] and len(s["steps"]) <= 20 and s["total_points"] == 50 and s["wall_times"]
    tail = api.series([seeded.klq], ["objective/scores"], since_step=47)["series"][0]
    assert tail["steps"] == [48, 49, 50] and tail["last_step"] == 50 and tail["wall_times"] is None
    csv = api.export_metrics(seeded.klq, keys=["objective/kl"]).decode()
    assert csv.splitlines()[0] == "run_id,key,step,value,wall_time" and len(csv.splitlines()) == 51


def test_samples_and_checkpoints(api, seeded):
    assert [s["step"] for s in api.sample_steps(seeded.klq)] == [25, 50]
    page = api.list_samples(seeded.klq, step=50, limit=2)
    assert page["total"] == 4 and [s["prompt_id"] for s in page["items"]] == ["p0", "p1"]
    cmp = api.compare_samples([seeded.klq, seeded.ppo], 25)
    assert [r["step"] for r in cmp["runs"]] == [25, 25] and cmp["total"] == len(PROMPTS)
    cmp = api.compare_samples([seeded.klq, seeded.ppo])
    assert [r["step"] for r in cmp["runs"]] == [50, 50]
    assert api.export_samples(seeded.ppo, step=50).decode().count("\n") == 4
    ckpts = api.list_checkpoints(seeded.klq)
    assert [c["step"] for c in ckpts] == [50] and ckpts[0]["is_final"]
    for which in ("final", ckpts[0]["id"]):
        names = zipfile.ZipFile(io.BytesIO(api.download_checkpoint(seeded.klq, which))).namelist()
        assert sorted(names) == [
            f"klq-run-{seeded.klq}-step-50/config.json",
            f"klq-run-{seeded.klq}-step-50/model.safetensors",
        ]


def test_download_checkpoint_to_file(api, seeded, tmp_path):
    path = api.download_checkpoint_to(seeded.klq, tmp_path / "p.zip")
    assert zipfile.is_zipfile(path)
    with pytest.raises(APIError) as err:
        api.download_checkpoint_to(seeded.ppo, tmp_path / "none.zip")
    assert err.value.status == 404


def test_judgements(api, server, seeded):
    j = api.get_judgement(seeded.judgement, limit=3)
    assert j["status"] == "succeeded" and j["result"]["wins_a"] == 3 and j["verdicts_total"] == 8
    assert len(j["verdicts"]) == 3
    assert len(list(api.iter_verdicts(seeded.judgement, page_size=3))) == 8
    ids = [x["id"] for x in api.list_judgements(run_id=seeded.klq)["items"]]
    assert seeded.judgement in ids and seeded.queued_judgement in ids
    new = _conforms(
        api, "create_judgement", seeded.klq, seeded.ppo, num_prompts=2, judge={"backend": "gold"}, queue="cpu"
    )
    assert new["status"] == "queued" and new["judge"]["backend"] == "gold"
    with pytest.raises(APIError) as err:
        api.create_judgement(seeded.klq, 999_999, judge={"backend": "gold", "model": "x"})
    assert err.value.status == 422 and "judge" in err.value.field_errors
    assert api.cancel_judgement(new["id"])["status"] == "cancelled"
    api.delete_judgement(new["id"])
    with server.db.session() as s:
        assert store.get_judgement(s, new["id"]) is None


def test_length_diagnostics_and_leaderboard(api, seeded, experiment):
    j = _conforms(api, "get_judgement", seeded.judgement, include_verdicts=False)
    length = j["result"]["length"]
    assert length["unit"] == "words" and length["prompts"] == 4 and length["mean_length_a"] == 5.0
    assert api.get_judgement(seeded.judgement, include_length=False)["result"]["length"] is None
    assert api.wait_for_judgement(seeded.judgement, timeout=10)["result"]["length"] == length
    page = _conforms(api, "list_judgements", run_id=seeded.klq, include_length=True)
    assert next(x for x in page["items"] if x["id"] == seeded.judgement)["result"]["length"] == length
    assert all(x["result"]["length"] is None for x in api.list_judgements(run_id=seeded.klq)["items"])

    board = _conforms(api, "leaderboard", "gold", experiment_id=experiment.id, group_by="algorithm_tau")
    assert {p["player"] for p in board["players"]} == {
        "algorithm_tau:klq@0.05", "algorithm_tau:klq@0.1", "algorithm_tau:ppo@0.05", "algorithm_tau:ppo@0.1",
        "reference:builtin:sft",
    }  # fmt: skip
    assert board["anchor"] == "reference:builtin:sft" and board["experiment_id"] == experiment.id
    seeded_runs = api.leaderboard(tag="seed")  # the seeded KLQ-vs-PPO judgement: KLQ wins 3 of 4 prompts
    assert [p["run_ids"] for p in seeded_runs["players"]] == [[seeded.klq], [seeded.ppo]]
    assert seeded_runs["comparisons"] == 4 and seeded_runs["players"][0]["wins"] == 3
    with pytest.raises(APIError) as err:
        api.leaderboard("magic")
    assert err.value.status == 422 and "judge_backend" in err.value.field_errors


def test_logs(api, server, seeded):
    with server.db.write_session() as s:
        rid = store.create_run(s, seed_config(), name="client-log", queue="cpu").id
        jid = store.create_judgement(
            s, run_a_id=rid, num_prompts=2, judge={"backend": "gold"}, queue="cpu"
        ).id
    with pytest.raises(APIError) as err:
        api.run_log(rid)
    assert err.value.status == 404 and err.value.message == f"run {rid} has no log yet: it has not started"
    with server.db.write_session() as s:
        store.set_status(s, rid, "running")
        store.set_judgement_status(s, jid, "running")
    path = server.data_dir / "runs" / str(rid) / "train.log"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(b"step %d\n" % i for i in range(10)) + b"half")
    page = _conforms(api, "run_log", rid, tail=2)
    assert page["lines"] == ["step 8", "step 9"] and page["offset"] == page["size"] - 4
    assert api.run_log(rid)["lines"] == [f"step {i}" for i in range(10)]  # the default tail: 200 lines
    with path.open("ab") as f:
        f.write(b" done\n<b>not html</b>\n")
    assert api.run_log(rid, offset=page["offset"])["lines"] == ["half done", "<b>not html</b>"]
    assert api.download_run_log(rid) == path.read_bytes()
    jpath = server.data_dir / "judgements" / str(jid) / "judge.log"
    jpath.parent.mkdir(parents=True)
    jpath.write_bytes(b"judging\n\xff\n")
    assert api.judgement_log(jid)["lines"] == ["judging", "\ufffd"]
    assert api.judgement_log(jid, offset=8)["lines"] == ["\ufffd"]
    assert api.download_judgement_log(jid) == "judging\n\ufffd\n".encode()
    with pytest.raises(APIError) as err:
        api.judgement_log(999_999)
    assert err.value.status == 404 and err.value.message == "judgement 999999 not found"


# --- experiments (docs/EXPERIMENTS.md) -------------------------------------------------------------------


def test_experiment_reads(api, experiment):
    page = api.list_experiments(limit=1)
    assert page["total"] >= 2 and len(page["items"]) == 1
    listed = [e["id"] for e in api.list_experiments(limit=50)["items"]]  # other tests' may be newer
    assert listed == sorted(listed, reverse=True) and listed[0] == page["items"][0]["id"]  # newest first
    assert listed.index(experiment.active) < listed.index(experiment.id)
    e = api.get_experiment(experiment.id)
    assert e["status"] == "failed" and e["name"] == "study" and e["grid"]["kl_coefs"] == [0.05, 0.1]
    assert len(e["runs"]) == 8 and e["progress"]["runs_failed"] == 1
    assert len(e["judgements"]) == 3 + 7 and e["progress"]["judgements_finished"] == 10
    ids = {r["id"] for r in api.list_runs(experiment_id=experiment.id, limit=50)["items"]}
    assert ids == set(experiment.runs.values())

    results = api.experiment_results(experiment.id)
    assert [(r["kl_coef"], r["algorithm"]) for r in results["rows"]] == [
        (0.05, "klq"),
        (0.05, "ppo"),
        (0.1, "klq"),
        (0.1, "ppo"),
    ]
    failed_row = results["rows"][3]
    assert failed_row["succeeded"] == 1 and failed_row["failed"][0]["run_id"] == experiment.failed
    klq = next(w for w in results["win_rates"] if w["kind"] == "klq_vs_ppo" and w["kl_coef"] == 0.05)
    assert (klq["wins"], klq["losses"], klq["prompts"]) == (6, 2, 8) and klq["win_rate"] == 0.75
    assert len(results["points"]) == 8 and set(results["frontier"]) == {"klq", "ppo"}

    curves = api.experiment_curves(experiment.id, "objective/kl", max_points=50)
    assert curves["key"] == "objective/kl" and len(curves["curves"]) == 4
    band = next(c for c in curves["curves"] if c["algorithm"] == "klq" and c["kl_coef"] == 0.05)
    assert band["steps"][-1] == 20 and band["low"][-1] <= band["mean"][-1] <= band["high"][-1]
    csv = api.experiment_results_csv(experiment.id).decode()
    assert len(csv.strip().splitlines()) == 1 + 4

    with pytest.raises(APIError) as err:
        api.get_experiment(999_999)
    assert err.value.status == 404


def test_experiment_preview_create_cancel_delete(api):
    base = seed_config(iterations=4)
    grid = {"algorithms": ["klq", "ppo"], "kl_coefs": [0.02, 0.05], "seeds": [1, 2]}
    preview = _conforms(
        api, "preview_experiment", base, grid, name="client-exp", judge={"backend": "gold", "num_prompts": 4}
    )
    assert len(preview["runs"]) == 8 and preview["judgements"] == 4 + 8
    resolved = preview["runs"][0]["config"]  # the full config, defaults filled in
    assert resolved["train"]["total_episodes"] == 32 and resolved["rollout"]["response_length"] == 53
    before = api.list_experiments()["total"]
    assert api.list_experiments()["total"] == before  # a preview creates nothing

    created = _conforms(api, "create_experiment", base, grid, name="client-exp", tags=["client"], queue="cpu")
    assert created["status"] == "queued" and created["queue"] == "cpu" and len(created["runs"]) == 8
    assert {(r["algorithm"], r["kl_coef"], r["seed"]) for r in created["runs"]} == {
        (a, t, s) for a in ("klq", "ppo") for t in (0.02, 0.05) for s in (1, 2)
    }
    with pytest.raises(APIError) as err:
        api.delete_experiment(created["id"])  # active
    assert err.value.status == 409
    cancelled = api.cancel_experiment(created["id"])
    assert cancelled["status"] == "cancelled" and {r["status"] for r in cancelled["runs"]} == {"cancelled"}
    api.delete_experiment(created["id"])
    with pytest.raises(APIError) as err:
        api.get_experiment(created["id"])
    assert err.value.status == 404

    with pytest.raises(APIError) as err:
        api.preview_experiment(base, {"kl_coefs": [0.1, 0.1], "seeds": [1]})
    assert err.value.field_errors == {"grid.kl_coefs": ["values must be distinct, got [0.1, 0.1]"]}
    with pytest.raises(APIError) as err:
        api.create_experiment({"train": {"batch_size": 10, "minibatch_size": 4}}, {"kl_coefs": [0.1]})
    assert err.value.status == 422 and any(f.startswith("base.train") for f in err.value.field_errors)


def test_wait_experiment(server, experiment):
    with Client(server.url, server.token) as c:
        seen = []
        done = c.wait_experiment(experiment.id, poll_interval=0.1, on_update=seen.append)
        assert done["status"] == "failed" and len(seen) == 1  # finished: one read
        with pytest.raises(ExperimentFailedError) as err:
            c.wait_experiment(experiment.id, raise_on_failure=True)
        assert "RuntimeError: CUDA out of memory" in err.value.error
        with pytest.raises(WaitTimeout) as err:
            c.wait_experiment(experiment.active, timeout=0.3, poll_interval=0.1)
        assert err.value.last["status"] == "queued"


def test_script_client_takes_an_experiment_base_from_a_file(server, tmp_path):
    import yaml

    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(seed_config("ppo", kl_coef=9.0, seed=5)))
    grid = {"algorithms": ["klq"], "kl_coefs": [0.1], "seeds": [3]}
    with Client(server.url, server.token) as c:
        preview = c.preview_experiment(path, grid, overrides={"train.num_epochs": 2}, name="from-file")
    (run,) = preview["runs"]
    assert run["name"] == "from-file/klq-tau0.1-s3" and run["config"]["train"]["num_epochs"] == 2
    # the grid's algorithm, tau and seed replace the file's
    assert (run["config"]["algorithm"], run["config"]["kl_coef"], run["config"]["seed"]) == ("klq", 0.1, 3)


def test_human_votes(api, server):
    from frontend_testkit import seed_votes

    sv = seed_votes(server, "client")
    session = _conforms(api, "create_human_judgement", source_judgement=sv.judgement, num_prompts=2, seed=3)
    assert (
        session["judge"] == {"backend": "human"} and session["total"] == 2 and session["status"] == "running"
    )
    ballot = _conforms(api, "next_ballot", session["id"])
    pair = ballot["pair"]
    assert set(pair) == {"prompt_id", "position", "prompt", "left", "right"}
    vote = _conforms(api, "vote", session["id"], pair["prompt_id"], "left", comment="fine")
    assert {vote["left"]["run_name"], vote["right"]["run_name"]} == {sv.name_a, sv.name_b}
    assert vote["verdict"] == vote["left"]["policy"] and vote["comment"] == "fine"
    with pytest.raises(APIError) as err:
        api.vote(session["id"], pair["prompt_id"], "tie")
    assert err.value.status == 409
    with pytest.raises(APIError) as err:
        api.vote(session["id"], pair["prompt_id"], "up")
    assert err.value.status == 422 and "choice" in err.value.field_errors
    closed = _conforms(api, "close_judgement", session["id"])
    assert closed["status"] == "succeeded" and closed["completed"] == 1
    rows = _conforms(api, "judgement_agreement", sv.judgement)
    assert [(r["human_judgement"], r["n"]) for r in rows] == [(session["id"], 1)]
    on_runs = _conforms(
        api, "create_human_judgement", run_a=sv.run_a, run_b=sv.run_b, prompt_ids=["v0", "v2"]
    )
    assert (on_runs["total"], on_runs["step_a"], on_runs["step_b"]) == (2, 10, 10)
    with pytest.raises(APIError) as err:
        api.create_human_judgement(run_a=sv.run_a)
    assert err.value.status == 422 and "run_b" in err.value.field_errors
