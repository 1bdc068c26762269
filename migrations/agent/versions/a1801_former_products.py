"""former_products: the facts of products that left the branch's assortment

Stock of a product removed from the branch's assortment at central (or archived) stays
in the store and must still be written off, returned, transferred out and counted;
the replica (``md_products``) no longer has the product, so the applier keeps its facts
here when it drops the product's last row (``branch_agent.masterdata``).

Products that left before this revision are gone from the replica: for each one the
branch has stock history of (a ``stock_balances`` row) and that the replica no longer
lists, a row is made from the demo catalog's product when there is one, otherwise from
the ledger: weighed if any of its stock moves is a fractional quantity, pieces if not
(``facts = 'ledger'``, the name is the SKU). A database without master data yet (the
demo catalog) gets none: its products are all still there.

Revision ID: a1801
Revises: a1701
Create Date: 2026-11-29 10:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import branch_agent.models

revision: str = "a1801"
down_revision: str | Sequence[str] | None = "a1701"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "former_products",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("weighed", sa.Boolean(), nullable=False),
        sa.Column("left_at", branch_agent.models.UTCDateTime(), nullable=False),
        sa.Column("facts", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_former_products")),
    )
    bind = op.get_bind()
    if bind.scalar(sa.text("SELECT 1 FROM md_products LIMIT 1")) is None:
        return
    # As UTCDateTime stores it (naive UTC, SQLAlchemy's SQLite format).
    now = datetime.now(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    bind.execute(
        sa.text(
            "INSERT INTO former_products (sku, name, unit, weighed, left_at, facts) "
            "SELECT sku, coalesce(name, sku), coalesce(unit, CASE WHEN w THEN 'kg' ELSE 'pcs' END), "
            "coalesce(weighed, w), :now, CASE WHEN name IS NULL THEN 'ledger' ELSE 'master_data' END "
            "FROM (SELECT b.sku, p.name, p.unit, p.weighed, EXISTS (SELECT 1 FROM stock_ledger AS m "
            "WHERE m.sku = b.sku AND m.quantity_milli % 1000 != 0) AS w "
            "FROM stock_balances AS b LEFT JOIN products AS p ON p.sku = b.sku "
            "WHERE b.sku NOT IN (SELECT sku FROM md_products))"
        ),
        {"now": now},
    )


def downgrade() -> None:
    op.drop_table("former_products")
