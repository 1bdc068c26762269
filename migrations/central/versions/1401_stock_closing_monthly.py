"""closing stock per branch, product and month (rpt_stock_closing_monthly), filled from
the monthly movement summary as a running sum

Revision ID: 1401
Revises: 1302
Create Date: 2026-11-27 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1401"
down_revision: str | Sequence[str] | None = "1302"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rpt_stock_closing_monthly",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("value", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "branch", "sku", "month", name=op.f("pk_rpt_stock_closing_monthly")
        ),
    )
    # The monthly movements (migration 1101, a rollup of the ledger's daily sums) added
    # up month after month: the closing of every month in which a product moved.
    op.execute(
        "INSERT INTO rpt_stock_closing_monthly (branch, sku, month, qty_milli, value) "
        "SELECT branch, sku, month, "
        "sum(sum(qty_milli)) OVER (PARTITION BY branch, sku ORDER BY month), "
        "sum(sum(cost_value)) OVER (PARTITION BY branch, sku ORDER BY month) "
        "FROM rpt_stock_movement_monthly GROUP BY branch, sku, month"
    )


def downgrade() -> None:
    op.drop_table("rpt_stock_closing_monthly")
