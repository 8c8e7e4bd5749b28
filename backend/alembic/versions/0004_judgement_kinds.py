"""judgement kinds from the algorithm registry: judgements.kind is vs_sft or klq_vs_<algorithm> (any
registered algorithm KLQ is judged against, not only PPO) and up to 32 characters

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_judgements_kind"), type_="check")
        batch_op.alter_column("kind", existing_type=sa.String(length=16), type_=sa.String(length=32))
        batch_op.create_check_constraint("kind", "kind IS NULL OR kind = 'vs_sft' OR kind LIKE 'klq_vs_%'")


def downgrade() -> None:
    # pairings of algorithms other than PPO do not fit the old constraint: they go (with their verdicts)
    op.execute("DELETE FROM judgements WHERE kind IS NOT NULL AND kind NOT IN ('klq_vs_ppo', 'vs_sft')")
    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_judgements_kind"), type_="check")
        batch_op.alter_column("kind", existing_type=sa.String(length=32), type_=sa.String(length=16))
        batch_op.create_check_constraint("kind", "kind IS NULL OR kind IN ('klq_vs_ppo', 'vs_sft')")
