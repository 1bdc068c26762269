"""receipt_lines: local_date on the line; monthly range partitions on PostgreSQL

Receipt lines are the largest table (about eight per receipt). Each line now carries
its receipt's local day (filled from the receipts here), so on PostgreSQL the table
is rebuilt as ``PARTITION BY RANGE (local_date)`` like the stock ledger (migration
1301): DEFAULT plus one partition per month from the earliest receipt's month to
three months ahead, rows copied inside this migration, the id sequence moved, the
primary key (id, local_date). No unique key of the lines is relied on (exactly-once
is ``ingested_events``; receipts keep their unique keys, unpartitioned); the foreign
key to receipts stays. SQLite gets the column only.

Revision ID: 1302
Revises: 1301
Create Date: 2026-11-27 22:00:00
"""

from collections.abc import Sequence
from datetime import UTC, date, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "1302"
down_revision: str | Sequence[str] | None = "1301"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "receipt_lines"
AHEAD_MONTHS = 3
FK = "fk_receipt_lines_receipt_id_receipts"
INDEXES = {
    "ix_receipt_lines_receipt_id": "(receipt_id)",
    "ix_receipt_lines_sku": "(sku)",
}


def _add_months(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _swap_out(old: str) -> str:
    """Rename the table, its keys and indexes out of the way; the id sequence's name."""
    op.execute(f"ALTER TABLE {TABLE} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT pk_{TABLE} TO pk_{old}")
    op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT {FK} TO {FK.replace(TABLE, old)}")
    for index in INDEXES:
        op.execute(f"ALTER INDEX {index} RENAME TO {index.replace(TABLE, old)}")
    sequence = op.get_bind().scalar(sa.text(f"SELECT pg_get_serial_sequence('{old}', 'id')"))
    assert sequence, f"{old}.id has no owned sequence"
    return str(sequence)


def _finish(old: str, sequence: str, primary_key: str) -> None:
    """Key, reference, index, own the sequence, drop the old table."""
    op.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT pk_{TABLE} PRIMARY KEY {primary_key}")
    op.execute(
        f"ALTER TABLE {TABLE} ADD CONSTRAINT {FK} FOREIGN KEY (receipt_id) "
        "REFERENCES receipts (id) ON DELETE CASCADE"
    )
    for index, columns in INDEXES.items():
        op.execute(f"CREATE INDEX {index} ON {TABLE} {columns}")
    # Dropping the old table would drop a sequence it still owned.
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {TABLE}.id")
    op.execute(f"DROP TABLE {old}")
    op.execute(f"ANALYZE {TABLE}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        with op.batch_alter_table(TABLE) as batch:
            batch.add_column(sa.Column("local_date", sa.Date(), nullable=True))
        op.execute(
            f"UPDATE {TABLE} SET local_date = "
            f"(SELECT r.local_date FROM receipts r WHERE r.id = {TABLE}.receipt_id)"
        )
        with op.batch_alter_table(TABLE) as batch:
            batch.alter_column("local_date", existing_type=sa.Date(), nullable=False)
        return
    old = f"{TABLE}_unpartitioned"
    earliest = op.get_bind().scalar(sa.text("SELECT min(local_date) FROM receipts"))
    sequence = _swap_out(old)
    op.execute(
        f"CREATE TABLE {TABLE} (LIKE {old} INCLUDING DEFAULTS, local_date DATE NOT NULL) "
        "PARTITION BY RANGE (local_date)"
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
    op.execute(
        f"INSERT INTO {TABLE} SELECT l.*, r.local_date FROM {old} AS l "
        "JOIN receipts AS r ON r.id = l.receipt_id"
    )
    _finish(old, sequence, "(id, local_date)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        with op.batch_alter_table(TABLE) as batch:
            batch.drop_column("local_date")
        return
    old = f"{TABLE}_partitioned"
    sequence = _swap_out(old)
    op.execute(f"CREATE TABLE {TABLE} (LIKE {old} INCLUDING DEFAULTS)")
    op.execute(f"INSERT INTO {TABLE} SELECT * FROM {old}")
    op.execute(f"ALTER TABLE {TABLE} DROP COLUMN local_date")
    _finish(old, sequence, "(id)")
