"""Transfer discrepancies: stock_transfers knows its out and in documents (parts and
all) and whether head office must look at it; stock_transfer_discrepancies holds what
central saw (wrong receiver or sender, received or sent twice, unknown branch)

Transfers stored before this release get their documents from stock_documents; their
lines stay as they were (a second receipt was added to them then), and only their line
differences are flagged: the other discrepancies were not recorded at the time.

Revision ID: 1710
Revises: 1709
Create Date: 2026-11-29 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import central.models.base

revision: str = "1710"
down_revision: str | Sequence[str] | None = "1709"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _of_document(column: str, side: str) -> str:
    return (
        f"(SELECT d.{column} FROM stock_documents AS d "
        f"WHERE d.event_id = stock_transfers.{side}_event_id)"
    )


def _parts_stored(side: str) -> str:
    return (
        "(SELECT count(*) FROM stock_documents AS p JOIN stock_documents AS d "
        "ON p.branch = d.branch AND p.document_id = d.document_id "
        f"WHERE d.event_id = stock_transfers.{side}_event_id)"
    )


def upgrade() -> None:
    with op.batch_alter_table("stock_transfers") as batch:
        batch.add_column(sa.Column("out_document_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("out_parts", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(
            sa.Column("out_parts_received", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("in_branch", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("in_counterpart", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("in_document_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("in_parts", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(
            sa.Column("in_parts_received", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("has_discrepancies", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.create_table(
        "stock_transfer_discrepancies",
        sa.Column("transfer_ref", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("document_id", sa.String(length=64), nullable=False),
        sa.Column("counterpart", sa.String(length=32), nullable=True),
        sa.Column("expected", sa.String(length=64), nullable=True),
        sa.Column("quantity_milli", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("detected_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "transfer_ref",
            "kind",
            "branch",
            "document_id",
            name=op.f("pk_stock_transfer_discrepancies"),
        ),
    )
    # The documents of the transfers already stored.
    op.execute(
        "UPDATE stock_transfers SET "
        f"out_document_id = {_of_document('document_id', 'out')}, "
        f"out_parts = coalesce({_of_document('parts', 'out')}, 0), "
        f"out_parts_received = {_parts_stored('out')}, "
        f"in_branch = {_of_document('branch', 'in')}, "
        f"in_counterpart = {_of_document('counterpart_branch', 'in')}, "
        f"in_document_id = {_of_document('document_id', 'in')}, "
        f"in_parts = coalesce({_of_document('parts', 'in')}, 0), "
        f"in_parts_received = {_parts_stored('in')}"
    )
    op.execute(
        "UPDATE stock_transfers SET has_discrepancies = true "
        "WHERE out_parts > 0 AND out_parts_received = out_parts "
        "AND in_parts > 0 AND in_parts_received = in_parts "
        "AND EXISTS (SELECT 1 FROM stock_transfer_lines AS l "
        "WHERE l.transfer_ref = stock_transfers.transfer_ref "
        "AND l.sent_milli <> l.received_milli)"
    )


def downgrade() -> None:
    op.drop_table("stock_transfer_discrepancies")
    with op.batch_alter_table("stock_transfers") as batch:
        for column in (
            "has_discrepancies",
            "in_parts_received",
            "in_parts",
            "in_document_id",
            "in_counterpart",
            "in_branch",
            "out_parts_received",
            "out_parts",
            "out_document_id",
        ):
            batch.drop_column(column)
