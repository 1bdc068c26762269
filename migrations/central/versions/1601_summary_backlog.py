"""rpt_summary_backlog: per-product summary rows stored by ingestion and added to their
tables by one applier in bigger, later transactions (PostgreSQL), so ingest workers no
longer upsert ~13,000 shared summary rows per batch under each other's locks;
rpt_summary_rejected: the rows it could not add, set aside

Revision ID: 1601
Revises: 1503
Create Date: 2026-11-28 10:30:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

import central.models.base

revision: str = "1601"
down_revision: str | Sequence[str] | None = "1503"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _summary_row() -> list[sa.Column[Any]]:
    """The columns of a per-product summary row as ingestion stores it."""
    return [
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("doc_type", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("qty", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("lq", sa.BigInteger(), nullable=False),
        sa.Column("revenue", sa.BigInteger(), nullable=False),
        sa.Column("vat", sa.BigInteger(), nullable=False),
        sa.Column("discounts", sa.BigInteger(), nullable=False),
        sa.Column("sold_at", central.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("price", sa.BigInteger(), nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "rpt_summary_backlog",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        *_summary_row(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rpt_summary_backlog")),
    )
    # Backlog rows the applier could not add (a sum beyond 64 bits), set aside.
    op.create_table(
        "rpt_summary_rejected",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        *_summary_row(),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("rejected_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rpt_summary_rejected")),
    )


def downgrade() -> None:
    # Rows still waiting are in no summary table yet: dropped, the older release's
    # reports would lack their events.
    if op.get_bind().scalar(sa.text("SELECT 1 FROM rpt_summary_backlog LIMIT 1")):
        raise RuntimeError(
            "the summary backlog still holds rows the report tables lack: stop the ingest "
            "processes, run `python -m central reports apply-backlog`, then downgrade again"
        )
    op.drop_table("rpt_summary_rejected")
    op.drop_table("rpt_summary_backlog")
