"""Schema migrations (Alembic), callable from Python: ``klq migrate`` calls ``upgrade(database_url)``.

The Alembic scripts ship inside the package (backend/alembic.ini, backend/alembic/), so this works from
an installed wheel as well as from a checkout.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from .db import normalize_url
from .settings import get_settings

MIGRATE_COMMAND = "klq migrate"
_HERE = Path(__file__).resolve().parent


class DatabaseNotMigrated(RuntimeError):
    pass


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config(str(_HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(_HERE / "alembic"))
    # Passed as an attribute, not a main option: ConfigParser would choke on '%' in passwords.
    cfg.attributes["database_url"] = normalize_url(database_url or get_settings().resolved_database_url)
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    """Bring the database at ``database_url`` (default: the configured one) up to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_migrated(engine: Engine) -> None:
    """Raise DatabaseNotMigrated, naming the command to run, unless the schema is at the head revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        state = "has no KLQ Lab schema" if current is None else f"is at revision {current}, not {head}"
        raise DatabaseNotMigrated(
            f"The database {where} {state}. Run `{MIGRATE_COMMAND}` (with the same KLQ_DATABASE_URL / "
            f"KLQ_DATA_DIR) to create or upgrade it, then start the server again."
        )
