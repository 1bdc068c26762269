"""shifts: the serial number of the fiscal printer the Z report's intent was read from
(``z_printer``), so a close repeated after the till's printer was swapped does not take
the new printer's last Z report for this shift's. NULL before it, and for a printer that
does not tell its serial.

Revision ID: a1908
Revises: a1907
Create Date: 2026-12-09 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1908"
down_revision: str | Sequence[str] | None = "a1907"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.add_column(sa.Column("z_printer", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.drop_column("z_printer")
