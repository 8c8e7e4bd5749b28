"""metric roll-ups: per-bucket count, minimum and maximum of each series at bucket widths of 2**4 ... 2**20
steps, maintained by store.write_metrics, so that a downsampled read of a long series reads buckets instead
of every point; existing metrics are rolled up here

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 14:30:00.000000
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEVELS = (4, 8, 12, 16, 20)  # as backend/store/metrics.py's ROLLUP_LEVELS when this migration was written
COLUMNS = ("run_id", "key", "level", "bucket", "count", "min_value", "min_step", "min_wall", "max_value",
           "max_step", "max_wall")  # fmt: skip


def _fold(agg: list[Any], other: Sequence[Any]) -> None:
    agg[0] += other[0]
    if other[1] < agg[1]:
        agg[1:4] = other[1:4]
    if other[4] > agg[4]:
        agg[4:7] = other[4:7]


def _rollups(run_id: int, key: str, points: list[tuple[int, float, float | None]]) -> list[dict[str, Any]]:
    """Every level's buckets of one series' finite points (step, value, wall_time), as rows to insert."""
    level_rows: dict[int, Any] = {}
    for step, value, wall in points:
        point = (1, value, step, wall, value, step, wall)
        cur = level_rows.get(step >> LEVELS[0])
        if cur is None:
            level_rows[step >> LEVELS[0]] = list(point)
        else:
            _fold(cur, point)
    out = []
    children = level_rows
    for i, level in enumerate(LEVELS):
        if i:
            parents: dict[int, Any] = {}
            for bucket, agg in children.items():
                cur = parents.get(bucket >> (level - LEVELS[i - 1]))
                if cur is None:
                    parents[bucket >> (level - LEVELS[i - 1])] = list(agg)
                else:
                    _fold(cur, agg)
            children = parents
        out += [dict(zip(COLUMNS, (run_id, key, level, b, *agg), strict=True)) for b, agg in children.items()]
    return out


def upgrade() -> None:
    rollups = op.create_table(
        "metric_rollups",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("level", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("min_value", sa.Float(), nullable=False),
        sa.Column("min_step", sa.BigInteger(), nullable=False),
        sa.Column("min_wall", sa.Float(), nullable=True),
        sa.Column("max_value", sa.Float(), nullable=False),
        sa.Column("max_step", sa.BigInteger(), nullable=False),
        sa.Column("max_wall", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_metric_rollups_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", "level", "bucket", name=op.f("pk_metric_rollups")),
        sqlite_with_rowid=False,
    )
    # Roll up what is already stored, one series at a time (streamed in key order).
    conn = op.get_bind()
    result = conn.execute(
        sa.text("SELECT run_id, key, step, value, wall_time FROM metrics ORDER BY run_id, key, step"),
        execution_options={"yield_per": 50_000},
    )
    series: tuple[int, str] | None = None
    points: list[tuple[int, float, float | None]] = []

    def flush() -> None:
        if series is not None and points:
            rows = _rollups(series[0], series[1], points)
            for start in range(0, len(rows), 500):
                conn.execute(rollups.insert(), rows[start : start + 500])

    for run_id, key, step, value, wall in result:
        if (run_id, key) != series:
            flush()
            series, points = (run_id, key), []
        if value is not None and math.isfinite(value):
            points.append((step, value, wall))
    flush()


def downgrade() -> None:
    op.drop_table("metric_rollups")
