"""shifts: the cash the cashier counted in the drawer at the close (``counted_cash``,
cents); shifts closed before it were not counted (NULL).

Revision ID: a1904
Revises: a1903
Create Date: 2026-12-06 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1904"
down_revision: str | Sequence[str] | None = "a1903"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.add_column(sa.Column("counted_cash", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.drop_column("counted_cash")
