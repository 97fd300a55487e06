"""Key rotation with a grace period: the previous secret's hash and its deadline.

Revision ID: 0003_key_grace
Revises: 0002_keys
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_key_grace"
down_revision: str | None = "0002_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _has_column(table: str, column: str) -> bool:
    return column in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    # Safe to run again after a half-applied upgrade (SQLite DDL is not transactional).
    if not _has_column("api_keys", "previous_key_hash"):
        op.add_column("api_keys", sa.Column("previous_key_hash", sa.String(64), nullable=True))
    if not _has_column("api_keys", "previous_valid_until"):
        op.add_column(
            "api_keys", sa.Column("previous_valid_until", sa.DateTime(timezone=True), nullable=True)
        )
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("api_keys")}
    if "ix_api_keys_previous_key_hash" not in indexes:
        op.create_index(
            "ix_api_keys_previous_key_hash", "api_keys", ["previous_key_hash"], unique=True
        )


def downgrade() -> None:
    op.drop_index("ix_api_keys_previous_key_hash", table_name="api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("previous_valid_until")
        batch.drop_column("previous_key_hash")
