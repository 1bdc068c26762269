"""A shift closed without Z figures by the store manager's decision: shifts.z_printed,
from the closing event, says whether a Z report was printed at all (false: none, the
till's printer was gone before the close; true: the old printer printed it, its figures
never read). NULL for closes that carry the Z's figures, tills without a fiscal printer,
and closings from before.

Revision ID: 1906
Revises: 1902
Create Date: 2026-12-10 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1906"
down_revision: str | Sequence[str] | None = "1902"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.add_column(sa.Column("z_printed", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.drop_column("z_printed")
