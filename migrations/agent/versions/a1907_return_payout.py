"""customer_returns: the pay-out (0x46 cash out) on the fiscal printer of a cash refund
made without receipt: its status (pending -> printed | failed), the printer's last
document number and cash sum read just before it was sent, and why it failed. NULL on
every return before it, and on those without such a pay-out.

Revision ID: a1907
Revises: a1905
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1907"
down_revision: str | Sequence[str] | None = "a1905"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("customer_returns") as batch:
        batch.add_column(sa.Column("payout_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("payout_document_before", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("payout_cash_before", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("payout_error", sa.String(300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("customer_returns") as batch:
        batch.drop_column("payout_error")
        batch.drop_column("payout_cash_before")
        batch.drop_column("payout_document_before")
        batch.drop_column("payout_status")
