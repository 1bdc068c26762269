"""shift_id_conflicts: an opening or closing not filed into the shift of its id
(another opening or closing is there already), kept beside it instead of overwriting.

Revision ID: 1716
Revises: 1712
Create Date: 2026-11-29 07:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import central.models.base

revision: str = "1716"
down_revision: str | Sequence[str] | None = "1712"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shift_id_conflicts",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("shift_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=6), nullable=False),
        sa.Column("till", sa.String(length=32), nullable=False),
        sa.Column("cashier", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("received_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_shift_id_conflicts")),
    )
    op.create_index(
        "ix_shift_id_conflicts_branch_shift_id",
        "shift_id_conflicts",
        ["branch", "shift_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_shift_id_conflicts_branch_shift_id", table_name="shift_id_conflicts")
    op.drop_table("shift_id_conflicts")
