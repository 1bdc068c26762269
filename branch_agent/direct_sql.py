"""Write units of work run straight on the inline engine's sqlite3 connection.

Through SQLAlchemy's execution layer (session, greenlet hop, execution context) a
statement costs about five times SQLite's own work; a sale is about ten statements,
so that layer was most of the sale's commit time. Statements are still built with
SQLAlchemy from the mapped tables and compiled once for SQLite, and values pass
through the column types' own bind and result processors: rows are stored exactly
as the ORM stores them and read back the same way.

Functions shared with the session-based services take ``AsyncSession | DirectUnit``
and run a :class:`DirectStatement` through :func:`run` on either.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from branch_agent.inline_sqlite import InlineConnection

__all__ = ["DirectStatement", "DirectUnit", "direct_unit", "run"]

# The pysqlite dialect: the same type processing as the engine's aiosqlite dialect.
_DIALECT = sqlite.dialect()
_Processor = Callable[[Any], Any] | None


class DirectStatement:
    """A Core statement and its SQLite text, parameter order and value processors."""

    __slots__ = ("_binds", "_results", "returns_rows", "sql", "statement")

    def __init__(self, statement: Executable, table: Table | None = None) -> None:
        self.statement = statement
        assert isinstance(statement, ClauseElement)
        compiled = statement.compile(dialect=_DIALECT)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        binds: list[tuple[str, _Processor, Callable[[], Any] | None]] = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            # A bind the caller may leave out: a literal (LIMIT 1) or a column default.
            fallback = None if bind.required else _fallback(bind.value, table, name)
            processor = bind.type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
            binds.append((name, processor, fallback))
        self._binds = tuple(binds)
        columns = getattr(statement, "exported_columns", ())
        self._results = tuple(
            c.type.dialect_impl(_DIALECT).result_processor(_DIALECT, None) for c in columns
        )
        self.returns_rows = bool(self._results)

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, process, fallback in self._binds:
            value = values[name] if fallback is None or name in values else fallback()
            out.append(value if process is None or value is None else process(value))
        return tuple(out)

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(
            value if process is None or value is None else process(value)
            for process, value in zip(self._results, raw, strict=True)
        )


def _fallback(literal: Any, table: Table | None, name: str) -> Callable[[], Any]:
    """The value the ORM would insert for a left-out bind: its literal, else the
    column's Python default (scalar or callable), else NULL."""
    if literal is not None:
        return lambda: literal
    column = table.c.get(name) if table is not None else None
    default: Any = column.default if column is not None else None
    if default is not None and default.is_scalar:
        value = default.arg
        return lambda: value
    if default is not None and default.is_callable:
        # SQLAlchemy wraps a zero-argument default into a function of the context.
        function = default.arg
        return lambda: function(None)
    return lambda: None


class DirectUnit:
    """One transaction on a plain sqlite3 connection (see :func:`direct_unit`)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(
        self, statement: DirectStatement, values: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> list[tuple[Any, ...]]:
        if isinstance(values, Mapping):
            cursor = self._connection.execute(statement.sql, statement.parameters(values))
            return [statement.row(r) for r in cursor.fetchall()]
        self._connection.executemany(statement.sql, [statement.parameters(v) for v in values])
        return []


async def run(
    db: AsyncSession | DirectUnit,
    statement: DirectStatement,
    values: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> list[tuple[Any, ...]]:
    """Run a statement in either kind of unit of work; the rows it returns, if any."""
    if isinstance(db, DirectUnit):
        return db.execute(statement, values)
    result = await db.execute(statement.statement, values)
    return [tuple(r) for r in result.all()] if statement.returns_rows else []


@asynccontextmanager
async def direct_unit(engine: AsyncEngine) -> AsyncIterator[DirectUnit]:
    """A write transaction on a connection of the inline engine (SQLite calls in the
    loop's thread, see ``branch_agent.inline_sqlite``). BEGIN IMMEDIATE takes SQLite's
    write lock first, so a unit never fails half-way for want of it; the caller holds
    the agent's write lock and retries on "database is locked" (another process)."""
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        if not isinstance(driver, InlineConnection):
            raise TypeError("a direct unit of work needs the inline engine")
        sqlite_connection = driver.sqlite
        sqlite_connection.execute("BEGIN IMMEDIATE")
        try:
            yield DirectUnit(sqlite_connection)
            sqlite_connection.commit()
        except BaseException:
            if sqlite_connection.in_transaction:
                sqlite_connection.rollback()
            raise
