"""stock_ledger: monthly range partitions by local_date on PostgreSQL

The ledger is rebuilt as ``PARTITION BY RANGE (local_date)`` with a DEFAULT partition
and one partition per month, from the month of its earliest row (or last month) to
three months ahead; the rows are copied over inside this migration, the id sequence
moves to the new table. PostgreSQL wants the partition key in every unique
constraint, so the primary key becomes (id, local_date); ids still come from one
sequence and stay unique. Nothing relies on another unique key of the ledger (the
exactly-once keys are in ``ingested_events``, which stays unpartitioned). Later
months: ``python -m central db partitions`` (central/partitions.py, same names).
SQLite keeps the plain table.

Revision ID: 1301
Revises: 1102
Create Date: 2026-11-27 21:30:00
"""

from collections.abc import Sequence
from datetime import UTC, date, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "1301"
down_revision: str | Sequence[str] | None = "1102"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "stock_ledger"
AHEAD_MONTHS = 3
INDEXES = {
    "ix_stock_ledger_branch_sku_id": "(branch, sku, id)",
    "ix_stock_ledger_event_id": "(event_id)",
}


def _add_months(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _swap_out(old: str) -> str:
    """Rename the current table, its primary key and indexes out of the way; returns
    the name of the id sequence (owned by the table's id column)."""
    op.execute(f"ALTER TABLE {TABLE} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT pk_{TABLE} TO pk_{old}")
    for index in INDEXES:
        op.execute(f"ALTER INDEX {index} RENAME TO {index.replace(TABLE, old)}")
    sequence = op.get_bind().scalar(sa.text(f"SELECT pg_get_serial_sequence('{old}', 'id')"))
    assert sequence, f"{old}.id has no owned sequence"
    return str(sequence)


def _finish(old: str, sequence: str, primary_key: str) -> None:
    """Copy the rows, then key, index, own the sequence and drop the old table."""
    op.execute(f"INSERT INTO {TABLE} SELECT * FROM {old}")
    op.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT pk_{TABLE} PRIMARY KEY {primary_key}")
    for index, columns in INDEXES.items():
        op.execute(f"CREATE INDEX {index} ON {TABLE} {columns}")
    # Dropping the old table would drop a sequence it still owned.
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {TABLE}.id")
    op.execute(f"DROP TABLE {old}")
    op.execute(f"ANALYZE {TABLE}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    old = f"{TABLE}_unpartitioned"
    earliest = op.get_bind().scalar(sa.text(f"SELECT min(local_date) FROM {TABLE}"))
    sequence = _swap_out(old)
    op.execute(
        f"CREATE TABLE {TABLE} (LIKE {old} INCLUDING DEFAULTS) PARTITION BY RANGE (local_date)"
    )
    op.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {TABLE} DEFAULT")
    this_month = datetime.now(UTC).date().replace(day=1)
    month = _add_months(this_month, -1)
    if earliest is not None:
        month = min(month, earliest.replace(day=1))
    while month <= _add_months(this_month, AHEAD_MONTHS):
        following = _add_months(month, 1)
        op.execute(
            f"CREATE TABLE {TABLE}_y{month.year:04d}m{month.month:02d} PARTITION OF {TABLE} "
            f"FOR VALUES FROM ('{month.isoformat()}') TO ('{following.isoformat()}')"
        )
        month = following
    _finish(old, sequence, "(id, local_date)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    old = f"{TABLE}_partitioned"
    sequence = _swap_out(old)
    op.execute(f"CREATE TABLE {TABLE} (LIKE {old} INCLUDING DEFAULTS)")
    _finish(old, sequence, "(id)")
