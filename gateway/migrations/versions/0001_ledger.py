"""Ledger records: one row per request that reached an engine.

Safe to run again after a half-applied upgrade (SQLite's DDL is not transactional under
pysqlite): an existing table is left alone.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_ledger"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXED = ("day", "finished_at", "key_id", "team")


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("ledger_records"):
        return
    op.create_table(
        "ledger_records",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("key_prefix", sa.String(), nullable=False),
        sa.Column("team", sa.String(), nullable=True),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("requested_model", sa.String(), nullable=False),
        sa.Column("engine", sa.String(), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("upstream_model", sa.String(), nullable=False),
        sa.Column("route_reason", sa.String(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("usage_estimated", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("cost_nusd", sa.BigInteger(), nullable=False),
        sa.Column("counterfactual_nusd", sa.BigInteger(), nullable=False),
        sa.Column("price_version", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    for column in _INDEXED:
        op.create_index(f"ix_ledger_records_{column}", "ledger_records", [column])


def downgrade() -> None:
    for column in _INDEXED:
        op.drop_index(f"ix_ledger_records_{column}", table_name="ledger_records")
    op.drop_table("ledger_records")
