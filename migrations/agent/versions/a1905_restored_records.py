"""restored_records: the sales and customer returns central holds that a database
restored from a backup lost; a till's retry of one is refused, not printed again

Revision ID: a1905
Revises: a1904
Create Date: 2026-12-07 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1905"
down_revision: str | Sequence[str] | None = "a1904"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "restored_records",
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("till", sa.String(32), nullable=False),
        sa.Column("record_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("shift_id", sa.String(64), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("fiscal_number", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("kind", "till", "record_id", name=op.f("pk_restored_records")),
    )


def downgrade() -> None:
    op.drop_table("restored_records")
