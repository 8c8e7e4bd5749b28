"""experiments: the experiments table; runs.experiment_id; judgements.experiment_id and kind

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 03:46:12.230569
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("grid", sa.JSON(), nullable=False),
        sa.Column("judge", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("notes", sa.Text(), server_default="", nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("judging_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
    )
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.create_index("ix_experiments_created_at", ["created_at"], unique=False)

    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("experiment_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f("ix_judgements_experiment_id"), ["experiment_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_judgements_experiment_id_experiments"),
            "experiments",
            ["experiment_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_check_constraint("kind", "kind IS NULL OR kind IN ('klq_vs_ppo', 'vs_sft')")

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("experiment_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_runs_experiment_id"), ["experiment_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_runs_experiment_id_experiments"),
            "experiments",
            ["experiment_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_runs_experiment_id_experiments"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_runs_experiment_id"))
        batch_op.drop_column("experiment_id")

    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_judgements_kind"), type_="check")
        batch_op.drop_constraint(batch_op.f("fk_judgements_experiment_id_experiments"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_judgements_experiment_id"))
        batch_op.drop_column("kind")
        batch_op.drop_column("experiment_id")

    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_index("ix_experiments_created_at")

    op.drop_table("experiments")
