"""branch_status.agent_server: the server the agent that sent the latest heartbeat runs
on; branch_sync_state.refused_server: the server of the database refused (a copy of
the running database on a second server has the running one's id)

Revision ID: 1707
Revises: 1706
Create Date: 2026-11-28 20:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1707"
down_revision: str | Sequence[str] | None = "1706"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("branch_status") as batch:
        batch.add_column(sa.Column("agent_server", sa.String(length=64), nullable=True))
    with op.batch_alter_table("branch_sync_state") as batch:
        batch.add_column(sa.Column("refused_server", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("branch_sync_state") as batch:
        batch.drop_column("refused_server")
    with op.batch_alter_table("branch_status") as batch:
        batch.drop_column("agent_server")
