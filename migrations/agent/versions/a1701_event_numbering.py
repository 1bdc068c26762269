"""counters: this agent database's id (``agent_instance``), and ``event_seq_settled``
once central has said where its event numbers start

A database that has numbered events already (every agent before this release) is
settled as it is; a new one (a store's server replaced) asks central first, so its
events never reuse numbers the branch's earlier database sent.

Revision ID: a1701
Revises: a1301
Create Date: 2026-11-28 16:40:00
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1701"
down_revision: str | Sequence[str] | None = "a1301"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ADD = sa.text("INSERT OR IGNORE INTO counters (name, value) VALUES (:name, :value)")


def upgrade() -> None:
    bind = op.get_bind()
    bind.execute(_ADD, {"name": "agent_instance", "value": secrets.randbits(62)})
    numbered = bind.scalar(sa.text("SELECT count(*) FROM outbox")) or bind.scalar(
        sa.text("SELECT value FROM counters WHERE name = 'event_seq'")
    )
    if numbered:
        bind.execute(_ADD, {"name": "event_seq_settled", "value": 1})


def downgrade() -> None:
    op.execute("DELETE FROM counters WHERE name IN ('agent_instance', 'event_seq_settled')")
