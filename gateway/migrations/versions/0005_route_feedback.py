"""The learned router's score and inputs on each ledger record, and outcome feedback.

``ledger_records.route_score`` / ``route_features`` (nullable: only requests the learned
policy routed have them) feed ``tollgate routing calibrate``; ``route_feedback`` holds the
labels clients send to ``POST /v1/feedback``, one per (key, request id), for
``tollgate routing train``.

Revision ID: 0005_route_feedback
Revises: 0004_savings_by_routing
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_route_feedback"
down_revision: str | None = "0004_savings_by_routing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    # Safe to run again after a half-applied upgrade (SQLite DDL is not transactional).
    existing = _columns("ledger_records")
    if "route_score" not in existing:
        op.add_column("ledger_records", sa.Column("route_score", sa.Float(), nullable=True))
    if "route_features" not in existing:
        op.add_column("ledger_records", sa.Column("route_features", sa.String(), nullable=True))
    if sa.inspect(op.get_bind()).has_table("route_feedback"):
        return
    op.create_table(
        "route_feedback",
        sa.Column("key_id", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("label", sa.String(length=8), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "request_id"),
    )
    op.create_index("ix_route_feedback_updated_at", "route_feedback", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_route_feedback_updated_at", table_name="route_feedback")
    op.drop_table("route_feedback")
    with op.batch_alter_table("ledger_records") as batch:
        batch.drop_column("route_features")
        batch.drop_column("route_score")
