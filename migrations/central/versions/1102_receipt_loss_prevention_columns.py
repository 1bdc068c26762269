"""receipts.voided_lines, receipt_lines.manual_discount and promotion_id

Rows stored before keep NULL there ("not recorded"): the report rebuild keeps what
ingestion counted for the cashier-days that hold such receipts.

Revision ID: 1102
Revises: 1101
Create Date: 2026-11-28 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1102"
down_revision: str | Sequence[str] | None = "1101"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("receipts") as batch:
        batch.add_column(sa.Column("voided_lines", sa.Integer(), nullable=True))
    with op.batch_alter_table("receipt_lines") as batch:
        batch.add_column(sa.Column("manual_discount", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("promotion_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("receipt_lines") as batch:
        batch.drop_column("promotion_id")
        batch.drop_column("manual_discount")
    with op.batch_alter_table("receipts") as batch:
        batch.drop_column("voided_lines")
