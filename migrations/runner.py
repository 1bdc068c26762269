"""The body of both Alembic environments (central and agent): only the metadata differs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from alembic import context
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["run_migrations"]


def run_migrations(
    target_metadata: MetaData, *, include_name: Callable[..., bool] | None = None
) -> None:
    """Run the migrations of the current Alembic context against ``target_metadata``.

    ``include_name``: Alembic's reflection filter (e.g. leave out tables the models do
    not describe, such as child partitions), so autogenerate does not drop them.
    """
    options: dict[str, Any] = {} if include_name is None else {"include_name": include_name}
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            **options,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run_async() -> None:
        # Async engines (aiosqlite, asyncpg): the same URLs the applications use.
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(run)
                await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(run_async())
