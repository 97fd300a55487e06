"""Key store: teams and API keys (``gateway/keys.py``).

A table that already exists is left alone: throwaway setups and tests create the key
store with ``KeyStore.create_tables()`` (the same models), and SQLite's DDL is not
transactional under pysqlite, so a half-applied upgrade must be safe to run again.

Revision ID: 0002_keys
Revises: 0001_ledger
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_keys"
down_revision: str | None = "0001_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _limits() -> list[sa.Column[int]]:
    return [
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("budget_daily_nusd", sa.BigInteger(), nullable=True),
        sa.Column("budget_monthly_nusd", sa.BigInteger(), nullable=True),
        sa.Column("budget_total_nusd", sa.BigInteger(), nullable=True),
    ]


def _exists(table: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(table)


def upgrade() -> None:
    if not _exists("teams"):
        op.create_table(
            "teams",
            sa.Column("name", sa.String(length=64), nullable=False),
            sa.Column("models", sa.JSON(), nullable=True),
            sa.Column("metadata", sa.JSON(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            *_limits(),
            sa.PrimaryKeyConstraint("name"),
        )
    if not _exists("api_keys"):
        op.create_table(
            "api_keys",
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("key_hash", sa.String(length=64), nullable=False),
            sa.Column("prefix", sa.String(length=16), nullable=False),
            sa.Column("name", sa.String(length=128), nullable=False),
            sa.Column("team", sa.String(length=64), nullable=True),
            sa.Column("models", sa.JSON(), nullable=True),
            sa.Column("metadata", sa.JSON(), nullable=False),
            sa.Column("routing", sa.JSON(), nullable=False),
            sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
            *_limits(),
            sa.ForeignKeyConstraint(["team"], ["teams.name"], ondelete="RESTRICT"),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)
        op.create_index("ix_api_keys_team", "api_keys", ["team"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_team", table_name="api_keys")
    op.drop_index("ix_api_keys_key_hash", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("teams")
