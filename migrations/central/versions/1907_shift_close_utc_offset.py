"""The branch's UTC offset at a shift's close: shifts.close_utc_offset_min, from the
closing event, so the close is shown on the branch's clock as it was then
(``utc_offset_min`` is the opening's: a shift across a daylight-saving change closes at
another offset). NULL for closings from before (shown at the opening's offset).

Revision ID: 1907
Revises: 1906
Create Date: 2026-11-30 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1907"
down_revision: str | Sequence[str] | None = "1906"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.add_column(sa.Column("close_utc_offset_min", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.drop_column("close_utc_offset_min")
