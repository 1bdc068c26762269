"""report summary tables (sales daily/hourly/cashier/product, payments, stock movement, shifts)

Revision ID: 0401
Revises: 0001
Create Date: 2026-11-27 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import central.models.base

revision: str = "0401"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rpt_last_selling_price",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("unit_price", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("sold_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("branch", "sku", name=op.f("pk_rpt_last_selling_price")),
    )
    op.create_table(
        "rpt_payments_daily",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("payment_type", sa.String(length=32), nullable=False),
        sa.Column("receipts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refunds", sa.Integer(), server_default="0", nullable=False),
        sa.Column("refunds_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "branch", "local_date", "payment_type", name=op.f("pk_rpt_payments_daily")
        ),
    )
    op.create_index(
        "ix_rpt_payments_daily_local_date", "rpt_payments_daily", ["local_date"], unique=False
    )
    op.create_table(
        "rpt_sales_branch_daily",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("receipts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("revenue", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("vat", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("discounts", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns", sa.Integer(), server_default="0", nullable=False),
        sa.Column("returns_qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_vat", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_cost", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("branch", "local_date", name=op.f("pk_rpt_sales_branch_daily")),
    )
    op.create_index(
        "ix_rpt_sales_branch_daily_local_date",
        "rpt_sales_branch_daily",
        ["local_date"],
        unique=False,
    )
    op.create_table(
        "rpt_sales_cashier_daily",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("cashier", sa.String(length=64), nullable=False),
        sa.Column("voided_lines", sa.Integer(), server_default="0", nullable=False),
        sa.Column("manual_discount_lines", sa.Integer(), server_default="0", nullable=False),
        sa.Column("manual_discount_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("receipts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("revenue", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("vat", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("discounts", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns", sa.Integer(), server_default="0", nullable=False),
        sa.Column("returns_qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_vat", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_cost", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "branch", "local_date", "cashier", name=op.f("pk_rpt_sales_cashier_daily")
        ),
    )
    op.create_index(
        "ix_rpt_sales_cashier_daily_local_date",
        "rpt_sales_cashier_daily",
        ["local_date"],
        unique=False,
    )
    op.create_table(
        "rpt_sales_hourly",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("receipts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("revenue", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("vat", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("discounts", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns", sa.Integer(), server_default="0", nullable=False),
        sa.Column("returns_qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_vat", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_cost", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("branch", "local_date", "hour", name=op.f("pk_rpt_sales_hourly")),
    )
    op.create_index(
        "ix_rpt_sales_hourly_local_date", "rpt_sales_hourly", ["local_date"], unique=False
    )
    op.create_table(
        "rpt_sales_product_daily",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("receipts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("revenue", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("vat", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("discounts", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns", sa.Integer(), server_default="0", nullable=False),
        sa.Column("returns_qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_vat", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_cost", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "branch", "local_date", "sku", name=op.f("pk_rpt_sales_product_daily")
        ),
    )
    op.create_index(
        "ix_rpt_sales_product_daily_local_date",
        "rpt_sales_product_daily",
        ["local_date"],
        unique=False,
    )
    op.create_table(
        "rpt_sales_product_daily_chain",
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("receipts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("revenue", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("vat", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("discounts", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns", sa.Integer(), server_default="0", nullable=False),
        sa.Column("returns_qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_vat", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns_cost", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("local_date", "sku", name=op.f("pk_rpt_sales_product_daily_chain")),
    )
    op.create_table(
        "rpt_shift_payments",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("shift_id", sa.String(length=64), nullable=False),
        sa.Column("payment_type", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refunds", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "branch", "shift_id", "payment_type", name=op.f("pk_rpt_shift_payments")
        ),
    )
    op.create_table(
        "rpt_shifts",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("shift_id", sa.String(length=64), nullable=False),
        sa.Column("till", sa.String(length=32), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("receipts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("sales", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("returns", sa.Integer(), server_default="0", nullable=False),
        sa.Column("returns_total", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("branch", "shift_id", name=op.f("pk_rpt_shifts")),
    )
    op.create_index("ix_rpt_shifts_local_date", "rpt_shifts", ["local_date"], unique=False)
    op.create_table(
        "rpt_stock_movement_daily",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("movement", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("qty_milli", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost_value", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "branch",
            "local_date",
            "sku",
            "movement",
            "reason",
            name=op.f("pk_rpt_stock_movement_daily"),
        ),
    )
    op.create_index(
        "ix_rpt_stock_movement_daily_local_date",
        "rpt_stock_movement_daily",
        ["local_date"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_rpt_stock_movement_daily_local_date", table_name="rpt_stock_movement_daily")
    op.drop_table("rpt_stock_movement_daily")
    op.drop_index("ix_rpt_shifts_local_date", table_name="rpt_shifts")
    op.drop_table("rpt_shifts")
    op.drop_table("rpt_shift_payments")
    op.drop_table("rpt_sales_product_daily_chain")
    op.drop_index("ix_rpt_sales_product_daily_local_date", table_name="rpt_sales_product_daily")
    op.drop_table("rpt_sales_product_daily")
    op.drop_index("ix_rpt_sales_hourly_local_date", table_name="rpt_sales_hourly")
    op.drop_table("rpt_sales_hourly")
    op.drop_index("ix_rpt_sales_cashier_daily_local_date", table_name="rpt_sales_cashier_daily")
    op.drop_table("rpt_sales_cashier_daily")
    op.drop_index("ix_rpt_sales_branch_daily_local_date", table_name="rpt_sales_branch_daily")
    op.drop_table("rpt_sales_branch_daily")
    op.drop_index("ix_rpt_payments_daily_local_date", table_name="rpt_payments_daily")
    op.drop_table("rpt_payments_daily")
    op.drop_table("rpt_last_selling_price")
