"""Receipts and customer returns keyed by (branch, till, id), as the agent keys them: two
tills of a branch may use the same sale_id / return_id. customer_returns.original_till:
the till of the original sale; returns already stored get the till of the branch's
receipt under their original_sale_id (unique per branch until now), else stay empty.

Revision ID: 1712
Revises: 1715
Create Date: 2026-11-29 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1712"
down_revision: str | Sequence[str] | None = "1715"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("receipts") as batch:
        batch.drop_constraint("uq_receipts_branch_sale_id", type_="unique")
        batch.create_unique_constraint(
            "uq_receipts_branch_till_sale_id", ["branch", "till", "sale_id"]
        )
    with op.batch_alter_table("customer_returns") as batch:
        batch.drop_constraint("uq_customer_returns_branch_return_id", type_="unique")
        batch.create_unique_constraint(
            "uq_customer_returns_branch_till_return_id", ["branch", "till", "return_id"]
        )
        batch.add_column(sa.Column("original_till", sa.String(length=32), nullable=True))
    op.execute(
        "UPDATE customer_returns SET original_till = ("
        " SELECT r.till FROM receipts r"
        " WHERE r.branch = customer_returns.branch"
        " AND r.sale_id = customer_returns.original_sale_id)"
    )


def downgrade() -> None:
    # Fails while two tills' receipts (or returns) share an id: those cannot be kept
    # under the per-branch key.
    with op.batch_alter_table("customer_returns") as batch:
        batch.drop_column("original_till")
        batch.drop_constraint("uq_customer_returns_branch_till_return_id", type_="unique")
        batch.create_unique_constraint(
            "uq_customer_returns_branch_return_id", ["branch", "return_id"]
        )
    with op.batch_alter_table("receipts") as batch:
        batch.drop_constraint("uq_receipts_branch_till_sale_id", type_="unique")
        batch.create_unique_constraint("uq_receipts_branch_sale_id", ["branch", "sale_id"])
