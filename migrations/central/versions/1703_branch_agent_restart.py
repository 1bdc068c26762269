"""branch_sync_state: the agent database whose event numbering central set last (a
store's server replaced), its first number, and the numbers given up as lost with the
earlier one

Revision ID: 1703
Revises: 1702
Create Date: 2026-11-28 16:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import central.models.base

revision: str = "1703"
down_revision: str | Sequence[str] | None = "1702"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("agent_instance", "restarted_at_seq", "restarted_at", "lost_from_seq", "lost_to_seq")


def upgrade() -> None:
    with op.batch_alter_table("branch_sync_state") as batch:
        batch.add_column(sa.Column("agent_instance", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("restarted_at_seq", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("restarted_at", central.models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("lost_from_seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("lost_to_seq", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("branch_sync_state") as batch:
        for column in reversed(_COLUMNS):
            batch.drop_column(column)
