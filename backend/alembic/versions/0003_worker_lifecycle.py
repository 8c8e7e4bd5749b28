"""worker lifecycle: progress time, last error and attempts for stall detection, graceful stops and
crash-loop limits (runs.progress_at, last_error, preempt_requested; judgements.attempts, progress_at,
last_error)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 06:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("preempt_requested", sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.drop_column("last_error")
        batch_op.drop_column("progress_at")
        batch_op.drop_column("attempts")

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("preempt_requested")
        batch_op.drop_column("last_error")
        batch_op.drop_column("progress_at")
