"""An aiosqlite-shaped connection that runs each sqlite3 call in the calling thread.

aiosqlite sends every call (cursor, execute, fetch, commit) to its own thread and
back: a sale is about ten statements and some thirty such hops, which cost more
than SQLite's own work (a few milliseconds against well under one). The sale path
therefore uses an engine built on this connection (``create_engine(inline=True)``):
the same async SQLAlchemy code, each call done at once in the event loop's thread.

What makes blocking the loop acceptable here: every writer of the agent holds the
process-wide write lock, so a statement never waits for another writer of this
process (``busy_timeout`` stays short; a lock held by another process surfaces as
"database is locked" and the caller retries after an ``asyncio.sleep``); reads in
WAL mode never wait; the remaining cost is the commit's fsync, which is the
durability the till is waiting for anyway.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["InlineConnection", "InlineCursor", "open_inline"]


class InlineCursor:
    """The async cursor interface SQLAlchemy's aiosqlite adapter uses."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        if parameters is None:
            self._cursor.execute(sql)
        else:
            self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class _CursorContext:
    """What ``connection.cursor()`` returns: awaitable and an async context manager."""

    __slots__ = ("_connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def __aenter__(self) -> InlineCursor:
        return InlineCursor(self._connection.cursor())

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __await__(self) -> Any:
        return self.__aenter__().__await__()


class _RunNow:
    """Stands in for aiosqlite's work queue (used to set ``isolation_level``)."""

    def put_nowait(self, item: tuple[Any, Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:
            future.set_exception(exc)


class InlineConnection:
    """The async connection interface SQLAlchemy's aiosqlite adapter uses."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        # aiosqlite's names: the adapter reads ``_conn``/``_connection``/``_tx``.
        self._conn = connection
        self._connection: sqlite3.Connection | None = connection
        self._tx = _RunNow()

    @property
    def sqlite(self) -> sqlite3.Connection:
        """The sqlite3 connection itself (for ``branch_agent.direct_sql``)."""
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> _CursorContext:
        return _CursorContext(self._conn)

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        return InlineCursor(self._conn.execute(sql, parameters))

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()


async def open_inline(path: Path, *, busy_timeout_s: float) -> InlineConnection:
    # check_same_thread=False: the pool may close a connection from a finalizer.
    connection = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False)
    return InlineConnection(connection)
