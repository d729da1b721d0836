"""pages.text_source: where a page's text tier came from ('text_layer' or 'ocr')

Pages without a text layer (scans, photos, image-only PDF pages) are now read by OCR at render
time (ingest.ocr). Existing pages were all made before that, from their text layer (empty for a
scan), so they start as 'text_layer'; a scan ingested before keeps its empty text tier until it
is deleted and uploaded again (reindexing re-encodes pages, it does not render them again).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pages") as batch:
        batch.add_column(
            sa.Column("text_source", sa.String(16), nullable=False, server_default="text_layer")
        )
        batch.create_check_constraint(
            op.f("ck_pages_text_source"), "text_source IN ('text_layer', 'ocr')"
        )


def downgrade() -> None:
    with op.batch_alter_table("pages") as batch:
        batch.drop_constraint(op.f("ck_pages_text_source"), type_="check")
        batch.drop_column("text_source")
