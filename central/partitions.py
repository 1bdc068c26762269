"""Monthly range partitions of the append-only tables that grow without bound (PostgreSQL).

The stock ledger and the receipt lines are partitioned by month of the branch's local
day (``local_date``):
old months can be detached and archived whole, and a date-bounded query reads only
the months in range. Each partitioned table has a ``DEFAULT`` partition, so an insert
never fails for want of a month (a branch with a wrong clock, maintenance not run);
:func:`maintain_partitions` creates the months ahead, reports what sits in
``DEFAULT`` and, when asked, moves it into its month's partition.

SQLite stores these tables unpartitioned; everything here does nothing there.
Migrations 1301 (ledger) and 1302 (lines) build them; their SQL mirrors the names
used here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from central.db import sqlstate_of

__all__ = [
    "DEFAULT_AHEAD_MONTHS",
    "PARTITIONED_TABLES",
    "PartitionStatus",
    "add_months",
    "default_partition_name",
    "include_name",
    "is_partition_name",
    "maintain_partitions",
    "month_start",
    "partition_name",
]

log = logging.getLogger(__name__)

# Partitioned table -> its partition key (a DATE column: the branch's local day).
PARTITIONED_TABLES: dict[str, str] = {"stock_ledger": "local_date", "receipt_lines": "local_date"}
DEFAULT_AHEAD_MONTHS = 3
# Serialises maintainers (several central processes may start at once).
_ADVISORY_LOCK_KEY = 0x6272_7061_7274  # "brpart"
_LOCK_NOT_AVAILABLE = "55P03"
_CHECK_VIOLATION = "23514"
_PARTITION_RE = re.compile(r"^(?P<table>[a-z_]+)_(?:y\d{4}m\d{2}|default)$")


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def partition_name(table: str, month: date) -> str:
    return f"{table}_y{month.year:04d}m{month.month:02d}"


def default_partition_name(table: str) -> str:
    return f"{table}_default"


def is_partition_name(name: str) -> bool:
    """A child partition of one of :data:`PARTITIONED_TABLES` (by naming convention)."""
    match = _PARTITION_RE.match(name)
    return match is not None and match.group("table") in PARTITIONED_TABLES


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic ``include_name`` filter: the child partitions are not in the models.

    Shared by the Alembic environment (autogenerate) and the schema comparison test;
    their indexes are attached to the parent's, so only tables need leaving out.
    """
    if type_ == "table" and name is not None:
        return not is_partition_name(name)
    return True


@dataclass
class PartitionStatus:
    """What one maintenance pass found and did for one partitioned table."""

    table: str
    partitions: int = 0
    created: list[str] = field(default_factory=list)
    # Rows moved out of DEFAULT into their new month partition (``move_default``).
    moved_rows: int = 0
    # Rows still in DEFAULT, per month ("2031-04": 12).
    default_rows: dict[str, int] = field(default_factory=dict)
    # Months not created because DEFAULT holds rows of them (run with move_default).
    blocked: list[str] = field(default_factory=list)
    # Months not created this time: the table's lock was not granted within the
    # lock timeout (long transactions); the next pass tries again.
    lock_timeouts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "table": self.table,
            "partitions": self.partitions,
            "created": self.created,
            "moved_rows": self.moved_rows,
            "default_rows": self.default_rows,
            "default_rows_total": sum(self.default_rows.values()),
            "blocked_months": self.blocked,
            "lock_timeouts": self.lock_timeouts,
        }


async def _is_partitioned(connection: AsyncConnection, table: str) -> bool:
    found = await connection.scalar(
        text(
            "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = :t AND c.relnamespace = to_regnamespace(current_schema())"
        ),
        {"t": table},
    )
    return found is not None


async def _child_names(connection: AsyncConnection, table: str) -> set[str]:
    rows = await connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": table},
    )
    return {r[0] for r in rows}


async def _default_months(connection: AsyncConnection, table: str, key: str) -> dict[date, int]:
    default = default_partition_name(table)
    rows = await connection.execute(
        text(
            f"SELECT date_trunc('month', {key})::date AS m, count(*) FROM ONLY {default} "
            "GROUP BY 1 ORDER BY 1"
        )
    )
    return {r[0]: int(r[1]) for r in rows}


async def _lock(connection: AsyncConnection, lock_timeout_s: float) -> None:
    # A DDL waiting behind a long ingest batch must not queue every other writer for
    # long: give up after a while and report (the next pass tries again).
    await connection.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'"))
    await connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})


async def _create_month(connection: AsyncConnection, table: str, month: date) -> None:
    name = partition_name(table, month)
    await connection.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
            f"FOR VALUES FROM ('{month.isoformat()}') TO ('{add_months(month, 1).isoformat()}')"
        )
    )


async def _move_month(connection: AsyncConnection, table: str, key: str, month: date) -> int:
    """Create ``month``'s partition from the rows DEFAULT holds for it, atomically.

    Writers are held off (SHARE ROW EXCLUSIVE on the table and its partitions; readers
    go on) from before the copy until the partition is attached, so no row of that
    month can slip into DEFAULT in between; the caller's transaction commits it all
    or nothing.
    """
    name = partition_name(table, month)
    default = default_partition_name(table)
    bounds = {"a": month, "b": add_months(month, 1)}
    await connection.execute(text(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))
    await connection.execute(text(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS)"))
    copied = await connection.execute(
        text(f"INSERT INTO {name} SELECT * FROM ONLY {default} WHERE {key} >= :a AND {key} < :b"),
        bounds,
    )
    deleted = await connection.execute(
        text(f"DELETE FROM ONLY {default} WHERE {key} >= :a AND {key} < :b"), bounds
    )
    assert copied.rowcount == deleted.rowcount, (copied.rowcount, deleted.rowcount)
    await connection.execute(
        text(
            f"ALTER TABLE {table} ATTACH PARTITION {name} "
            f"FOR VALUES FROM ('{month.isoformat()}') TO ('{add_months(month, 1).isoformat()}')"
        )
    )
    return int(copied.rowcount)


async def maintain_partitions(
    engine: AsyncEngine,
    *,
    ahead: int = DEFAULT_AHEAD_MONTHS,
    move_default: bool = False,
    today: date | None = None,
    since: date | None = None,
    tables: Sequence[str] | None = None,
    lock_timeout_s: float = 15.0,
) -> list[PartitionStatus]:
    """Make sure every partitioned table has its months from last month (or the month
    of ``since``, e.g. before loading history) to ``ahead`` months after this one;
    report the rows sitting in DEFAULT.

    Idempotent; one short transaction per created month. A month whose rows already
    sit in DEFAULT cannot simply be created (PostgreSQL refuses while DEFAULT holds
    rows of it): with ``move_default`` those rows are moved into the new partition,
    otherwise the month is reported as blocked and its rows stay readable in DEFAULT.
    Nothing to do on SQLite or on a table a migration has not partitioned.
    """
    if engine.dialect.name != "postgresql":
        return []
    if ahead < 0:
        raise ValueError("ahead must be >= 0")
    this_month = month_start(today or datetime.now(UTC).date())
    # Last month too: branches behind UTC are still in it on the 1st.
    first = add_months(this_month, -1)
    if since is not None:
        first = min(first, month_start(since))
    wanted = [first]
    while wanted[-1] < add_months(this_month, ahead):
        wanted.append(add_months(wanted[-1], 1))
    statuses: list[PartitionStatus] = []
    for table, key in PARTITIONED_TABLES.items():
        if tables is not None and table not in tables:
            continue
        async with engine.connect() as connection:
            if not await _is_partitioned(connection, table):
                continue
        status = PartitionStatus(table)
        async with engine.connect() as connection:
            in_default = await _default_months(connection, table, key)
            existing = await _child_names(connection, table)
        months = sorted(set(wanted) | (set(in_default) if move_default else set()))
        for month in months:
            name = partition_name(table, month)
            if name in existing:
                continue
            try:
                async with engine.begin() as connection:
                    await _lock(connection, lock_timeout_s)
                    if name in await _child_names(connection, table):
                        continue  # another process made it meanwhile
                    rows_now = (await _default_months(connection, table, key)).get(month, 0)
                    if rows_now and not move_default:
                        status.blocked.append(month.strftime("%Y-%m"))
                        continue
                    if rows_now:
                        moved = await _move_month(connection, table, key, month)
                    else:
                        moved = 0
                        await _create_month(connection, table, month)
            except DBAPIError as exc:
                state = sqlstate_of(exc)
                if state == _CHECK_VIOLATION and not move_default:
                    # A row of that month reached DEFAULT between the look and the
                    # CREATE (PostgreSQL refused, nothing changed).
                    status.blocked.append(month.strftime("%Y-%m"))
                    continue
                if state != _LOCK_NOT_AVAILABLE:
                    raise
                status.lock_timeouts.append(month.strftime("%Y-%m"))
                log.warning("partition %s not created: lock not granted in time", name)
                continue
            status.moved_rows += moved
            status.created.append(name)
            log.info("partition %s created (%d rows moved from DEFAULT)", name, moved)
        async with engine.connect() as connection:
            status.default_rows = {
                m.strftime("%Y-%m"): n
                for m, n in (await _default_months(connection, table, key)).items()
            }
            status.partitions = len(await _child_names(connection, table))
        if status.default_rows:
            log.warning(
                "%s: %d rows in %s (months %s): run `python -m central db partitions "
                "--move-default`",
                table,
                sum(status.default_rows.values()),
                default_partition_name(table),
                ", ".join(status.default_rows),
            )
        statuses.append(status)
    return statuses
