"""sales, customer_returns: ``hint_printer``, the serial number of the fiscal printer
the idempotence hint was read from: the unfiscal check does not compare a document
with a printer swapped since (its numbers are another printer's).

Documents whose hint was taken before this release have none (NULL): compared as
before.

Revision ID: a1806
Revises: a1805
Create Date: 2026-11-29 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1806"
down_revision: str | Sequence[str] | None = "a1805"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("sales", "customer_returns"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("hint_printer", sa.String(32), nullable=True))


def downgrade() -> None:
    for table in ("sales", "customer_returns"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("hint_printer")
