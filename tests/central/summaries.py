"""The report summary tables as rows, to compare kept ones with their rebuild."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.reports import rebuild


async def summary_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, list[Any]]:
    """Every summary table's rows, sorted."""
    async with sessionmaker() as session:
        return await rebuild.summary_rows(session)


async def assert_kept_equals_rebuilt(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """The summaries as kept equal those rebuilt from the raw records, row for row."""
    kept = await summary_rows(sessionmaker)
    async with sessionmaker() as session, session.begin():
        await rebuild.rebuild_summaries(session)
    assert await summary_rows(sessionmaker) == kept
