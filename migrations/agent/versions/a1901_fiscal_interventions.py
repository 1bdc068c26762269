"""fiscal_interventions: receipts a manager had finished on a till's fiscal printer
(left open after a refused payment: cancelled, or the rest paid in cash and closed)

Revision ID: a1901
Revises: a1802
Create Date: 2026-11-29 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import branch_agent.models

revision: str = "a1901"
down_revision: str | Sequence[str] | None = "a1802"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fiscal_interventions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("till", sa.String(length=32), nullable=False),
        sa.Column("at", branch_agent.models.UTCDateTime(), nullable=False),
        sa.Column("receipt_number", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("paid_before", sa.BigInteger(), nullable=False),
        sa.Column("cash_added", sa.BigInteger(), nullable=False),
        sa.Column("document", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fiscal_interventions")),
    )


def downgrade() -> None:
    op.drop_table("fiscal_interventions")
