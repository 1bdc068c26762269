"""report summary indexes: movement+day on stock movements, none by day on per-branch products

Revision ID: 0402
Revises: 0401
Create Date: 2026-11-27 18:55:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0402"
down_revision: str | Sequence[str] | None = "0401"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_rpt_sales_product_daily_local_date", table_name="rpt_sales_product_daily")
    op.drop_index("ix_rpt_stock_movement_daily_local_date", table_name="rpt_stock_movement_daily")
    op.create_index(
        "ix_rpt_stock_movement_daily_movement_local_date",
        "rpt_stock_movement_daily",
        ["movement", "local_date"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_rpt_stock_movement_daily_movement_local_date", table_name="rpt_stock_movement_daily"
    )
    op.create_index(
        "ix_rpt_stock_movement_daily_local_date",
        "rpt_stock_movement_daily",
        ["local_date"],
        unique=False,
    )
    op.create_index(
        "ix_rpt_sales_product_daily_local_date",
        "rpt_sales_product_daily",
        ["local_date"],
        unique=False,
    )
