"""fiscal: storno state of customer returns, record-first cash moves and Z reports

Revision ID: a1001
Revises: a0900
Create Date: 2026-11-28 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import branch_agent.models

revision: str = "a1001"
down_revision: str | Sequence[str] | None = "a0900"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sales") as batch:
        batch.add_column(sa.Column("fiscal_memory_number", sa.String(length=16), nullable=True))
    with op.batch_alter_table("customer_returns") as batch:
        # Rows from before: their events went up at commit (no storno was printed).
        batch.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="recorded")
        )
        batch.add_column(sa.Column("fiscal_number", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("print_job", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("fiscal_hint", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("fiscal_error", sa.String(length=200), nullable=True))
        batch.add_column(
            sa.Column("fiscal_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("fiscalized_at", branch_agent.models.UTCDateTime(), nullable=True)
        )
        batch.add_column(sa.Column("event_id", sa.Uuid(), nullable=True))
    with op.batch_alter_table("cash_moves") as batch:
        batch.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="done")
        )
        batch.add_column(sa.Column("printer_document_before", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("printer_cash_before", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("fiscal_error", sa.String(length=200), nullable=True))
    with op.batch_alter_table("shifts") as batch:
        batch.add_column(sa.Column("z_status", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("z_before_number", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shifts") as batch:
        batch.drop_column("z_before_number")
        batch.drop_column("z_status")
    with op.batch_alter_table("cash_moves") as batch:
        batch.drop_column("fiscal_error")
        batch.drop_column("printer_cash_before")
        batch.drop_column("printer_document_before")
        batch.drop_column("status")
    with op.batch_alter_table("customer_returns") as batch:
        for column in (
            "event_id",
            "fiscalized_at",
            "fiscal_attempts",
            "fiscal_error",
            "fiscal_hint",
            "print_job",
            "fiscal_number",
            "status",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("sales") as batch:
        batch.drop_column("fiscal_memory_number")
