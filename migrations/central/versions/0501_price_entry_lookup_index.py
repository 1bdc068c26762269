"""price entries: one index for the entry in force of a SKU at a scope and moment

Revision ID: 0501
Revises: 0201
Create Date: 2026-11-27 20:05:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0501"
down_revision: str | Sequence[str] | None = "0201"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_price_entries_sku", table_name="price_entries")
    op.create_index(
        "ix_price_entries_sku_scope_moment",
        "price_entries",
        ["sku", "scope", "scope_id", "effective_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_price_entries_sku_scope_moment", table_name="price_entries")
    op.create_index("ix_price_entries_sku", "price_entries", ["sku"])
