"""KLQ Lab's backend: REST API (FastAPI) and SQL storage (SQLAlchemy 2 + Alembic).

The data-access layer the worker reuses is ``backend.store`` (no FastAPI imports); engines and sessions
are in ``backend.db``; ``backend.main.create_app()`` builds the ASGI app.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("klq-lab")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0.0.0"
