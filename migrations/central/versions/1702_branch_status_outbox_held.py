"""branch_status.outbox_held: the events a branch holds because they are bigger than
its NATS server's max_payload (from the heartbeat)

Revision ID: 1702
Revises: 1701
Create Date: 2026-11-28 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1702"
down_revision: str | Sequence[str] | None = "1701"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("branch_status") as batch:
        batch.add_column(sa.Column("outbox_held", sa.JSON(), server_default="[]", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("branch_status") as batch:
        batch.drop_column("outbox_held")
