"""master-data replica: products, barcodes, prices, promotions, applied versions

Revision ID: a0201
Revises: a0001
Create Date: 2026-11-27 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import branch_agent.models

revision: str = "a0201"
down_revision: str | Sequence[str] | None = "a0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "md_applied_keys",
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subject", name=op.f("pk_md_applied_keys")),
    )
    op.create_table(
        "md_barcodes",
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("scope_id", sa.String(length=32), nullable=False),
        sa.Column("barcode", sa.String(length=64), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "scope_id", "barcode", name=op.f("pk_md_barcodes")),
    )
    op.create_index("ix_md_barcodes_barcode", "md_barcodes", ["barcode"], unique=False)
    op.create_index(
        "ix_md_barcodes_scope_bucket", "md_barcodes", ["scope", "scope_id", "bucket"], unique=False
    )
    op.create_table(
        "md_prices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("scope_id", sa.String(length=32), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("effective_at", branch_agent.models.UTCDateTime(), nullable=False),
        sa.Column("effective_local", sa.String(length=19), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_md_prices")),
    )
    op.create_index(
        "ix_md_prices_scope_bucket", "md_prices", ["scope", "scope_id", "bucket"], unique=False
    )
    op.create_index("ix_md_prices_sku", "md_prices", ["sku"], unique=False)
    op.create_table(
        "md_products",
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("scope_id", sa.String(length=32), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("weighed", sa.Boolean(), nullable=False),
        sa.Column("scale_plu", sa.Integer(), nullable=True),
        sa.Column("category", sa.String(length=32), nullable=True),
        sa.Column("category_path", sa.String(length=400), nullable=False),
        sa.Column("vat_rate_bp", sa.Integer(), nullable=False),
        sa.Column("vat_group", sa.String(length=1), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "scope_id", "sku", name=op.f("pk_md_products")),
    )
    op.create_index("ix_md_products_name", "md_products", ["name"], unique=False)
    op.create_index("ix_md_products_scale_plu", "md_products", ["scale_plu"], unique=False)
    op.create_index(
        "ix_md_products_scope_bucket", "md_products", ["scope", "scope_id", "bucket"], unique=False
    )
    op.create_index("ix_md_products_sku", "md_products", ["sku"], unique=False)
    op.create_table(
        "md_promotions",
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("scope_id", sa.String(length=32), nullable=False),
        sa.Column("promotion_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("ends_at", branch_agent.models.UTCDateTime(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "scope_id", "promotion_id", name=op.f("pk_md_promotions")),
    )
    op.create_table(
        "md_state",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_md_state")),
    )


def downgrade() -> None:
    op.drop_table("md_state")
    op.drop_table("md_promotions")
    op.drop_index("ix_md_products_sku", table_name="md_products")
    op.drop_index("ix_md_products_scope_bucket", table_name="md_products")
    op.drop_index("ix_md_products_scale_plu", table_name="md_products")
    op.drop_index("ix_md_products_name", table_name="md_products")
    op.drop_table("md_products")
    op.drop_index("ix_md_prices_sku", table_name="md_prices")
    op.drop_index("ix_md_prices_scope_bucket", table_name="md_prices")
    op.drop_table("md_prices")
    op.drop_index("ix_md_barcodes_scope_bucket", table_name="md_barcodes")
    op.drop_index("ix_md_barcodes_barcode", table_name="md_barcodes")
    op.drop_table("md_barcodes")
    op.drop_table("md_applied_keys")
