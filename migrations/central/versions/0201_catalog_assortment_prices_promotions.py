"""catalog, assortment, prices, promotions, master-data version and outbox

Revision ID: 0201
Revises: 0001
Create Date: 2026-11-27 18:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import central.models.base

revision: str = "0201"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "assortment_exceptions",
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("include", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("branch", "sku", name=op.f("pk_assortment_exceptions")),
    )
    op.create_index(
        op.f("ix_assortment_exceptions_sku"), "assortment_exceptions", ["sku"], unique=False
    )
    op.create_table(
        "categories",
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("parent_code", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_categories")),
    )
    op.create_index(op.f("ix_categories_parent_code"), "categories", ["parent_code"], unique=False)
    op.create_table(
        "format_products",
        sa.Column("format_code", sa.String(length=32), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("format_code", "sku", name=op.f("pk_format_products")),
    )
    op.create_index(op.f("ix_format_products_sku"), "format_products", ["sku"], unique=False)
    op.create_table(
        "masterdata_counter",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_masterdata_counter")),
    )
    op.create_table(
        "masterdata_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("scope_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("created_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", central.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_masterdata_outbox")),
    )
    op.create_index(
        "ix_masterdata_outbox_pending", "masterdata_outbox", ["published_at", "id"], unique=False
    )
    op.create_table(
        "price_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("scope_id", sa.String(length=32), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("effective_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("effective_local", sa.String(length=19), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("withdrawn", sa.Boolean(), nullable=False),
        sa.Column("document_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_entries")),
    )
    op.create_index(
        "ix_price_entries_scope_bucket",
        "price_entries",
        ["scope", "scope_id", "bucket"],
        unique=False,
    )
    op.create_index("ix_price_entries_sku", "price_entries", ["sku"], unique=False)
    op.create_table(
        "price_zones",
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_price_zones")),
    )
    op.create_table(
        "products",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("weighed", sa.Boolean(), nullable=False),
        sa.Column("scale_plu", sa.Integer(), nullable=True),
        sa.Column("category_code", sa.String(length=32), nullable=True),
        sa.Column("vat_rate_bp", sa.Integer(), nullable=False),
        sa.Column("vat_group", sa.String(length=1), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_products")),
    )
    op.create_index(op.f("ix_products_bucket"), "products", ["bucket"], unique=False)
    op.create_index(op.f("ix_products_category_code"), "products", ["category_code"], unique=False)
    op.create_index("ix_products_name", "products", ["name"], unique=False)
    op.create_table(
        "promotions",
        sa.Column("promotion_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("percent_bp", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("m", sa.Integer(), nullable=False),
        sa.Column("skus", sa.JSON(), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("branches", sa.JSON(), nullable=False),
        sa.Column("starts_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ends_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("promotion_id", name=op.f("pk_promotions")),
    )
    op.create_table(
        "repricing_documents",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("scope_id", sa.String(length=32), nullable=False),
        sa.Column("effective_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("effective_local", sa.String(length=19), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=False),
        sa.Column("created_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("approved_at", central.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repricing_documents")),
    )
    op.create_table(
        "store_formats",
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_store_formats")),
    )
    op.create_table(
        "product_barcodes",
        sa.Column("barcode", sa.String(length=64), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["sku"],
            ["products.sku"],
            name=op.f("fk_product_barcodes_sku_products"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("barcode", name=op.f("pk_product_barcodes")),
    )
    op.create_index(op.f("ix_product_barcodes_sku"), "product_barcodes", ["sku"], unique=False)
    op.create_table(
        "repricing_lines",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "document_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("new_price", sa.BigInteger(), nullable=False),
        sa.Column("old_price", sa.BigInteger(), nullable=True),
        sa.Column("stock_milli", sa.BigInteger(), nullable=False),
        sa.Column("old_value", sa.BigInteger(), nullable=False),
        sa.Column("new_value", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["repricing_documents.id"],
            name=op.f("fk_repricing_lines_document_id_repricing_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repricing_lines")),
    )
    op.create_index(
        op.f("ix_repricing_lines_document_id"), "repricing_lines", ["document_id"], unique=False
    )

    op.bulk_insert(
        sa.table(
            "masterdata_counter", sa.column("name", sa.String), sa.column("value", sa.BigInteger)
        ),
        [{"name": "version", "value": 0}],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_repricing_lines_document_id"), table_name="repricing_lines")
    op.drop_table("repricing_lines")
    op.drop_index(op.f("ix_product_barcodes_sku"), table_name="product_barcodes")
    op.drop_table("product_barcodes")
    op.drop_table("store_formats")
    op.drop_table("repricing_documents")
    op.drop_table("promotions")
    op.drop_index("ix_products_name", table_name="products")
    op.drop_index(op.f("ix_products_category_code"), table_name="products")
    op.drop_index(op.f("ix_products_bucket"), table_name="products")
    op.drop_table("products")
    op.drop_table("price_zones")
    op.drop_index("ix_price_entries_sku", table_name="price_entries")
    op.drop_index("ix_price_entries_scope_bucket", table_name="price_entries")
    op.drop_table("price_entries")
    op.drop_index("ix_masterdata_outbox_pending", table_name="masterdata_outbox")
    op.drop_table("masterdata_outbox")
    op.drop_table("masterdata_counter")
    op.drop_index(op.f("ix_format_products_sku"), table_name="format_products")
    op.drop_table("format_products")
    op.drop_index(op.f("ix_categories_parent_code"), table_name="categories")
    op.drop_table("categories")
    op.drop_index(op.f("ix_assortment_exceptions_sku"), table_name="assortment_exceptions")
    op.drop_table("assortment_exceptions")
