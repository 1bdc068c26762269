"""restored_records: a sale or customer return central listed that this database had
recorded again before central's list came (a till's retry taken unchecked after the
restore hold expired): when the agent found it and the second record's number, shift,
total, fiscal number and event number. NULL on every row before it, and on those not
recorded again.

Revision ID: a1909
Revises: a1908
Create Date: 2026-12-09 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1909"
down_revision: str | Sequence[str] | None = "a1908"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("restored_records") as batch:
        batch.add_column(sa.Column("again_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("again_number", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("again_shift_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("again_total", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("again_fiscal_number", sa.String(64), nullable=True))
        batch.add_column(sa.Column("again_seq", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("restored_records") as batch:
        batch.drop_column("again_seq")
        batch.drop_column("again_fiscal_number")
        batch.drop_column("again_total")
        batch.drop_column("again_shift_id")
        batch.drop_column("again_number")
        batch.drop_column("again_at")
