"""Fixtures of the backend tests (see backend_testkit for how servers and databases are made)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from backend_testkit import Server, served_database


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A migrated database of each kind behind a real uvicorn server (default settings: auth on reads)."""
    tmp = tmp_path_factory.mktemp(f"server-{request.param}")
    with served_database(request.param, tmp) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def anon(server: Server) -> Iterator[httpx.Client]:
    with server.client(token=None) as c:
        yield c
