"""Alembic environment: migrates the database named by backend.migrate (or the settings)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from backend.db import make_engine
from backend.models import Base
from backend.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = config.attributes.get("database_url") or get_settings().resolved_database_url
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("database_url") or get_settings().resolved_database_url
    # foreign_keys=OFF: SQLite batch migrations recreate tables, and dropping a parent table with
    # foreign keys on would cascade-delete the children's rows.
    engine = make_engine(url, write=True, foreign_keys=False)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
