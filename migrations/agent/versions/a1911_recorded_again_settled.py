"""restored_records: a record recorded again after a restore, settled by the store
manager (the second charge refunded, or found to be none): when, by whom, the note.
NULL while open, and on every row before it.

Revision ID: a1911
Revises: a1910
Create Date: 2026-11-29 20:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1911"
down_revision: str | Sequence[str] | None = "a1910"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("restored_records") as batch:
        batch.add_column(sa.Column("settled_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("settled_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("settled_note", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("restored_records") as batch:
        batch.drop_column("settled_note")
        batch.drop_column("settled_by")
        batch.drop_column("settled_at")
