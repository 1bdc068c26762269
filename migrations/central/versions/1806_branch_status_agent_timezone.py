"""branch_status.agent_timezone: the time zone a branch's agent reports in its
heartbeat, compared with central's record of the branch in sync health; vat_groups:
the chain's rate of each fiscal-printer VAT group, checked against products' rates.

Revision ID: 1806
Revises: 1801
Create Date: 2026-11-29 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import central.models.base

revision: str = "1806"
down_revision: str | Sequence[str] | None = "1801"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("branch_status") as batch:
        batch.add_column(sa.Column("agent_timezone", sa.String(length=64), nullable=True))
    op.create_table(
        "vat_groups",
        sa.Column("code", sa.String(length=1), nullable=False),
        sa.Column("rate_bp", sa.Integer(), nullable=False),
        sa.Column("updated_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_vat_groups")),
    )


def downgrade() -> None:
    op.drop_table("vat_groups")
    # Only the latest heartbeat's copy: the next heartbeat brings it back.
    with op.batch_alter_table("branch_status") as batch:
        batch.drop_column("agent_timezone")
