"""The balance projection checked against and rebuilt from the ledger: only the
disagreeing balances come back, verifying does not wait for ingestion."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from central.db import create_sessionmaker
from central.ingest.worker import IngestWorker
from central.models import StockBalance
from central.services.stock import rebuild_balances
from tests.central.chain_events import BranchBooks, message
from tests.conftest import PG_URL_ENV


async def _books(engine: AsyncEngine) -> None:
    """B1 (registered): a goods receipt and two sales, ingested."""
    books = BranchBooks("B1")
    books.document("goods_receipt", [("MILK", 10_000, 100), ("BREAD", 5_000, 80)])
    books.sale([("MILK", 2_000, 150)])
    books.sale([("BREAD", 1_000, 120), ("MILK", 1_000, 150)])
    await IngestWorker(create_sessionmaker(engine)).process([message(e) for e in books.events])


@pytest.fixture
async def books(engine: AsyncEngine) -> AsyncEngine:
    await _books(engine)
    return engine


async def test_only_disagreeing_balances_are_reported_and_a_rebuild_mends_them(
    books: AsyncEngine,
) -> None:
    sessionmaker = create_sessionmaker(books)
    async with sessionmaker() as session, session.begin():
        report = await rebuild_balances(session, verify_only=True)
    assert (report.agree, report.balances, report.movements) == (True, 2, 5)
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(StockBalance).where(StockBalance.sku == "BREAD").values(avg_cost=81)
        )
        session.add_all(
            [
                # Left by a rolled-back batch's creation: empty, not a disagreement.
                StockBalance(branch="B1", sku="EMPTY", quantity_milli=0, value=0, avg_cost=0),
                # Stock the ledger never saw.
                StockBalance(branch="B1", sku="GHOST", quantity_milli=3_000, value=30),
            ]
        )
    async with sessionmaker() as session, session.begin():
        report = await rebuild_balances(session, verify_only=True)
    assert report.mismatches == [
        ("B1", "BREAD", "avg_cost", 81, 80),
        ("B1", "GHOST", "quantity_milli", 3_000, None),
        ("B1", "GHOST", "value", 30, None),
        ("B1", "GHOST", "avg_cost", 0, None),
        ("B1", "GHOST", "movements", 0, None),
    ]
    assert not report.rebuilt
    async with sessionmaker() as session, session.begin():
        rebuilt = await rebuild_balances(session, verify_only=False)
    assert rebuilt.rebuilt
    async with sessionmaker() as session:
        balances = (
            await session.execute(
                select(
                    StockBalance.sku,
                    StockBalance.quantity_milli,
                    StockBalance.value,
                    StockBalance.avg_cost,
                    StockBalance.movements,
                ).order_by(StockBalance.sku)
            )
        ).all()
    assert [tuple(b) for b in balances] == [
        ("BREAD", 4_000, 320, 80, 2),
        ("MILK", 7_000, 700, 100, 3),
    ]
    async with sessionmaker() as session, session.begin():
        assert (await rebuild_balances(session, verify_only=True)).agree


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}")
async def test_verifying_does_not_wait_for_a_batch_in_progress(pg_engine: AsyncEngine) -> None:
    await _books(pg_engine)
    sessionmaker = create_sessionmaker(pg_engine)
    async with sessionmaker() as batch, batch.begin():
        # An ingest batch holding its balance locks, not yet committed.
        await batch.execute(text("SELECT * FROM stock_balances WHERE branch = 'B1' FOR UPDATE"))
        async with sessionmaker() as session, session.begin():
            await session.execute(text("SET LOCAL lock_timeout = '2s'"))
            report = await rebuild_balances(session, verify_only=True)
        assert report.agree
