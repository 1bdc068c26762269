"""Customer returns without the original receipt: customer_returns.original_sale_id
nullable (None: no receipt), without_receipt and approved_by (the manager who approved
it at the store); the report summaries count them: rpt_sales_cashier_daily.
no_receipt_returns (loss prevention) and rpt_shifts.no_receipt_returns_total (shift
reconciliation: never a storno on the fiscal printer). Summary rows of earlier records
are right at 0: no such return was stored before.

Downgrading drops the returns without receipt (their lines and ledger rows stay:
rebuild the reports after it) and these columns.

Revision ID: 1901
Revises: 1807
Create Date: 2026-11-29 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1901"
down_revision: str | Sequence[str] | None = "1807"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("customer_returns") as batch:
        batch.alter_column("original_sale_id", existing_type=sa.String(length=64), nullable=True)
        batch.add_column(
            sa.Column("without_receipt", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(
            sa.Column("approved_by", sa.String(length=64), server_default="", nullable=False)
        )
    with op.batch_alter_table("rpt_sales_cashier_daily") as batch:
        batch.add_column(
            sa.Column("no_receipt_returns", sa.Integer(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("rpt_shifts") as batch:
        batch.add_column(
            sa.Column(
                "no_receipt_returns_total", sa.BigInteger(), server_default="0", nullable=False
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("rpt_shifts") as batch:
        batch.drop_column("no_receipt_returns_total")
    with op.batch_alter_table("rpt_sales_cashier_daily") as batch:
        batch.drop_column("no_receipt_returns")
    op.execute(
        "DELETE FROM customer_return_lines WHERE event_id IN"
        " (SELECT event_id FROM customer_returns WHERE without_receipt)"
    )
    op.execute("DELETE FROM customer_returns WHERE without_receipt")
    with op.batch_alter_table("customer_returns") as batch:
        batch.drop_column("approved_by")
        batch.drop_column("without_receipt")
        batch.alter_column("original_sale_id", existing_type=sa.String(length=64), nullable=False)
