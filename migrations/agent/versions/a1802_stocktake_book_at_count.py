"""stocktake_counts: the book quantity of each counted product when its sheet was
recorded (``book_milli``) and that moment (``recorded_at``)

Posting a stocktake compares the counts with the book at counting, no longer with the
stock at posting (sales, receipts and write-offs between counting and posting are
kept). Counts of draft stocktakes recorded before this release have no such book:
they get the book now, at the upgrade, the nearest moment after their count that the
database knows (movements between their count and the upgrade cannot be told apart
from the count; those after it are kept); ``recorded_at`` stays NULL (not known).
Counts of posted stocktakes keep NULL: their document's lines say what was booked.

Revision ID: a1802
Revises: a1801
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import branch_agent.models

revision: str = "a1802"
down_revision: str | Sequence[str] | None = "a1801"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stocktake_counts") as batch:
        batch.add_column(sa.Column("book_milli", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("recorded_at", branch_agent.models.UTCDateTime(), nullable=True))
    op.execute(
        "UPDATE stocktake_counts SET book_milli = COALESCE("
        "(SELECT b.quantity_milli FROM stock_balances b WHERE b.sku = stocktake_counts.sku), 0"
        ") WHERE document_id IN "
        "(SELECT document_id FROM stock_documents WHERE status = 'draft')"
    )


def downgrade() -> None:
    with op.batch_alter_table("stocktake_counts") as batch:
        batch.drop_column("recorded_at")
        batch.drop_column("book_milli")
