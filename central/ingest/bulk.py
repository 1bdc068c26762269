"""Bulk writes for the ingest hot path: COPY on PostgreSQL, executemany elsewhere.

One COPY of a batch's rows costs about as much as a handful of single-row inserts,
which is what lets one worker keep up with thousands of receipts per second.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sqlalchemy import JSON, Table, func, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only

from central.db import error_chain, sqlstate_of

__all__ = [
    "Stage",
    "allocate_ids",
    "copy_records",
    "dialect_insert",
    "fetch_records",
    "insert_rows",
    "insert_tuples",
    "is_fault_of_message",
    "is_postgresql",
    "is_retryable",
    "table_of",
]

# PostgreSQL: serialization failure, deadlock detected.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# SQLSTATE classes that say the database or the link failed, not the statement's data:
# connection exception, transaction rollback, insufficient resources, object not in
# prerequisite state (lock not available), operator intervention, system error,
# configuration file error, internal error.
_INFRASTRUCTURE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "F0", "XX"})


def table_of(model: type[Any]) -> Table:
    """The Core table of a mapped class (typed, for bulk statements)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


def is_postgresql(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def dialect_insert(session: AsyncSession, table: Table) -> Any:
    """An INSERT with ``on_conflict_do_*`` for the session's dialect."""
    if is_postgresql(session):
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def _complete(table: Table, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns to write: every column given, plus those with a Python-side default."""
    given = list(rows[0].keys())
    return given + [
        c.name
        for c in table.columns
        if c.name not in rows[0] and c.default is not None and not c.primary_key
    ]


def _default(table: Table, name: str) -> Any:
    default: Any = table.columns[name].default
    if default.is_callable:
        return default.arg(None)
    return default.arg


async def insert_rows(
    session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert rows (dicts with the same keys) in one round trip where the driver allows."""
    if not rows:
        return
    if not is_postgresql(session):
        await session.execute(insert(table), list(rows))
        return
    columns = _complete(table, rows)
    defaults = {c: _default(table, c) for c in columns if c not in rows[0]}
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    records: Iterable[tuple[Any, ...]]
    if defaults or json_columns:
        records = [
            tuple(
                json.dumps(v) if c in json_columns else v
                for c in columns
                for v in (row[c] if c in row else defaults[c],)
            )
            for row in rows
        ]
    else:
        records = [tuple(row.values()) for row in rows]
    await copy_records(session, table.name, columns, records)


async def insert_tuples(
    session: AsyncSession, table: Table, columns: Sequence[str], records: list[tuple[Any, ...]]
) -> None:
    """Insert rows given as tuples in ``columns`` order (no per-row dicts on PostgreSQL)."""
    if not records:
        return
    if is_postgresql(session):
        await copy_records(session, table.name, columns, records)
        return
    await session.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in records])


async def copy_records(
    session: AsyncSession, table: str, columns: Sequence[str], records: Iterable[tuple[Any, ...]]
) -> None:
    """PostgreSQL: COPY tuples (values in ``columns`` order) into ``table``, inside the
    session's transaction."""
    driver = await _driver_in_transaction(session)
    try:
        await driver.copy_records_to_table(table, records=records, columns=list(columns))
    except Exception as exc:
        _raise_driver_error(f"COPY {table}", exc)


async def fetch_records(session: AsyncSession, sql: str) -> list[Any]:
    """PostgreSQL: the rows of a parameterless query, straight from the driver, inside
    the session's transaction: thousands of SQLAlchemy result rows cost more than the
    query."""
    driver = await _driver_in_transaction(session)
    try:
        rows: list[Any] = await driver.fetch(sql)
    except Exception as exc:
        _raise_driver_error(sql, exc)
    return rows


async def _driver_in_transaction(session: AsyncSession) -> Any:
    """The session's asyncpg connection, its transaction begun."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    adapted: Any = raw.dbapi_connection
    if getattr(adapted, "_transaction", None) is None:
        # The adapter begins its transaction lazily, on the first statement: make sure
        # what the driver runs is inside it, not in autocommit.
        await connection.execute(text("SELECT 1"))
    return raw.driver_connection


def _raise_driver_error(statement: str, exc: Exception) -> NoReturn:
    """asyncpg's errors as SQLAlchemy's, so callers' retry and dead-letter rules apply."""
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        raise IntegrityError(statement, None, exc) from exc
    if isinstance(exc, asyncpg.PostgresError):
        raise DBAPIError(statement, None, exc) from exc
    raise exc


@dataclass(frozen=True)
class Stage:
    """PostgreSQL: a per-connection temporary table that a statement reads a batch's
    rows from, filled with one COPY.

    Sending ~13,000 rows as unnest arrays cost several times a COPY of them (client
    encoding and server parsing of every element). ON COMMIT DELETE ROWS empties it
    at commit; it is also emptied before each fill, so two fills in one transaction
    never mix.
    """

    name: str
    # (column, SQL type) in COPY order.
    columns: tuple[tuple[str, str], ...]
    _create: Any = field(init=False, repr=False, compare=False)
    _clear: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ddl = ", ".join(f"{name} {kind}" for name, kind in self.columns)
        object.__setattr__(
            self,
            "_create",
            text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.name} ({ddl}) ON COMMIT DELETE ROWS"),
        )
        object.__setattr__(self, "_clear", text(f"DELETE FROM {self.name}"))

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    async def fill(self, session: AsyncSession, records: list[tuple[Any, ...]]) -> None:
        await session.execute(self._create)
        await session.execute(self._clear)
        await copy_records(session, self.name, self.column_names, records)

    def clear_sync(self, session: Session) -> None:
        """Create it if need be and empty it, from synchronous code (``run_sync``): for
        a fill by an ``INSERT ... SELECT`` of the caller's."""
        session.execute(self._create)
        session.execute(self._clear)

    def fill_sync(self, session: Session, records: list[tuple[Any, ...]]) -> None:
        """:meth:`fill` from synchronous code under ``AsyncSession.run_sync``."""
        self.clear_sync(session)
        driver: Any = session.connection().connection.driver_connection
        try:
            await_only(
                driver.copy_records_to_table(self.name, records=records, columns=self.column_names)
            )
        except Exception as exc:
            _raise_driver_error(f"COPY {self.name}", exc)


async def allocate_ids(session: AsyncSession, table: Table, count: int) -> list[int]:
    """``count`` new values of the table's integer ``id``, in one query.

    PostgreSQL: from the column's sequence. SQLite: after the current maximum, which is
    safe because SQLite has one writer at a time and the caller's transaction has
    already written (holding the write lock).
    """
    if count == 0:
        return []
    if is_postgresql(session):
        result = await session.execute(
            text(
                "SELECT nextval(pg_get_serial_sequence(:table, 'id')) "
                "FROM generate_series(1, :count)"
            ),
            {"table": table.name, "count": count},
        )
        return [row[0] for row in result]
    start = (await session.scalar(select(func.max(table.c.id)))) or 0
    return list(range(start + 1, start + 1 + count))


def is_retryable(exc: BaseException) -> bool:
    """A lock conflict that a retry of the whole batch resolves (not a bad message)."""
    return sqlstate_of(exc) in _RETRYABLE_SQLSTATES or any(
        "database is locked" in str(e) for e in error_chain(exc)
    )


def is_fault_of_message(exc: BaseException) -> bool:
    """Whether storing failed because of what a message holds, so that it fails again on
    every retry (a number out of the column's range, a text too long for it, a case
    the code does not handle), rather than because the database or the link is down
    or busy, when the batch must wait for redelivery and nothing may be dead-lettered."""
    state = sqlstate_of(exc)
    if state is not None:
        return state[:2] not in _INFRASTRUCTURE_SQLSTATE_CLASSES
    chain = error_chain(exc)
    if any("database is locked" in str(e) for e in chain):
        return False
    # The driver refusing a value it was handed (asyncpg's DataError is a ValueError,
    # sqlite3 raises OverflowError for integers beyond 64 bits).
    if any(isinstance(e, ValueError | ArithmeticError | TypeError) for e in chain):
        return True
    infrastructure = (OSError, TimeoutError, OperationalError, InterfaceError)
    return not any(
        isinstance(e, infrastructure) or (isinstance(e, DBAPIError) and e.connection_invalidated)
        for e in chain
    )
