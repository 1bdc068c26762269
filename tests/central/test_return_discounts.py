"""Return lines that carry their share of the original line's discount (as agents send
them since returns keep it): central stores and lists them as sent, and the sales
reports read them as the chain does, to the cent, kept incrementally and rebuilt alike.

The rule: ``discounts`` is what the sales gave away, beside ``revenue`` (after
discounts) of the same sales; a return is counted once, at what was refunded
(``returns_amount``, already after its discount share), and ``net_sales`` =
revenue - returns_amount. A returned discount is not subtracted from ``discounts``
(that would take it off twice: the refund is already net of it)."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from central.db import create_sessionmaker
from central.ingest.worker import IngestWorker
from central.reports import service
from central.reports.backlog import apply_summary_backlog
from central.services.documents import list_customer_returns
from protocol.events import CustomerReturnRecorded, Payment, ReceiptLine, ReceiptRecorded
from tests.central.chain_events import BranchBooks, message
from tests.central.summaries import assert_kept_equals_rebuilt

DAY = date(2026, 11, 27)


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


def _line(
    no: int, sku: str, qty: int, price: int, discount: int, total: int, promo: str | None = None
) -> ReceiptLine:
    return ReceiptLine(
        line_no=no,
        sku=sku,
        quantity_milli=qty,
        unit_price=price,
        discount=discount,
        manual_discount=promo is None and discount > 0,
        promotion_id=promo,
        vat_rate_bp=1000,
        line_total=total,
    )


def _return(books: BranchBooks, n: int, *lines: ReceiptLine) -> None:
    total = sum(x.line_total for x in lines)
    books._add(
        CustomerReturnRecorded(
            till="T1",
            shift_id="S1",
            return_number=n,
            return_id=f"cr{n}",
            original_sale_id="s1",
            cashier="anna",
            lines=lines,
            refunds=(Payment(type="cash", amount=total),),
            total=total,
        )
    )


async def test_returned_discounts_are_listed_and_reported_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    books = BranchBooks("B1")
    books.open_shift()
    # Two milks at 1.19 with 0.25 off (2.13), a coffee at 6.99 with a 0.50 promotion.
    sold = (_line(1, "MILK", 2000, 119, 25, 213), _line(2, "COFFEE", 1000, 699, 50, 649, "P1"))
    books._add(
        ReceiptRecorded(
            till="T1",
            shift_id="S1",
            receipt_number=1,
            sale_id="s1",
            cashier="anna",
            lines=sold,
            payments=(Payment(type="cash", amount=862),),
            total=862,
        )
    )
    # Everything comes back, the milks one at a time: the shares add up to the lines.
    _return(books, 1, _line(1, "MILK", 1000, 119, 12, 107))
    _return(books, 2, _line(2, "COFFEE", 1000, 699, 50, 649, "P1"))
    _return(books, 3, _line(1, "MILK", 1000, 119, 13, 106))
    worker = IngestWorker(sessionmaker)
    msgs = [message(e) for e in books.events]
    # In two batches, so the summaries are kept incrementally.
    assert (await worker.process(msgs[:3])).dead_letters == 0
    assert (await worker.process(msgs[3:])).dead_letters == 0
    await apply_summary_backlog(sessionmaker.kw["bind"])

    async with sessionmaker() as session:
        page = await list_customer_returns(
            session,
            branch="B1",
            date_from=None,
            date_to=None,
            original_sale_id="s1",
            limit=10,
            offset=0,
        )
    listed = [
        (x.return_id, [(y.unit_price, y.discount, y.line_total) for y in x.lines])
        for x in page.items
    ]
    assert listed == [
        ("cr1", [(119, 12, 107)]),
        ("cr2", [(699, 50, 649)]),
        ("cr3", [(119, 13, 106)]),
    ]

    async with sessionmaker() as session:
        report = await service.sales_report(session, date_from=DAY, date_to=DAY, compare=False)
        by_product = await service.sales_report(
            session, date_from=DAY, date_to=DAY, group_by="product", compare=False
        )
        by_cashier = await service.sales_report(
            session, date_from=DAY, date_to=DAY, group_by="cashier", compare=False
        )
    t = report.totals
    assert (t.revenue, t.discounts, t.returns, t.returns_amount, t.net_sales) == (
        862,
        75,
        3,
        862,
        0,
    )
    products = {r.sku: r.figures for r in by_product.rows}
    assert (products["MILK"].discounts, products["MILK"].returns_amount) == (25, 213)
    assert (products["COFFEE"].discounts, products["COFFEE"].returns_amount) == (50, 649)
    (anna,) = by_cashier.rows
    assert (anna.figures.discounts, anna.figures.returns_amount, anna.figures.net_sales) == (
        75,
        862,
        0,
    )
    await assert_kept_equals_rebuilt(sessionmaker)
