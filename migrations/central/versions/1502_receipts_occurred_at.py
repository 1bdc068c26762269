"""receipts (occurred_at, id): the receipt list's order, read from an index instead of
sorting every matching receipt (a chain's unfiltered list sorted millions)

Revision ID: 1502
Revises: 1501
Create Date: 2026-11-28 06:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "1502"
down_revision: str | Sequence[str] | None = "1501"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_receipts_occurred_at_id", "receipts", ["occurred_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_receipts_occurred_at_id", table_name="receipts")
