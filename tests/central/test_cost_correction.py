"""Goods received on a negative balance: the units sold before them are revalued at
their cost (a cost_correction ledger row charged to cost of goods sold), so the stock
after the receipt is at the receipt's cost, not blended with what left at cost 0."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from central.db import create_sessionmaker
from central.ingest.stock import COST_CORRECTION, apply_movement, cover_correction
from central.ingest.worker import IngestWorker
from central.models import StockBalance, StockMovement
from central.models.documents import StockDocumentLineRow
from central.reports import service
from central.reports.backlog import apply_summary_backlog
from central.services.stock import rebuild_balances
from tests.central.chain_events import BranchBooks, message
from tests.central.summaries import assert_kept_equals_rebuilt

DAY = date(2026, 11, 27)


def _receive(quantity: int, value: int, avg: int, delta: int, cost: int) -> tuple[int, int, int]:
    """A receipt as ingestion posts it: the correction first, then the goods."""
    correction = cover_correction(quantity, value, delta, cost, None)
    after = apply_movement(quantity, value + correction, avg, delta, cost)
    return correction, after.value_after, after.avg_cost_after


def test_cover_correction_arithmetic() -> None:
    # 10 sold before any cost was known (left at 0); 20 received at 0.33: the 10 sold
    # cost 3.30 more, the 10 left are worth 3.30 (without it: 6.60, an average of 0.66).
    assert _receive(-10_000, 0, 0, 20_000, 33) == (-330, 330, 33)
    # Sold at the old average 0.33, received at 0.40: 0.70 more cost of goods sold.
    assert _receive(-10_000, -330, 33, 20_000, 40) == (-70, 400, 40)
    # Exactly covered: nothing left, nothing of value.
    assert _receive(-10_000, -330, 33, 10_000, 40) == (-70, 0, 40)
    # Half covered: 4 of 10 brought to 0.40; the other 6 keep their 0.33 a unit.
    correction, value_after, _ = _receive(-10_000, -330, 33, 4_000, 40)
    assert (correction, value_after) == (-28, -198)
    # Received at the cost they left at: nothing to correct.
    assert cover_correction(-10_000, -330, 10_000, 33, None) == 0
    # Nothing negative, nothing incoming, or no cost of its own (at the average): none.
    assert cover_correction(5_000, 165, 10_000, 40, None) == 0
    assert cover_correction(-5_000, -165, -1_000, None, None) == 0
    assert cover_correction(-5_000, -165, 10_000, None, None) == 0
    # At the average (a stocktake surplus, a customer return): units left at 0 before
    # the first receipt are brought to it, so the surplus does not blend with them
    # (without it: 2 coffees worth 36.00, an average of 18.00 for a 4.50 coffee).
    correction = cover_correction(-6_000, 0, 8_000, None, None, 450)
    after = apply_movement(-6_000, correction, 450, 8_000, None)
    assert (correction, after.value_after, after.avg_cost_after) == (-2700, 900, 450)
    # Negative units already at the average: nothing to correct; no average yet: none.
    assert cover_correction(-5_000, -165, 10_000, None, None, 33) == 0
    assert cover_correction(-5_000, 0, 10_000, None, None, 0) == 0
    # A transfer received at the sender's value as a whole (in_value): its share.
    assert cover_correction(-1_000, 0, 3_000, 33, 100) == -33


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


async def _balance(maker: async_sessionmaker[AsyncSession], sku: str) -> tuple[int, int, int]:
    async with maker() as session:
        b = await session.get(StockBalance, ("B1", sku))
        assert b is not None
        return b.quantity_milli, b.value, b.avg_cost


async def _checked_reports(maker: async_sessionmaker[AsyncSession]) -> tuple[Any, Any]:
    """The day's stock movement and gross margin by product of B1, once the balances
    agree with the ledger and the kept summaries with their rebuild."""
    async with maker() as session, session.begin():
        assert (await rebuild_balances(session, verify_only=True)).agree
    await assert_kept_equals_rebuilt(maker)
    async with maker() as session:
        movement = await service.stock_movement(
            session, date_from=DAY, date_to=DAY, branch="B1", group_by="product"
        )
        margin = await service.gross_margin(
            session, date_from=DAY, date_to=DAY, branch="B1", group_by="product"
        )
    return movement, margin


async def test_receipt_on_negative_stock_is_corrected_and_reported(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    books = BranchBooks("B1")
    books.open_shift()
    # WATER sold before it was ever received (cost unknown: 0), then 20 at 0.33.
    sold = books.sale([("WATER", 10_000, 99)])
    received = books.document("goods_receipt", [("WATER", 20_000, 33), ("SODA", 5_000, 50)])
    # SODA: sold beyond stock at 0.50, then covered in part at 0.60.
    books.sale([("SODA", 8_000, 120)])
    books.document("goods_receipt", [("SODA", 1_000, 60)])
    worker = IngestWorker(sessionmaker)
    msgs = [message(e) for e in books.events]
    await worker.process(msgs[:2])
    await worker.process(msgs[2:])
    again = await worker.process(msgs)
    assert again.stored == 0  # redelivered: no second correction
    await apply_summary_backlog(engine)

    # Without the correction: 10 units at 6.60 (an average of 0.66).
    assert await _balance(sessionmaker, "WATER") == (10_000, 330, 33)
    # SODA: 5 in at 0.50, 8 out (2.50 + 3 at 0.50 = 4.00), -3 worth -1.50; 1 received
    # at 0.60 covers 1 of the 3: -0.50 -> -0.60 (-0.10); left: -2 worth -1.00.
    assert await _balance(sessionmaker, "SODA") == (-2_000, -100, 60)
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(
                    StockMovement.sku,
                    StockMovement.doc_type,
                    StockMovement.quantity_milli,
                    StockMovement.value,
                    StockMovement.value_after,
                )
                .where(StockMovement.event_id == received.event_id)
                .order_by(StockMovement.id)
            )
        ).all()
        # The correction comes first; the receipt keeps its invoice value.
        assert [tuple(r) for r in rows] == [
            ("WATER", COST_CORRECTION, 0, -330, -330),
            ("WATER", "goods_receipt", 20_000, 660, 330),
            ("SODA", "goods_receipt", 5_000, 250, 250),
        ]
        line_values = (
            await session.scalars(
                select(StockDocumentLineRow.value)
                .where(StockDocumentLineRow.event_id == received.event_id)
                .order_by(StockDocumentLineRow.line_no)
            )
        ).all()
        assert line_values == [660, 250]
        sale_cost = await session.scalar(
            select(StockMovement.value).where(StockMovement.event_id == sold.event_id)
        )
        assert sale_cost == 0
    movement, margin = await _checked_reports(sessionmaker)
    async with sessionmaker() as session:
        abc = await service.abc_analysis(session, date_from=DAY, date_to=DAY, measure="margin")
    water = next(r for r in movement.rows if r.sku == "WATER")
    assert (water.goods_received_value, water.sales_value, water.cost_corrections_value) == (
        660,
        0,
        -330,
    )
    assert water.cost_corrections_milli == 0
    assert water.closing_value == water.opening_value + 660 - 0 - 330 == 330
    soda = next(r for r in movement.rows if r.sku == "SODA")
    assert (soda.cost_corrections_value, soda.closing_value) == (-10, -100)
    assert movement.totals.cost_corrections_value == -340
    figures = {r.sku: r.figures for r in margin.rows}
    # WATER: 9.90 gross at 19 % VAT = 8.32 net; sold at 0, corrected by 3.30.
    assert (figures["WATER"].cost_of_goods_sold, figures["WATER"].cost_corrections) == (330, 330)
    assert figures["WATER"].margin == figures["WATER"].net_sales - 330
    assert (figures["SODA"].cost_of_goods_sold, figures["SODA"].cost_corrections) == (410, 10)
    assert margin.totals.cost_corrections == 340
    values = {r.sku: r.value for r in abc.rows}
    assert values["WATER"] == figures["WATER"].margin
    assert values["SODA"] == figures["SODA"].margin


async def test_surplus_and_return_on_negative_stock_are_corrected_at_the_average(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """A stocktake surplus or a customer return covering units sold below zero brings
    them to the average: the stock after it is at the average, not blended with units
    that left at 0 before the first receipt."""
    books = BranchBooks("B1")
    books.open_shift()
    # COFFEE: 16 sold before any receipt (at 0), 10 received at 4.50 (cover 10 of 16),
    # then a count finds 2 on the shelf: a surplus of 8 at the average 4.50.
    books.sale([("COFFEE", 16_000, 899)])
    books.document("goods_receipt", [("COFFEE", 10_000, 450)])
    counted = books.document("stocktake", [("COFFEE", 8_000, None)])
    # TEA: 4 sold at 0, 2 received at 1.00, then a customer brings 3 back.
    sold = books.sale([("TEA", 4_000, 250)])
    books.document("goods_receipt", [("TEA", 2_000, 100)])
    returned = books.customer_return("TEA", 3_000, 250, sold.body.sale_id)  # type: ignore[union-attr]
    worker = IngestWorker(sessionmaker)
    msgs = [message(e) for e in books.events]
    await worker.process(msgs[:4])
    await worker.process(msgs[4:])
    assert (await worker.process(msgs)).stored == 0  # redelivered: no second correction
    await apply_summary_backlog(engine)

    assert await _balance(sessionmaker, "COFFEE") == (2_000, 900, 450)
    assert await _balance(sessionmaker, "TEA") == (1_000, 100, 100)
    async with sessionmaker() as session:
        rows = {
            e: [
                tuple(r)
                for r in await session.execute(
                    select(
                        StockMovement.doc_type, StockMovement.quantity_milli, StockMovement.value
                    )
                    .where(StockMovement.event_id == e)
                    .order_by(StockMovement.id)
                )
            ]
            for e in (counted.event_id, returned.event_id)
        }
    # The 6 coffees sold at 0 cost 27.00; the surplus keeps its value at the average.
    assert rows[counted.event_id] == [(COST_CORRECTION, 0, -2700), ("stocktake", 8_000, 3600)]
    assert rows[returned.event_id] == [(COST_CORRECTION, 0, -200), ("customer_return", 3_000, 300)]
    movement, margin = await _checked_reports(sessionmaker)
    coffee = next(r for r in movement.rows if r.sku == "COFFEE")
    # 10 of the 16 corrected by the receipt (-45.00), the other 6 by the count (-27.00).
    assert (coffee.cost_corrections_value, coffee.stocktake_difference_value) == (-7200, 3600)
    assert coffee.closing_value == 900
    figures = {r.sku: r.figures for r in margin.rows}
    # Every coffee sold now costs 4.50: 16 x 4.50.
    assert figures["COFFEE"].cost_of_goods_sold == 7200
    # TEA: 4 sold, 3 back: 1 sold net at 1.00, after corrections of 2.00 + 2.00.
    assert figures["TEA"].cost_corrections == 400
    assert figures["TEA"].cost_of_goods_sold == 100
