"""nats_issuer_identity: the public keys of the chain's one NATS issuer, so a central
host with another issuer (or none) refuses credential operations.

Revision ID: 1807
Revises: 1806
Create Date: 2026-11-29 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import central.models.base

revision: str = "1807"
down_revision: str | Sequence[str] | None = "1806"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "nats_issuer_identity",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("operator_public_key", sa.String(length=64), nullable=False),
        sa.Column("account_public_key", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", central.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nats_issuer_identity")),
    )


def downgrade() -> None:
    op.drop_table("nats_issuer_identity")
