"""price_entries.withdrawn_at: when an override was withdrawn (before that moment it
was in force: a past moment is resolved with the entries of then); branch_scope_history:
each branch's format and price zone from when (a past moment of a branch is resolved
with the scopes it had then). Withdrawn entries get the moment of the audit log's first
withdrawal of their key after they were created (none: left empty, they count at no
moment, as before); each branch gets its current scopes from its registration on.

Revision ID: 1711
Revises: 1710
Create Date: 2026-11-29 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import central.models.base

revision: str = "1711"
down_revision: str | Sequence[str] | None = "1710"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("price_entries") as batch:
        batch.add_column(
            sa.Column("withdrawn_at", central.models.base.UTCDateTime(timezone=True), nullable=True)
        )
    op.execute(
        "UPDATE price_entries SET withdrawn_at = ("
        " SELECT min(a.at) FROM audit_log a"
        " WHERE a.action = 'price.withdraw'"
        " AND a.target = 'price:' || price_entries.sku || '@' || price_entries.scope"
        " || ':' || price_entries.scope_id"
        " AND a.at >= price_entries.created_at)"
        " WHERE withdrawn"
    )
    op.create_table(
        "branch_scope_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("valid_from", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("format_code", sa.String(length=32), nullable=True),
        sa.Column("price_zone", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_branch_scope_history")),
    )
    op.create_index(
        "ix_branch_scope_history_branch_from",
        "branch_scope_history",
        ["branch", "valid_from"],
        unique=False,
    )
    op.execute(
        "INSERT INTO branch_scope_history (branch, valid_from, format_code, price_zone)"
        " SELECT code, created_at, format_code, price_zone FROM branches"
    )


def downgrade() -> None:
    op.drop_index("ix_branch_scope_history_branch_from", table_name="branch_scope_history")
    op.drop_table("branch_scope_history")
    with op.batch_alter_table("price_entries") as batch:
        batch.drop_column("withdrawn_at")
