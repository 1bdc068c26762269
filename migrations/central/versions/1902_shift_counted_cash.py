"""Counted cash at the shift close: shifts.counted_cash (what the cashier counted in the
drawer) and shifts.expected_cash (what the till's records said should be there), both
in minor units from the closing event; NULL for shifts closed before (not counted) and
for closings from agents that do not send them.

Revision ID: 1902
Revises: 1901
Create Date: 2026-12-06 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1902"
down_revision: str | Sequence[str] | None = "1901"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.add_column(sa.Column("counted_cash", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("expected_cash", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.drop_column("expected_cash")
        batch.drop_column("counted_cash")
