"""api_keys, api_key_collections: keys limited to some collections (kb.apikeys)

A key is kept only as the sha256 of the whole key; its collections are names (a collection is
made by its first upload, so a key may name one that has no document yet).

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-20
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_table(
        "api_key_collections",
        sa.Column("api_key_id", sa.String(length=36), nullable=False),
        sa.Column("collection", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_api_key_collections_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("api_key_id", "collection", name=op.f("pk_api_key_collections")),
    )


def downgrade() -> None:
    op.drop_table("api_key_collections")
    op.drop_table("api_keys")
