"""branch_status.clock_offset_ms: the store server's clock against central's, from the
heartbeat

Revision ID: 1705
Revises: 1704
Create Date: 2026-11-28 18:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1705"
down_revision: str | Sequence[str] | None = "1704"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("branch_status") as batch:
        batch.add_column(sa.Column("clock_offset_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("branch_status") as batch:
        batch.drop_column("clock_offset_ms")
