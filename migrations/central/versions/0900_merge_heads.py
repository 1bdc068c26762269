"""merge the parallel branches of the schema into one head

Records, security, reports and master data grew side by side from 0001; this
revision joins them so operators can run ``alembic upgrade head``.

Revision ID: 0900
Revises: 0101, 0301, 0402, 0501
Create Date: 2026-11-27 20:10:00
"""

from collections.abc import Sequence

revision: str = "0900"
down_revision: str | Sequence[str] | None = ("0101", "0301", "0402", "0501")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
