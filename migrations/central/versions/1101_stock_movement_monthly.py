"""stock movement summary per month (rpt_stock_movement_monthly), filled from the daily one

Revision ID: 1101
Revises: 0900
Create Date: 2026-11-28 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1101"
down_revision: str | Sequence[str] | None = "0900"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rpt_stock_movement_monthly",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("movement", sa.String(length=32), nullable=False),
        sa.Column("qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost_value", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "branch", "month", "sku", "movement", name=op.f("pk_rpt_stock_movement_monthly")
        ),
    )
    op.create_index(
        "ix_rpt_stock_movement_monthly_month",
        "rpt_stock_movement_monthly",
        ["month"],
        unique=False,
    )
    # The rollup of what the daily summary already holds, so the report is right at once.
    if op.get_bind().dialect.name == "postgresql":
        month = "CAST(date_trunc('month', local_date) AS DATE)"
    else:
        month = "date(local_date, 'start of month')"
    op.execute(
        "INSERT INTO rpt_stock_movement_monthly "
        "(branch, month, sku, movement, qty_milli, cost_value) "
        f"SELECT branch, {month}, sku, movement, sum(qty_milli), sum(cost_value) "
        f"FROM rpt_stock_movement_daily GROUP BY branch, {month}, sku, movement"
    )


def downgrade() -> None:
    op.drop_index("ix_rpt_stock_movement_monthly_month", table_name="rpt_stock_movement_monthly")
    op.drop_table("rpt_stock_movement_monthly")
