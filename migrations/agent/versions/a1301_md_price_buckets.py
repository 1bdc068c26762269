"""master data: each price bucket's rows kept as one value; md_prices indexed by SKU only

The applier compares a bucket message with ``md_price_buckets`` instead of reading the
bucket's rows through ``ix_md_prices_scope_bucket``, which every inserted price row had
to maintain. Existing rows stay; their buckets are filled from them here.

Revision ID: a1301
Revises: a1001
Create Date: 2026-11-27 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1301"
down_revision: str | Sequence[str] | None = "a1001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "md_price_buckets",
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("scope_id", sa.String(length=32), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "scope_id", "bucket", name=op.f("pk_md_price_buckets")),
    )
    # Both arrays of a group see its rows in the same order, so ids[i] is rows[i]'s id.
    op.execute(
        "INSERT INTO md_price_buckets (scope, scope_id, bucket, rows) "
        "SELECT scope, scope_id, bucket, json_object("
        "'ids', json_group_array(id), "
        "'rows', json_group_array(json_array(sku, price, effective_at, effective_local, version))"
        ") FROM (SELECT * FROM md_prices ORDER BY id) GROUP BY scope, scope_id, bucket"
    )
    op.drop_index("ix_md_prices_scope_bucket", table_name="md_prices")


def downgrade() -> None:
    op.create_index(
        "ix_md_prices_scope_bucket", "md_prices", ["scope", "scope_id", "bucket"], unique=False
    )
    op.drop_table("md_price_buckets")
