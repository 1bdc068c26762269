"""merge the agent's parallel schema branches (store operations, master data)

Revision ID: a0900
Revises: a0101, a0201
Create Date: 2026-11-27 20:10:00
"""

from collections.abc import Sequence

revision: str = "a0900"
down_revision: str | Sequence[str] | None = ("a0101", "a0201")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
