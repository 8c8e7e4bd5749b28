"""Celery workers: they take a run or a judgement from the broker, claim it in the database (backend.store)
and train or judge it with klq in a child process (worker/runner.py). Imports klq and backend, never the
reverse (docs/ARCHITECTURE.md)."""
