"""customer_returns.original_till: the till of the sale a return is against (sale ids
are the till's: two tills may use the same one, and what was returned of one is not
returned of the other)

Returns recorded before it was kept get the till of their sale, the sale under their
``original_sale_id`` that fits them best: the products of the returned lines (by line
number), then the receipt number the return recorded, then the returning till's own,
then the earliest; no sale of that id (not possible without editing the database):
NULL, counted against no sale.

sales.manual_discounts: the manual discount the till sent on each line (a sale id
posted again is compared with what the till sent); NULL on sales recorded before.

Revision ID: a1803
Revises: a1804
Create Date: 2026-12-03 10:00:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1803"
down_revision: str | Sequence[str] | None = "a1804"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("customer_returns") as batch:
        batch.add_column(sa.Column("original_till", sa.String(length=32), nullable=True))
    with op.batch_alter_table("sales") as batch:
        batch.add_column(sa.Column("manual_discounts", sa.JSON(), nullable=True))
    bind = op.get_bind()
    sales: dict[str, list[tuple[int, str, int, dict[int, str]]]] = {}
    for sale_id, sale_row, till, number, receipt in bind.execute(
        # Only sales some return is against: a store's years of sales would not fit in
        # the agent's memory at start-up.
        sa.text(
            "SELECT sale_id, id, till, receipt_number, receipt FROM sales WHERE sale_id IN "
            "(SELECT original_sale_id FROM customer_returns) ORDER BY id"
        )
    ):
        lines = json.loads(receipt)["lines"] if isinstance(receipt, str) else receipt["lines"]
        skus = {int(line["line_no"]): str(line["sku"]) for line in lines}
        sales.setdefault(sale_id, []).append((sale_row, till, number, skus))
    for row_id, till, sale_id, body in bind.execute(
        sa.text("SELECT id, till, original_sale_id, body FROM customer_returns")
    ):
        candidates = sales.get(sale_id)
        if not candidates:
            continue
        returned = json.loads(body) if isinstance(body, str) else body
        wanted = {int(line["line_no"]): str(line["sku"]) for line in returned["lines"]}
        number = returned.get("original_receipt_number")
        best = max(candidates, key=lambda sale: _fit(sale, wanted, number, till))
        bind.execute(
            sa.text("UPDATE customer_returns SET original_till = :till WHERE id = :id"),
            {"till": best[1], "id": row_id},
        )


def _fit(
    sale: tuple[int, str, int, dict[int, str]], wanted: dict[int, str], number: object, till: str
) -> tuple[bool, bool, bool, int]:
    """How well a sale fits a return: its products, its receipt number, its till, earliest."""
    sale_row, sale_till, sale_number, skus = sale
    lines_fit = all(skus.get(n) == sku for n, sku in wanted.items())
    return (lines_fit, sale_number == number, sale_till == till, -sale_row)


def downgrade() -> None:
    with op.batch_alter_table("sales") as batch:
        batch.drop_column("manual_discounts")
    with op.batch_alter_table("customer_returns") as batch:
        batch.drop_column("original_till")
