"""shifts: the opening float's deposit on the fiscal printer (``float_status``, and the
printer's document number and cash sum read just before it, ``float_document_before``,
``float_cash_before``)

Shifts opened before this release never had their float deposited: they keep NULL
(nothing to deposit now; their Z reports were or will be what they were).

Revision ID: a1804
Revises: a1901
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1804"
down_revision: str | Sequence[str] | None = "a1901"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.add_column(sa.Column("float_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("float_document_before", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("float_cash_before", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.drop_column("float_cash_before")
        batch.drop_column("float_document_before")
        batch.drop_column("float_status")
