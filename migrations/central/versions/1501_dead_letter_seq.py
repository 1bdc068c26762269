"""dead_letters.seq: the branch sequence of a dead-lettered event, when it decoded, so
gap detection can tell a gap held by a dead letter from a lost message

Revision ID: 1501
Revises: 1401
Create Date: 2026-11-28 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1501"
down_revision: str | Sequence[str] | None = "1401"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letters") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
    op.create_index("ix_dead_letters_branch_seq", "dead_letters", ["branch", "seq"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_branch_seq", table_name="dead_letters")
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("seq")
