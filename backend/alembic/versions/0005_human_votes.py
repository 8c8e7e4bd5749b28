"""human votes: judgements with judge backend "human" (people voting blind in the dashboard): the pairs
they put to their voters (ballot_pairs), the voter's token name and comment on a verdict
(verdicts.voter, comment), and the automatic judgement whose pairs they vote on
(judgements.source_judgement_id)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 14:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ballot_pairs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("judgement_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.String(length=200), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("response_a", sa.Text(), nullable=False),
        sa.Column("response_b", sa.Text(), nullable=False),
        sa.Column("order", sa.String(length=2), nullable=False),
        sa.CheckConstraint("\"order\" IN ('ab', 'ba')", name=op.f("ck_ballot_pairs_order")),
        sa.ForeignKeyConstraint(
            ["judgement_id"],
            ["judgements.id"],
            name=op.f("fk_ballot_pairs_judgement_id_judgements"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ballot_pairs")),
        sa.UniqueConstraint("judgement_id", "position", name=op.f("uq_ballot_pairs_judgement_id_position")),
        sa.UniqueConstraint("judgement_id", "prompt_id", name=op.f("uq_ballot_pairs_judgement_id_prompt_id")),
    )
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("voter", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("comment", sa.Text(), nullable=True))
    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_judgement_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_judgements_source_judgement_id_judgements"),
            "judgements",
            ["source_judgement_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    # human judgements cannot be told apart from automatic ones without the new columns' meaning: they go
    op.execute("DELETE FROM judgements WHERE id IN (SELECT judgement_id FROM ballot_pairs)")
    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_judgements_source_judgement_id_judgements"), type_="foreignkey"
        )
        batch_op.drop_column("source_judgement_id")
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.drop_column("comment")
        batch_op.drop_column("voter")
    op.drop_table("ballot_pairs")
