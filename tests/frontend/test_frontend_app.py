"""The app shell: navigation, where the API token comes from (KLQ_API_TOKEN, <KLQ_DATA_DIR>/api_token, the
sidebar), an unreachable API, and `klq ui` handing the token to Streamlit."""

from __future__ import annotations

import argparse

import pytest
from backend_testkit import free_port
from frontend_testkit import all_text, page


@pytest.fixture
def no_token(app_env, monkeypatch, tmp_path):
    monkeypatch.delenv("KLQ_API_TOKEN")
    monkeypatch.setenv("KLQ_DATA_DIR", str(tmp_path))  # no api_token file there
    return app_env


def sidebar_text(at) -> str:
    return "\n".join(
        str(e.value)
        for kind in ("caption", "warning", "error", "markdown")
        for e in getattr(at.sidebar, kind)
    )


def test_navigation_lists_the_pages(app_env, seeded):
    at = page("runs")
    assert at.title[0].value == "Runs"
    assert f"API: `{app_env.url}`" in sidebar_text(at)
    for name, title in (
        ("launch", "Launch a run"),
        ("run", "Run"),
        ("compare", "Compare runs"),
        ("samples", "Samples & judgements"),
        ("experiments", "Experiments"),
        ("leaderboard", "Leaderboard"),
    ):
        assert page(name).title[0].value == title


def test_token_from_the_data_directory(app_env, seeded, monkeypatch):
    monkeypatch.delenv("KLQ_API_TOKEN")  # KLQ_DATA_DIR is the server's: its api_token file is used
    at = page("runs")
    assert not at.sidebar.text_input and len(at.dataframe[0].value) >= 5


def test_token_asked_for_in_the_sidebar(no_token, seeded):
    at = page("runs")
    assert "No API token: enter one above." in sidebar_text(at)
    assert "refused the token (401)" in all_text(at)
    at.sidebar.text_input(key="api_token").set_value(no_token.token).run()
    assert not at.exception and len(at.dataframe[0].value) >= 5
    assert "No API token" not in sidebar_text(at)


def test_unreachable_api(app_env, monkeypatch):
    monkeypatch.setenv("KLQ_API_URL", f"http://127.0.0.1:{free_port()}")
    at = page("runs")
    assert "API unreachable" in sidebar_text(at)
    assert "cannot reach the API" in all_text(at)


def test_klq_ui_passes_url_and_token(tmp_path, monkeypatch):
    from klqlab import cli

    calls = []
    monkeypatch.setattr("os.execve", lambda path, cmd, env: calls.append((cmd, env)))
    monkeypatch.delenv("KLQ_API_TOKEN", raising=False)
    monkeypatch.delenv("KLQ_TOKEN_FILE", raising=False)
    monkeypatch.setenv("KLQ_DATA_DIR", str(tmp_path))
    args = argparse.Namespace(host="127.0.0.1", port=8599, api_url="http://api:8000")
    cli.cmd_ui(args)  # no token anywhere: the UI will ask for one
    assert calls[-1][1]["KLQ_API_URL"] == "http://api:8000" and "KLQ_API_TOKEN" not in calls[-1][1]
    assert "--server.port=8599" in calls[-1][0] and calls[-1][0][2:4] == ["streamlit", "run"]
    (tmp_path / "api_token").write_text("klq_local\n")
    cli.cmd_ui(args)
    assert calls[-1][1]["KLQ_API_TOKEN"] == "klq_local"
    monkeypatch.setenv("KLQ_API_TOKEN", "klq_env")
    cli.cmd_ui(args)
    assert calls[-1][1]["KLQ_API_TOKEN"] == "klq_env"
