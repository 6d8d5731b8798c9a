"""metric_series: per-series point counts and step stride, kept at write time for downsampled reads

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 07:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "metric_series",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_step", sa.Integer(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("stride", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "name"),
    )
    # Series written before this revision: counted now, stride unknown (reads check it the slow way).
    op.execute("INSERT INTO metric_series (job_id, name, count, first_step, last_step, stride) "
               "SELECT job_id, name, count(*), min(step), max(step), NULL FROM metric_points GROUP BY job_id, name")


def downgrade() -> None:
    op.drop_table("metric_series")
