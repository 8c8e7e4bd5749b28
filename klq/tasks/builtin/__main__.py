"""`python -m klq.tasks.builtin [--out DIR] [--seed N] [--force]`: build the built-in task's assets."""

from klq.tasks.builtin.assets import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
