"""submissions: one row per submitted job, so the per-minute quota outlives deleted jobs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 06:15:00
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
    op.create_table(
        "submissions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_submissions_tenant_created", "submissions", ["tenant", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_submissions_tenant_created", table_name="submissions")
    op.drop_table("submissions")
