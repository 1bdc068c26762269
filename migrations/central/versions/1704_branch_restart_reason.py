"""branch_sync_state.restart_reason: why a branch's event numbering restarted, a new
agent database or one restored from a backup (gone back in time)

Revision ID: 1704
Revises: 1703
Create Date: 2026-11-28 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1704"
down_revision: str | Sequence[str] | None = "1703"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("branch_sync_state") as batch:
        batch.add_column(sa.Column("restart_reason", sa.String(length=32), nullable=True))
    # Every restart before this release was a new database.
    op.execute(
        "UPDATE branch_sync_state SET restart_reason = 'new_database'"
        " WHERE restarted_at_seq IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("branch_sync_state") as batch:
        batch.drop_column("restart_reason")
