"""cash_moves, shifts (float), customer_returns (pay-out): the serial number of the fiscal
printer a cash intent's document number and cash sum were read from
(``printer_serial``, ``float_printer``, ``payout_printer``), so a swapped printer whose
numbers happen to match never settles an intent sent to the old one. NULL before it,
and for a printer that does not tell its serial.

Revision ID: a1910
Revises: a1909
Create Date: 2026-12-10 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1910"
down_revision: str | Sequence[str] | None = "a1909"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("cash_moves", "printer_serial"),
    ("shifts", "float_printer"),
    ("customer_returns", "payout_printer"),
)


def upgrade() -> None:
    for table, column in _COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(column, sa.String(32), nullable=True))


def downgrade() -> None:
    for table, column in _COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
