"""late_fiscal_numbers and fiscal_interventions: fiscal numbers a branch found late
for documents completed without the printer, managers' interventions on the fiscal
printers; receipts.fiscalized_at and customer_returns.fiscalized_at for the former.

Revision ID: 1801
Revises: 1716
Create Date: 2026-11-29 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import central.models.base

revision: str = "1801"
down_revision: str | Sequence[str] | None = "1716"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    utc = central.models.base.UTCDateTime(timezone=True)
    op.create_table(
        "late_fiscal_numbers",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("document", sa.String(length=8), nullable=False),
        sa.Column("till", sa.String(length=32), nullable=False),
        sa.Column("document_id", sa.String(length=64), nullable=False),
        sa.Column("document_seq", sa.BigInteger(), nullable=True),
        sa.Column("fiscal_number", sa.String(length=64), nullable=False),
        sa.Column("fiscalized_at", utc, nullable=False),
        sa.Column("fiscal_memory_number", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("received_at", utc, nullable=False),
        sa.Column("applied_at", utc, nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_late_fiscal_numbers")),
    )
    op.create_index(
        "ix_late_fiscal_numbers_branch_till_document_id",
        "late_fiscal_numbers",
        ["branch", "till", "document_id"],
        unique=False,
    )
    op.create_table(
        "fiscal_interventions",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("till", sa.String(length=32), nullable=False),
        sa.Column("shift_id", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("receipt_number", sa.BigInteger(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("paid_before", sa.BigInteger(), nullable=False),
        sa.Column("cash_added", sa.BigInteger(), nullable=False),
        sa.Column("document", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("occurred_at", utc, nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("received_at", utc, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_fiscal_interventions")),
    )
    op.create_index(
        "ix_fiscal_interventions_branch_shift_id",
        "fiscal_interventions",
        ["branch", "shift_id"],
        unique=False,
    )
    op.create_index(
        "ix_fiscal_interventions_local_date_branch",
        "fiscal_interventions",
        ["local_date", "branch"],
        unique=False,
    )
    with op.batch_alter_table("receipts") as batch:
        batch.add_column(sa.Column("fiscalized_at", utc, nullable=True))
    with op.batch_alter_table("customer_returns") as batch:
        batch.add_column(sa.Column("fiscalized_at", utc, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("customer_returns") as batch:
        batch.drop_column("fiscalized_at")
    with op.batch_alter_table("receipts") as batch:
        batch.drop_column("fiscalized_at")
    op.drop_index("ix_fiscal_interventions_local_date_branch", table_name="fiscal_interventions")
    op.drop_index("ix_fiscal_interventions_branch_shift_id", table_name="fiscal_interventions")
    op.drop_table("fiscal_interventions")
    op.drop_index(
        "ix_late_fiscal_numbers_branch_till_document_id", table_name="late_fiscal_numbers"
    )
    op.drop_table("late_fiscal_numbers")
