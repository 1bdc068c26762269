"""Stock document checks: ``stock_documents.auto_id`` (posted without an id of the
caller's: a repeat of one within minutes is refused), indexes on ``transfer_ref`` (a
second receipt of a transfer is refused) and ``posted_at``; ``md_branches``, the
chain's branch codes as central last listed them (a transfer to a code that is none of
them is refused).

Documents posted before this release count as posted with an id (``auto_id`` false):
a repeat of one of them is not recognised.

Revision ID: a1902
Revises: a1806
Create Date: 2026-11-30 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1902"
down_revision: str | Sequence[str] | None = "a1806"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stock_documents") as batch:
        batch.add_column(
            sa.Column("auto_id", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.create_index(op.f("ix_stock_documents_transfer_ref"), ["transfer_ref"])
        batch.create_index(op.f("ix_stock_documents_posted_at"), ["posted_at"])
    op.create_table(
        "md_branches",
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_md_branches")),
    )


def downgrade() -> None:
    op.drop_table("md_branches")
    with op.batch_alter_table("stock_documents") as batch:
        batch.drop_index(op.f("ix_stock_documents_posted_at"))
        batch.drop_index(op.f("ix_stock_documents_transfer_ref"))
        batch.drop_column("auto_id")
