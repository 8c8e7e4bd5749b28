"""An algorithm added as one class (tests/plugins/reinforce_plugin.py, loaded through KLQ_PLUGINS) is
accepted end to end with no other edit: config validation and its loss in this process; over a real API
server started with the plugin: GET /algorithms, POST /runs and its 422s, the runs filter, an experiment's
grid, its pairings (KLQ against PPO and against the plugin) down to the database, results and CSV; and the
dashboard's launch and runs pages offering it."""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from backend_testkit import Server, create_run, served_database, small_config
from frontend_testkit import page, widget
from pydantic import ValidationError

from backend import experiments as ex
from backend import store
from klq import algorithms
from klq.config import RunConfig, format_validation_error

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
PLUGIN = "reinforce_plugin"


@pytest.fixture
def registered() -> Iterator[type[algorithms.Algorithm]]:
    """The plugin registered in this process, and unregistered afterwards (other tests see klq/ppo only)."""
    sys.path.insert(0, str(PLUGINS))
    try:
        assert algorithms.load_plugins(PLUGIN) == [PLUGIN]
        yield algorithms.ALGORITHMS["reinforce"]
    finally:
        algorithms.ALGORITHMS.pop("reinforce", None)
        sys.modules.pop(PLUGIN, None)
        sys.path.remove(str(PLUGINS))


@pytest.fixture(scope="module")
def plugin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("plugin-server")
    path = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p)
    with served_database("sqlite", tmp, KLQ_PLUGINS=PLUGIN, PYTHONPATH=path) as srv:
        yield srv


def test_config_validates_the_plugin_and_its_loss_is_real(registered) -> None:
    cfg = RunConfig.model_validate({"algorithm": "reinforce", "reinforce": {"baseline": "none"}})
    assert cfg.reinforce.baseline == "none" and cfg.model_dump()["reinforce"] == {
        "baseline": "none",
        "vf_coef": 0.1,
    }
    assert RunConfig().reinforce.baseline == "mean"  # every registered section, with its defaults
    assert "reinforce" in RunConfig.model_json_schema()["properties"]
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate({"reinforce": {"vf_coef": -1, "typo": 1}, "algorithm": "trpo"})
    lines = format_validation_error(info.value).splitlines()
    assert lines == [
        "algorithm: unknown algorithm 'trpo': expected 'klq', 'ppo', 'rloo', 'grpo' or 'reinforce'",
        "reinforce.vf_coef: Input should be greater than or equal to 0",
        "reinforce.typo: Extra inputs are not permitted",
    ]

    algo = algorithms.make_algorithm(cfg.with_overrides({"reinforce.baseline": "mean"}))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    targets, metrics = algo.targets(SimpleNamespace(response_mask=mask, scores=torch.tensor([3.0, 1.0])))
    assert metrics == {"reinforce/baseline": 2.0}
    assert targets["advantages"].tolist() == [[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]], requires_grad=True)
    values = torch.tensor([[3.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    loss, stats = algo.loss(logp, values, targets, mask)
    # policy: -(1*-1 + 1*-2 + -1*-0.5) / 3; value: 0.5 * (0 + 1 + 1) / 3, weighted 0.1
    assert stats["loss/policy"].item() == pytest.approx(2.5 / 3)
    assert stats["loss/value"].item() == pytest.approx(1 / 3)
    assert loss.item() == pytest.approx(2.5 / 3 + 0.1 / 3)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 0.0, 0.0]]) / 3)


def test_pairings_judge_klq_against_every_other_algorithm(registered) -> None:
    rows = [
        ex.RunRow(id=i, name=f"r{i}", algorithm=a, kl_coef=0.1, seed=1, status=s)
        for i, (a, s) in enumerate([("klq", "succeeded"), ("ppo", "succeeded"), ("reinforce", "failed")], 1)
    ]
    planned, skipped = ex.plan_judgements(rows)
    assert [(p.kind, p.run_a, p.run_b) for p in planned] == [
        ("klq_vs_ppo", 1, 2),
        ("vs_sft", 1, None),
        ("vs_sft", 2, None),
    ]
    assert [(n.kind, n.vs, n.algorithm) for n in skipped] == [
        ("klq_vs_reinforce", "reinforce", None),
        ("vs_sft", None, "reinforce"),
    ]


def test_the_server_and_the_dashboard_offer_a_plugin_algorithm(plugin_server: Server, monkeypatch) -> None:
    with plugin_server.client() as client:
        listed = client.get("/algorithms").json()
        assert [(a["name"], a["label"]) for a in listed] == [
            ("klq", "KLQ"),
            ("ppo", "PPO"),
            ("rloo", "RLOO"),
            ("grpo", "GRPO"),
            ("reinforce", "Reinforce"),
        ]  # the built-ins in the registry's order, then the plugin
        assert set(listed[4]["params"]["properties"]) == {"baseline", "vf_coef"}
        assert listed[4]["description"].startswith("REINFORCE:")

        run = create_run(client, config=small_config(algorithm="reinforce", reinforce={"baseline": "none"}))
        assert run["algorithm"] == "reinforce" and run["config"]["reinforce"] == {
            "baseline": "none",
            "vf_coef": 0.1,
        }
        bad = client.post(
            "/runs", json={"config": small_config(algorithm="reinforce", reinforce={"vf_coef": -1})}
        )
        assert bad.status_code == 422 and "config.reinforce.vf_coef" in bad.text
        assert client.get("/runs", params={"algorithm": "reinforce"}).json()["total"] == 1
        unknown = client.get("/runs", params={"algorithm": "trpo"})
        assert unknown.status_code == 422 and "algorithm" in unknown.text and "'reinforce'" in unknown.text

        grid = {"algorithms": ["klq", "ppo", "reinforce"], "kl_coefs": [0.1], "seeds": [1, 2]}
        body = {"base": small_config(), "grid": grid}
        preview = client.post("/experiments/preview", json=body).json()
        assert (
            len(preview["runs"]) == 6 and preview["judgements"] == 6 + 2 * 2
        )  # vs_sft each; KLQ vs 2 others
        default = client.post(
            "/experiments/preview", json={"base": small_config(), "grid": {"kl_coefs": [0.1]}}
        )
        assert {r["algorithm"] for r in default.json()["runs"]} == {"klq", "ppo", "rloo", "grpo", "reinforce"}
        created = client.post("/experiments", json={**body, "name": "plugin"})
        assert created.status_code == 201, created.text
        eid = created.json()["id"]

        with plugin_server.db.write_session() as s:
            for r in store.experiment_runs(s, [eid])[eid]:
                store.set_status(s, r.id, "running")
                store.finish_run(s, r.id, "succeeded")
            kinds = sorted(j.kind for j in store.claim_judging(s, eid))
        assert kinds == ["klq_vs_ppo"] * 2 + ["klq_vs_reinforce"] * 2 + ["vs_sft"] * 6

        detail = client.get(f"/experiments/{eid}").json()
        assert {(j["kind"], j["vs"]) for j in detail["judgements"]} == {
            ("klq_vs_ppo", "ppo"),
            ("klq_vs_reinforce", "reinforce"),
            ("vs_sft", None),
        }
        rates = client.get(f"/experiments/{eid}/results").json()["win_rates"]
        assert [(w["kind"], w["vs"], w["algorithm"]) for w in rates] == [
            ("klq_vs_ppo", "ppo", None),
            ("klq_vs_reinforce", "reinforce", None),
            ("vs_sft", None, "klq"),
            ("vs_sft", None, "ppo"),
            ("vs_sft", None, "reinforce"),
        ]
        header = next(csv.reader(io.StringIO(client.get(f"/experiments/{eid}/results.csv").text)))
        assert "klq_vs_ppo_win_rate" in header and "klq_vs_reinforce_win_rate" in header

    monkeypatch.setenv("KLQ_API_URL", plugin_server.url)
    monkeypatch.setenv("KLQ_API_TOKEN", plugin_server.token)
    monkeypatch.setenv("KLQ_DATA_DIR", str(plugin_server.data_dir))
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    at = page("launch")
    assert "reinforce" in widget(at, "launch.f.algorithm").options
    assert widget(at, "launch.f.reinforce.baseline").value == "mean"
    assert any(e.label == "Reinforce (not used by KLQ)" for e in at.expander)
    at = page("runs")
    assert widget(at, "runs.algorithm").options == ["KLQ", "PPO", "RLOO", "GRPO", "Reinforce"]
    st.cache_data.clear()
    st.cache_resource.clear()
