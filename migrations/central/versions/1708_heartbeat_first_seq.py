"""branch_status.first_seq: the number of the first event of the agent database that
sent the latest heartbeat (numbers below it cannot be resent by it)

Revision ID: 1708
Revises: 1707
Create Date: 2026-11-28 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1708"
down_revision: str | Sequence[str] | None = "1707"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("branch_status") as batch:
        batch.add_column(
            sa.Column("first_seq", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("branch_status") as batch:
        batch.drop_column("first_seq")
