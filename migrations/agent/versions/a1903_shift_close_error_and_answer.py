"""shifts: why the last close failed (``z_error``) and the close's answer
(``close_answer``, given again to a close repeated after it succeeded and by
``GET /api/v1/shifts/{id}``)

Shifts closed before this release have no stored answer: it is made again from their
records (the agent's totals and the Z report kept in ``closing``).

Revision ID: a1903
Revises: a1902
Create Date: 2026-12-05 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1903"
down_revision: str | Sequence[str] | None = "a1902"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.add_column(sa.Column("z_error", sa.String(500), nullable=True))
        batch.add_column(sa.Column("close_answer", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.drop_column("close_answer")
        batch.drop_column("z_error")
