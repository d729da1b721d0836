"""documents: one live (not failed) document per collection and content hash

Concurrent uploads of the same bytes used to race past the duplicate check and make several
documents. Duplicates made that way before this migration are kept but marked failed (the oldest
one of each group stays), so that the unique index can be built.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "status != 'failed'"
INDEX = "ix_documents_collection_id_sha256"


def upgrade() -> None:
    op.execute(
        sa.text(
            f"""
            UPDATE documents SET status = 'failed', error = :error
            WHERE {LIVE} AND EXISTS (
                SELECT 1 FROM documents AS older
                WHERE older.collection_id = documents.collection_id
                  AND older.sha256 = documents.sha256
                  AND older.{LIVE}
                  AND (older.created_at < documents.created_at
                       OR (older.created_at = documents.created_at AND older.id < documents.id))
            )
            """
        ).bindparams(
            error="the same file was uploaded to this collection more than once; "
            "the first upload is kept"
        )
    )
    op.create_index(
        INDEX,
        "documents",
        ["collection_id", "sha256"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="documents")
