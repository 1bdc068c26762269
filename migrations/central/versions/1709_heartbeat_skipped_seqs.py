"""branch_status.skipped_seqs: the numbers the agent database of the latest heartbeat
skipped (restored from a backup), which a resend cannot bring either

Revision ID: 1709
Revises: 1708
Create Date: 2026-11-29 01:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1709"
down_revision: str | Sequence[str] | None = "1708"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("branch_status") as batch:
        batch.add_column(sa.Column("skipped_seqs", sa.JSON(), server_default="[]", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("branch_status") as batch:
        batch.drop_column("skipped_seqs")
