"""documents.progress_at, jobs.progress_at: when work on the row last moved

The sweep (kb.recovery) re-drives a document or job whose progress has not moved for
KB_STALLED_AFTER_S. updated_at cannot say that: pinning a document changes it too.
Existing rows start from their updated_at.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-13
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("documents", "jobs")


def upgrade() -> None:
    for table in TABLES:
        # Added nullable, filled, then made NOT NULL: SQLite cannot add a column whose default
        # is not a constant.
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))
        op.execute(sa.text(f"UPDATE {table} SET progress_at = updated_at"))
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "progress_at", existing_type=sa.DateTime(timezone=True), nullable=False
            )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("progress_at")
