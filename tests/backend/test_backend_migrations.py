"""Migrations up and down on SQLite and PostgreSQL; the schema they make matches the models; the server
refuses to start on a database that is not migrated, naming the command."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from backend_testkit import REPO, fresh_database
from sqlalchemy import inspect

from backend import migrate
from backend.db import make_engine
from backend.models import Base

TABLES = {
    "runs",
    "run_tags",
    "metrics",
    "metric_latest",
    "metric_rollups",
    "samples",
    "sample_tokens",
    "checkpoints",
    "judgements",
    "verdicts",
    "api_tokens",
    "experiments",
    "ballot_pairs",
}


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_upgrade_downgrade_upgrade(kind: str, tmp_path) -> None:
    with fresh_database(kind, tmp_path) as url:
        engine = make_engine(url)
        try:
            assert migrate.current_revision(engine) is None
            migrate.upgrade(url)
            assert migrate.current_revision(engine) == migrate.head_revision() == "0008"
            assert set(inspect(engine).get_table_names()) >= TABLES
            with engine.connect() as conn:
                diff = compare_metadata(
                    MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
                )
            assert diff == [], f"models and migrations disagree: {diff}"
            migrate.check_migrated(engine)

            migrate.downgrade(url, "base")
            engine.dispose()
            assert migrate.current_revision(engine) is None
            assert not TABLES & set(inspect(engine).get_table_names())
            with pytest.raises(migrate.DatabaseNotMigrated, match="klq migrate"):
                migrate.check_migrated(engine)

            migrate.upgrade(url)
            assert set(inspect(engine).get_table_names()) >= TABLES
        finally:
            engine.dispose()


def test_server_refuses_an_unmigrated_database(tmp_path) -> None:
    env = {"KLQ_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "uvicorn", "backend.main:create_app", "--factory", "--port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "klq migrate" in proc.stderr and "has no KLQ Lab schema" in proc.stderr
    assert not (tmp_path / "api_token").exists()


def test_sqlite_pragmas(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    engine.dispose()
