"""branch_status.agent_instance, agent_stopped: which agent database sent the latest
heartbeat, and whether it stopped; branch_sync_state.refused_instance, refused_at:
another database of the branch asked to be numbered while that one ran

Revision ID: 1706
Revises: 1705
Create Date: 2026-11-28 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import central.models.base

revision: str = "1706"
down_revision: str | Sequence[str] | None = "1705"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("branch_status") as batch:
        batch.add_column(sa.Column("agent_instance", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("agent_stopped", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("branch_sync_state") as batch:
        batch.add_column(sa.Column("refused_instance", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("refused_at", central.models.base.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("branch_sync_state") as batch:
        batch.drop_column("refused_at")
        batch.drop_column("refused_instance")
    with op.batch_alter_table("branch_status") as batch:
        batch.drop_column("agent_stopped")
        batch.drop_column("agent_instance")
