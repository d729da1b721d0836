"""One model version, in the catalog: serving, job_pages, jobs.status 'cancelled'

- serving: the one model version the catalog serves (one row). An existing catalog starts from
  the version most of its pages are encoded for; an empty one gets it from the first process.
- job_pages: the pages each reindex job re-encodes and which are done, so progress is a
  recount and a stopped job resumes where it was. Jobs still unfinished are listed again by
  their next run (the sweep sends them again), so none are added here.
- jobs.status may be 'cancelled' (DELETE /v1/admin/jobs/{id}).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-20
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")


def _job_status_check(statuses: Sequence[str]) -> None:
    # Batch mode: SQLite cannot alter a CHECK constraint, so the table is copied.
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint(
            op.f("ck_jobs_status"), f"status IN ({', '.join(repr(s) for s in statuses)})"
        )


def upgrade() -> None:
    op.create_table(
        "serving",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_serving_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_serving")),
    )
    op.execute(
        sa.text(
            """
            INSERT INTO serving (id, model_version, since)
            SELECT 1, encoded_version, CURRENT_TIMESTAMP FROM pages
            WHERE encoded_version IS NOT NULL
            GROUP BY encoded_version ORDER BY COUNT(*) DESC, encoded_version LIMIT 1
            """
        )
    )
    op.create_table(
        "job_pages",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("page_id", sa.Integer(), nullable=False),
        sa.Column("done", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_pages_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["page_id"], ["pages.id"], name=op.f("fk_job_pages_page_id_pages"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "page_id", name=op.f("pk_job_pages")),
    )
    op.create_index(op.f("ix_job_pages_page_id"), "job_pages", ["page_id"])
    _job_status_check(JOB_STATUSES)


def downgrade() -> None:
    cancelled = "UPDATE jobs SET status = 'failed', error = 'cancelled' WHERE status = 'cancelled'"
    op.execute(sa.text(cancelled))
    _job_status_check(JOB_STATUSES[:-1])
    op.drop_index(op.f("ix_job_pages_page_id"), table_name="job_pages")
    op.drop_table("job_pages")
    op.drop_table("serving")
