"""stock_documents.late: a stock document filed into a local day head office had
already closed (like a late sale; the document is stored anyway, only flagged).
Documents stored before stay unflagged.

Revision ID: 1717
Revises: 1711
Create Date: 2026-11-29 07:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1717"
down_revision: str | Sequence[str] | None = "1711"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stock_documents") as batch:
        batch.add_column(sa.Column("late", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("stock_documents") as batch:
        batch.drop_column("late")
