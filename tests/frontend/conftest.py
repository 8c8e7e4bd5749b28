"""Fixtures of the frontend tests: a real API server (tests/backend's backend_testkit) on a fresh SQLite
database, seeded through the data-access layer (backend.store) as a worker would write, and Streamlit
AppTest runs of the dashboard pointed at it through KLQ_API_URL / KLQ_API_TOKEN."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_testkit import Server, served_database  # noqa: E402
from frontend_testkit import Seeded, SeededExperiment, seed, seed_experiment  # noqa: E402


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A migrated SQLite database behind a real uvicorn server (no worker: runs stay queued)."""
    tmp = tmp_path_factory.mktemp("fe-server")
    with served_database("sqlite", tmp) as srv:
        yield srv


@pytest.fixture(scope="session")
def seeded(server: Server) -> Seeded:
    return seed(server)


@pytest.fixture(scope="session")
def experiment(server: Server) -> SeededExperiment:
    """A finished, judged experiment (one run failed) and a queued one (tests/frontend/frontend_testkit)."""
    return seed_experiment(server)


@pytest.fixture
def app_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The dashboard's environment (API address and token) and empty Streamlit caches."""
    import streamlit as st

    monkeypatch.setenv("KLQ_API_URL", server.url)
    monkeypatch.setenv("KLQ_API_TOKEN", server.token)
    monkeypatch.setenv("KLQ_DATA_DIR", str(server.data_dir))
    st.cache_data.clear()
    st.cache_resource.clear()
    return server
