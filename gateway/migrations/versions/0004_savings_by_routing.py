"""Savings count only what routing chose: a request that named its tier saved nothing.

Before this revision every record's counterfactual was its usage priced on the
reference (large) tier, so explicit ``model: small`` calls and embeddings showed as
"saved by routing". Such a request's route reason is exactly ``by_name`` (a fallback
appends ``;fallback_from:...``), so its counterfactual becomes its own cost: the request
still costs what it cost, and the savings on it are zero.

Revision ID: 0004_savings_by_routing
Revises: 0003_key_grace
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_savings_by_routing"
down_revision: str | None = "0003_key_grace"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE ledger_records SET counterfactual_nusd = cost_nusd "
        "WHERE route_reason = 'by_name' AND counterfactual_nusd <> cost_nusd"
    )


def downgrade() -> None:
    # The old figure (usage at the reference tier's price) cannot be rebuilt without the
    # price book of the day; the corrected one is kept.
    pass
