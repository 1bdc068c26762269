"""sales, customer_returns: ``unfiscal_check``, whether a document completed without
printer had been printed after all (compared with the printer when it answers again)

Documents completed unfiscal before this release are not checked (NULL): the printer
has printed other receipts since, so its state no longer tells.

Revision ID: a1805
Revises: a1803
Create Date: 2026-11-29 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1805"
down_revision: str | Sequence[str] | None = "a1803"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("sales", "customer_returns"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("unfiscal_check", sa.String(16), nullable=True))


def downgrade() -> None:
    for table in ("sales", "customer_returns"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("unfiscal_check")
