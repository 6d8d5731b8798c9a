"""jobs (tenant, status) index: the running-job quota counts a tenant's active jobs on every submission

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 07:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_tenant_status", "jobs", ["tenant", "status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_status", table_name="jobs")
