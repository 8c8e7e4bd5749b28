"""The worker process's database (``Database.from_settings()``), opened on first use and shared by its
tasks, supervisors and reaper."""

from __future__ import annotations

from backend.db import Database

_db: Database | None = None


def db() -> Database:
    global _db
    if _db is None:
        _db = Database.from_settings()
    return _db
