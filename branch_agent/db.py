"""The agent's SQLite database: WAL, synchronous=FULL, migrated with Alembic (never recreated)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import weakref
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Table, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import migrations
from branch_agent.inline_sqlite import open_inline

__all__ = [
    "ReadConnection",
    "create_engine",
    "create_sessionmaker",
    "database_url",
    "read_connection",
    "table_of",
    "upgrade",
]


def database_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


# The inline engine must not sleep in the event loop waiting for another process's
# write lock: it gives up quickly and the caller retries with an asyncio sleep. A few
# ms absorb SQLite's brief busy moments (WAL recovery, a checkpoint restart) without
# rerunning the sale; each retry blocks the loop for at most that.
INLINE_BUSY_TIMEOUT_MS = 5


def create_engine(path: Path, *, inline: bool = False) -> AsyncEngine:
    """The agent's engine; ``inline=True`` runs each SQLite call in the event loop's
    thread instead of aiosqlite's (see ``branch_agent.inline_sqlite``): for short
    write units of work done under the agent's write lock, such as a sale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if inline:
        busy_ms = INLINE_BUSY_TIMEOUT_MS
        engine = create_async_engine(
            database_url(path),
            async_creator=lambda: open_inline(path, busy_timeout_s=busy_ms / 1000),
        )
    else:
        busy_ms = 30000
        engine = create_async_engine(database_url(path), connect_args={"timeout": 30})
    event.listen(engine.sync_engine, "connect", partial(_pragmas, busy_ms=busy_ms))
    reader = ReadConnection(path)
    _readers[engine.sync_engine] = reader
    event.listen(engine.sync_engine, "engine_disposed", lambda _engine: reader.close())
    return engine


class ReadConnection:
    """A plain sqlite3 connection for short indexed reads (the till's lookups), used in
    the caller's thread.

    Through the async engine every statement is a hop to aiosqlite's thread and back
    (about 0.2 ms, and a few ms when the loop is busy); an indexed read in SQLite
    itself takes tens of microseconds, so the event loop blocks less by reading here.
    In WAL mode this reader never waits for the writer and sees committed data only,
    which is what a lookup wants. Opened on first use; closed with its engine.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._connection is None:
                connection = sqlite3.connect(
                    self._path, timeout=30, isolation_level=None, check_same_thread=False
                )
                connection.execute("PRAGMA query_only=ON")
                self._connection = connection
            rows: list[tuple[Any, ...]] = self._connection.execute(sql, params).fetchall()
            return rows

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


_readers: weakref.WeakKeyDictionary[Engine, ReadConnection] = weakref.WeakKeyDictionary()


def read_connection(bind: Any) -> ReadConnection | None:
    """The reader of the engine behind a session's bind (None for other engines)."""
    engine = bind if isinstance(bind, Engine) else getattr(bind, "engine", None)
    return _readers.get(engine) if isinstance(engine, Engine) else None


def _pragmas(dbapi_connection: Any, _record: Any, *, busy_ms: int) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # A sale acknowledged to the till survives a power cut.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def revisions_of(path: Path) -> tuple[str, ...]:
    """The migrations the local database is at (empty: none yet, or no file)."""
    if not path.exists():
        return ()
    with sqlite3.connect(path) as connection:
        try:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.OperationalError:
            return ()  # no alembic_version table: never migrated
    return tuple(sorted(str(r[0]) for r in rows))


def _upgrade_sync(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    before = revisions_of(path)
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent / "agent"))
    config.set_main_option("sqlalchemy.url", database_url(path))
    command.upgrade(config, "heads")
    return before, revisions_of(path)


async def upgrade(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Migrate the local database to the newest schema; the revisions it was at and is
    at now (equal: it was current, nothing done)."""
    return await asyncio.to_thread(_upgrade_sync, path)


def table_of(model: Any) -> Table:
    """The Core table of a mapped class (for statements built once at import)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table
