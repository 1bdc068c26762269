"""stock_documents.part, .parts: a document of more lines than one NATS message carries
(a whole store's stocktake) arrives as several events, one row per part; unique per
(branch, document_id, part)

Revision ID: 1701
Revises: 1601
Create Date: 2026-11-28 13:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1701"
down_revision: str | Sequence[str] | None = "1601"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stock_documents") as batch:
        batch.add_column(sa.Column("part", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("parts", sa.Integer(), server_default="1", nullable=False))
        batch.drop_constraint("uq_stock_documents_branch_document_id", type_="unique")
        batch.create_unique_constraint(
            "uq_stock_documents_branch_document_id_part", ["branch", "document_id", "part"]
        )


# The other rows of the same document.
_SAME = (
    "FROM stock_documents o WHERE o.branch = stock_documents.branch "
    "AND o.document_id = stock_documents.document_id"
)


def downgrade() -> None:
    # The old key holds one row per document: a document received in parts becomes the
    # row of its lowest part received, with every part's lines (their numbers are the
    # document's own, so they stay unique) and the parts' values summed.
    op.execute(
        "UPDATE stock_document_lines SET event_id = ("
        "SELECT k.event_id FROM stock_documents d JOIN stock_documents k "
        "ON k.branch = d.branch AND k.document_id = d.document_id "
        "WHERE d.event_id = stock_document_lines.event_id ORDER BY k.part LIMIT 1) "
        "WHERE event_id IN (SELECT event_id FROM stock_documents WHERE parts > 1)"
    )
    op.execute(
        f"UPDATE stock_documents SET value = (SELECT sum(o.value) {_SAME}), "
        f"negative_stock = EXISTS (SELECT 1 {_SAME} AND o.negative_stock) "
        f"WHERE parts > 1 AND part = (SELECT min(o.part) {_SAME})"
    )
    op.execute(
        f"DELETE FROM stock_documents WHERE parts > 1 AND part > (SELECT min(o.part) {_SAME})"
    )
    with op.batch_alter_table("stock_documents") as batch:
        batch.drop_constraint("uq_stock_documents_branch_document_id_part", type_="unique")
        batch.create_unique_constraint(
            "uq_stock_documents_branch_document_id", ["branch", "document_id"]
        )
        batch.drop_column("parts")
        batch.drop_column("part")
