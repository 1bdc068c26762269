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


def downgrade() -> None:
    # Refused while a document has several parts (the old key cannot hold them).
    with op.batch_alter_table("stock_documents") as batch:
        batch.drop_constraint("uq_stock_documents_branch_document_id_part", type_="unique")
        batch.create_unique_constraint(
            "uq_stock_documents_branch_document_id", ["branch", "document_id"]
        )
        batch.drop_column("parts")
        batch.drop_column("part")
