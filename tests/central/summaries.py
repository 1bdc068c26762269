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


async def assert_books_stored_once(
    sessionmaker: async_sessionmaker[AsyncSession], books: Any
) -> None:
    """Branch B1's ``books`` (a chain_events.BranchBooks with MILK) after ingestion: the
    quantities sold per product and MILK's stock as the books say, and every summary row
    as the raw records give it (nothing applied twice or lost)."""
    from sqlalchemy import func, select

    from central.models import SalesProductDaily, StockBalance

    async with sessionmaker() as session:
        sold = dict(
            (
                await session.execute(
                    select(SalesProductDaily.sku, func.sum(SalesProductDaily.qty_milli)).group_by(
                        SalesProductDaily.sku
                    )
                )
            ).all()
        )
        milk = await session.get(StockBalance, ("B1", "MILK"))
    assert {sku: int(qty) for sku, qty in sold.items()} == books.sold_milli
    assert milk is not None
    assert milk.quantity_milli == books.stock_milli["MILK"]
    await assert_kept_equals_rebuilt(sessionmaker)
