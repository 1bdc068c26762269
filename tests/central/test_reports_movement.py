"""Stock movement over a history of fifteen months: every period (mid-month starts,
month and year boundaries, the opening from history or from today's balance) gives
exactly what the stock ledger says, and the monthly rollup equals its rebuild."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db import create_engine, create_sessionmaker
from central.ingest.worker import IngestWorker
from central.models import StockMovement
from central.models.reports import StockMovementMonthly
from central.reports import service
from central.reports.rebuild import rebuild_summaries
from central.reports.service import _pieces
from central.services.branches import add_branch
from protocol import Payment
from protocol.events import CustomerReturnRecorded, StockDocumentLine
from tests.central.reports_history import History, doc, line, sale

KINDS = {
    "goods_receipt": ("goods_received", 1),
    "transfer_in": ("transfers_in", 1),
    "customer_return": ("customer_returns", 1),
    "transfer_out": ("transfers_out", -1),
    "sale": ("sales", -1),
    "supplier_return": ("supplier_returns", -1),
    "write_off": ("write_offs", -1),
    "stocktake": ("stocktake_difference", 1),
}
FIELDS = [f for f, _ in KINDS.values()] + ["other"]


def _months() -> list[date]:
    """2025-11 .. 2027-01: fifteen months over a year boundary each side."""
    out, month = [], date(2025, 11, 1)
    while month <= date(2027, 1, 1):
        out.append(month)
        month = (month + timedelta(days=32)).replace(day=1)
    return out


def _month_last(month: date) -> date:
    return (month + timedelta(days=32)).replace(day=1) - timedelta(days=1)


def build_long_history() -> History:
    h = History()
    n = 0
    for i, month in enumerate(_months()):
        last = _month_last(month)
        h.add(
            "B1",
            f"{month.isoformat()}T06:00:00",
            doc(
                f"G{i}",
                "goods_receipt",
                (
                    StockDocumentLine(sku="A", quantity_milli=6000, unit_cost=100 + i),
                    StockDocumentLine(sku="B", quantity_milli=3000, unit_cost=250 + 3 * i),
                ),
            ),
        )
        for day, sku, qty in ((3, "A", 2000), (15, "B", 1000), (15, "A", 1000)):
            n += 1
            h.add(
                "B1",
                f"{month.replace(day=day).isoformat()}T10:00:00",
                sale(
                    f"r{n}",
                    "S1",
                    "ann",
                    (line(1, sku, qty, 199, 199 * qty // 1000, 2000),),
                    (Payment(type="credit_card", amount=199 * qty // 1000),),
                ),
            )
        # 23:30 UTC on the month's last day is already the 1st on B1's clock (UTC+1).
        n += 1
        h.add(
            "B1",
            f"{last.isoformat()}T23:30:00",
            sale(
                f"r{n}",
                "S1",
                "bob",
                (line(1, "A", 1000, 199, 199, 2000),),
                (Payment(type="cash", amount=199),),
            ),
        )
        if i % 2 == 0:
            h.add(
                "B1",
                f"{month.replace(day=20).isoformat()}T12:00:00",
                doc(
                    f"W{i}",
                    "write_off",
                    (StockDocumentLine(sku="B", quantity_milli=-500),),
                    reason="expired",
                ),
            )
        if i % 3 == 1:
            h.add(
                "B1",
                f"{month.replace(day=28).isoformat()}T12:00:00",
                doc(
                    f"T{i}",
                    "stocktake",
                    (StockDocumentLine(sku="A", quantity_milli=-250),),
                ),
            )
        if i % 4 == 2:
            h.add(
                "B1",
                f"{month.replace(day=9).isoformat()}T12:00:00",
                doc(
                    f"TO{i}",
                    "transfer_out",
                    (StockDocumentLine(sku="A", quantity_milli=-1500),),
                    counterpart_branch="B2",
                    transfer_ref=f"TR{i}",
                ),
            )
            h.add(
                "B2",
                f"{month.replace(day=11).isoformat()}T12:00:00",
                doc(
                    f"TI{i}",
                    "transfer_in",
                    (StockDocumentLine(sku="A", quantity_milli=1500),),
                    counterpart_branch="B1",
                    transfer_ref=f"TR{i}",
                ),
            )
        if i % 5 == 3:
            h.add(
                "B1",
                f"{month.replace(day=16).isoformat()}T12:00:00",
                CustomerReturnRecorded(
                    till="T1",
                    shift_id="S1",
                    return_number=i,
                    return_id=f"cr{i}",
                    original_sale_id=f"r{n - 1}",
                    cashier="ann",
                    lines=(line(1, "B", 1000, 199, 199, 2000),),
                    refunds=(Payment(type="credit_card", amount=199),),
                    total=199,
                ),
            )
            h.add(
                "B1",
                f"{month.replace(day=17).isoformat()}T12:00:00",
                doc(
                    f"SR{i}", "supplier_return", (StockDocumentLine(sku="B", quantity_milli=-700),)
                ),
            )
    return h


@pytest.fixture
async def long_chain(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="B1", name="Harbour", timezone="Europe/Berlin")
        await add_branch(session, code="B2", name="Station")
    worker = IngestWorker(sessionmaker)
    for batch in build_long_history().batches(7):
        stats = await worker.process(batch)
        assert stats.dead_letters == 0
    try:
        yield sessionmaker
    finally:
        await engine.dispose()


def _expected(ledger: list[Any], d1: date, d2: date, key_of: Any) -> dict[Any, dict[str, int]]:
    """The movement report computed straight from the stock ledger."""
    out: dict[Any, dict[str, int]] = {}
    blank = {f"{n}_{u}": 0 for n in ("opening", *FIELDS, "closing") for u in ("milli", "value")}
    inside_seen: set[Any] = set()
    for row in ledger:
        if row.local_date > d2:
            continue
        acc = out.setdefault(key_of(row), dict(blank))
        if row.local_date < d1:
            acc["opening_milli"] += row.quantity_milli
            acc["opening_value"] += row.value
        else:
            inside_seen.add(key_of(row))
            field, sign = KINDS[row.doc_type]
            acc[f"{field}_milli"] += sign * row.quantity_milli
            acc[f"{field}_value"] += sign * row.value
        acc["closing_milli"] += row.quantity_milli
        acc["closing_value"] += row.value
    return {
        k: v for k, v in out.items() if k in inside_seen or v["opening_milli"] or v["opening_value"]
    }


def _got(rows: list[Any], key_of: Any) -> dict[Any, dict[str, int]]:
    out = {}
    for r in rows:
        fields = {
            f"{n}_{u}": getattr(r, f"{n}_{u}")
            for n in ("opening", *FIELDS, "closing")
            for u in ("milli", "value")
        }
        out[key_of(r)] = fields
    return out


PERIODS = [
    (date(2025, 11, 1), date(2025, 11, 30)),  # the first month, whole
    (date(2025, 11, 14), date(2025, 12, 2)),  # mid-month start, spanning months
    (date(2025, 12, 20), date(2026, 1, 10)),  # across a year boundary, both ends partial
    (date(2026, 1, 1), date(2026, 1, 1)),  # the day the late-evening sales land on
    (date(2026, 2, 15), date(2026, 5, 14)),  # full months inside, partial ends
    (date(2026, 3, 1), date(2026, 6, 30)),  # exactly whole months
    (date(2026, 6, 7), date(2026, 6, 21)),  # inside one month
    (date(2026, 9, 16), date(2027, 1, 31)),  # late: opening from today's balance
    (date(2026, 12, 1), date(2026, 12, 31)),  # a whole month near the end
    (date(2026, 12, 31), date(2027, 1, 1)),  # year boundary, two days
    (date(2027, 1, 5), date(2027, 2, 28)),  # running past the last movement
    (date(2025, 10, 1), date(2025, 10, 31)),  # before any movement: nothing
]


async def test_every_period_matches_the_ledger(
    long_chain: async_sessionmaker[AsyncSession],
) -> None:
    async with long_chain() as s:
        ledger = list((await s.execute(select(StockMovement))).scalars())
    by_product = lambda r: r.sku  # noqa: E731
    by_branch = lambda r: r.branch  # noqa: E731
    for d1, d2 in PERIODS:
        async with long_chain() as s:
            products = await service.stock_movement(s, date_from=d1, date_to=d2, branch="B1")
            branches = await service.stock_movement(s, date_from=d1, date_to=d2)
            both = await service.stock_movement(
                s, date_from=d1, date_to=d2, group_by="branch,product"
            )
            one = await service.stock_movement(s, date_from=d1, date_to=d2, sku="A")
        b1 = [r for r in ledger if r.branch == "B1"]
        assert _got(products.rows, by_product) == _expected(b1, d1, d2, by_product), (d1, d2)
        assert _got(branches.rows, by_branch) == _expected(ledger, d1, d2, by_branch), (d1, d2)
        pair = lambda r: (r.branch, r.sku)  # noqa: E731
        assert _got(both.rows, pair) == _expected(ledger, d1, d2, pair), (d1, d2)
        only_a = [r for r in ledger if r.sku == "A"]
        assert _got(one.rows, by_branch) == _expected(only_a, d1, d2, by_branch), (d1, d2)
        for row in [*products.rows, *branches.rows, products.totals]:
            for unit in ("milli", "value"):
                moved = sum(
                    sign * getattr(row, f"{field}_{unit}") for field, sign in KINDS.values()
                )
                assert getattr(row, f"opening_{unit}") + moved + getattr(
                    row, f"other_{unit}"
                ) == getattr(row, f"closing_{unit}")
    # Sanity of the fixture: the late sales of each month land on the next month's 1st.
    jan = [r for r in ledger if r.local_date == date(2026, 1, 1) and r.doc_type == "sale"]
    assert [(r.branch, r.sku, r.quantity_milli) for r in jan] == [("B1", "A", -1000)]


async def test_spot_figures_to_the_cent(long_chain: async_sessionmaker[AsyncSession]) -> None:
    """One period checked by hand: 2025-12-20 .. 2026-01-10 at B1, product B."""
    async with long_chain() as s:
        report = await service.stock_movement(
            s, date_from=date(2025, 12, 20), date_to=date(2026, 1, 10), branch="B1", sku="B"
        )
    (b,) = report.rows
    # Nov: +3000 @2.50, -1000 sold, -500 written off -> 1500 left (3.75).
    # Dec 1: +3000 @2.53 -> 4500 worth 3.75 + 7.59 = 11.34; Dec 15: -1000 sold at the
    # average (11.34 x 1000/4500 = 2.52) -> 3500, 8.82. Opening on the 20th: 3500, 8.82.
    assert (b.opening_milli, b.opening_value) == (3500, 882)
    # Dec 20: nothing for B that month (write-offs every other month: Nov, Jan ...).
    # Jan 1: +3000 @2.56 = 7.68 -> 6500, 16.50. Nothing else until the 10th.
    assert (b.goods_received_milli, b.goods_received_value) == (3000, 768)
    assert (b.sales_milli, b.write_offs_milli) == (0, 0)
    assert (b.closing_milli, b.closing_value) == (6500, 1650)


async def test_monthly_rollup_equals_its_rebuild(
    long_chain: async_sessionmaker[AsyncSession],
) -> None:
    async def monthly() -> list[Any]:
        async with long_chain() as s:
            return sorted(
                tuple(r) for r in (await s.execute(select(StockMovementMonthly.__table__)))
            )

    incremental = await monthly()
    # B1: 2025-11 .. 2027-02 (the last evening sale lands on 1 February), B2: 4 transfers.
    assert len({(r[0], r[1]) for r in incremental}) == 16 + 4
    async with long_chain() as session, session.begin():
        await rebuild_summaries(session)
    assert await monthly() == incremental


def test_a_period_splits_into_whole_months_and_partial_days() -> None:
    d = date
    assert _pieces(d(2026, 2, 15), d(2026, 5, 14)) == [
        ("daily", d(2026, 2, 15), d(2026, 2, 28)),
        ("monthly", d(2026, 3, 1), d(2026, 4, 30)),
        ("daily", d(2026, 5, 1), d(2026, 5, 14)),
    ]
    assert _pieces(d(2026, 3, 1), d(2026, 6, 30)) == [("monthly", d(2026, 3, 1), d(2026, 6, 30))]
    assert _pieces(d(2026, 6, 7), d(2026, 6, 21)) == [("daily", d(2026, 6, 7), d(2026, 6, 21))]
    assert _pieces(d(2025, 12, 20), d(2026, 1, 10)) == [
        ("daily", d(2025, 12, 20), d(2025, 12, 31)),
        ("daily", d(2026, 1, 1), d(2026, 1, 10)),
    ]
    assert _pieces(None, d(2026, 1, 10)) == [
        ("monthly", None, d(2025, 12, 31)),
        ("daily", d(2026, 1, 1), d(2026, 1, 10)),
    ]
    assert _pieces(d(2026, 1, 10), None) == [
        ("daily", d(2026, 1, 10), d(2026, 1, 31)),
        ("monthly", d(2026, 2, 1), None),
    ]
    assert _pieces(d(2026, 1, 2), d(2026, 1, 1)) == []
