"""Repricing revalued per branch: repricing_line_branches holds a line's stock at each
branch (taken with the draft) and what approval did there (revalued, unaffected: another
price stays in force, unpriced: no price before); repricing_lines gets the split of its
stock and the retail value of the unpriced part. Lines approved before keep their
figures: they revalued their whole stock, so it is all counted as revalued.

Revision ID: 1715
Revises: 1717
Create Date: 2026-11-29 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1715"
down_revision: str | Sequence[str] | None = "1717"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SPLIT = (
    "revalued_stock_milli",
    "unaffected_stock_milli",
    "unpriced_stock_milli",
    "unpriced_value",
)


def upgrade() -> None:
    with op.batch_alter_table("repricing_lines") as batch:
        for name in _SPLIT:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("repricing_lines") as batch:
        for name in _SPLIT:
            batch.alter_column(name, server_default=None)
    op.execute(
        "UPDATE repricing_lines SET revalued_stock_milli = stock_milli WHERE document_id IN"
        " (SELECT id FROM repricing_documents WHERE status <> 'draft')"
    )
    op.create_table(
        "repricing_line_branches",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("line_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("stock_milli", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("old_price", sa.BigInteger(), nullable=True),
        sa.Column("new_price", sa.BigInteger(), nullable=True),
        sa.Column("old_value", sa.BigInteger(), nullable=False),
        sa.Column("new_value", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["line_id"],
            ["repricing_lines.id"],
            name=op.f("fk_repricing_line_branches_line_id_repricing_lines"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repricing_line_branches")),
    )
    op.create_index(
        op.f("ix_repricing_line_branches_line_id"),
        "repricing_line_branches",
        ["line_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_repricing_line_branches_line_id"), table_name="repricing_line_branches")
    op.drop_table("repricing_line_branches")
    with op.batch_alter_table("repricing_lines") as batch:
        for name in _SPLIT:
            batch.drop_column(name)
