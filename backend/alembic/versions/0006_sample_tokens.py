"""token records of samples: samples.kind ('eval' | 'train'), sample_index and response_length, uniqueness
over (run_id, kind, step, prompt_id, sample_index); sample_tokens, one row per sample with packed arrays

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 14:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=8), server_default="eval", nullable=False))
        batch_op.add_column(
            sa.Column("sample_index", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("response_length", sa.Integer(), nullable=True))
        batch_op.drop_constraint(op.f("uq_samples_run_id_step_prompt_id"), type_="unique")
        batch_op.create_unique_constraint(
            op.f("uq_samples_run_id_kind_step_prompt_id_sample_index"),
            ["run_id", "kind", "step", "prompt_id", "sample_index"],
        )
        batch_op.create_check_constraint("kind", "kind IN ('eval', 'train')")

    op.create_table(
        "sample_tokens",
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("num_tokens", sa.Integer(), nullable=False),
        sa.Column("token_ids", sa.LargeBinary(), nullable=False),
        sa.Column("tokens", sa.JSON(), nullable=False),
        sa.Column("names", sa.JSON(), nullable=False),
        sa.Column("quantities", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sample_id"], ["samples.id"], name=op.f("fk_sample_tokens_sample_id_samples"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("sample_id", name=op.f("pk_sample_tokens")),
    )


def downgrade() -> None:
    op.drop_table("sample_tokens")
    # training rollouts have no place in the old schema: they go; eval samples stay
    op.execute("DELETE FROM samples WHERE kind <> 'eval'")
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_samples_kind"), type_="check")
        batch_op.drop_constraint(op.f("uq_samples_run_id_kind_step_prompt_id_sample_index"), type_="unique")
        batch_op.create_unique_constraint(
            op.f("uq_samples_run_id_step_prompt_id"), ["run_id", "step", "prompt_id"]
        )
        batch_op.drop_column("response_length")
        batch_op.drop_column("sample_index")
        batch_op.drop_column("kind")
