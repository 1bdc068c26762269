"""The agent's SQLite database: WAL, synchronous=FULL, migrated with Alembic (never recreated)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import migrations

__all__ = ["create_engine", "create_sessionmaker", "database_url", "upgrade"]


def database_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def create_engine(path: Path) -> AsyncEngine:
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(database_url(path), connect_args={"timeout": 30})
    event.listen(engine.sync_engine, "connect", _pragmas)
    return engine


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # A sale acknowledged to the till survives a power cut.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _upgrade_sync(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent / "agent"))
    config.set_main_option("sqlalchemy.url", database_url(path))
    command.upgrade(config, "heads")


async def upgrade(path: Path) -> None:
    await asyncio.to_thread(_upgrade_sync, path)
