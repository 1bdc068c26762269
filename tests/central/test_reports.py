"""Reports over a known chain history, checked to the cent (figures in reports_history)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db import create_engine, create_sessionmaker
from central.errors import NotFoundError, ValidationFailed
from central.ingest.registry import _REGISTRY, register_batch_handler
from central.ingest.worker import IngestWorker
from central.models import (
    Category,
    Product,
    SalesBranchDaily,
    SalesCashierDaily,
    SalesProductDaily,
    SummaryBacklog,
)
from central.reports import service
from central.reports.backlog import apply_summary_backlog
from central.reports.rebuild import rebuild_summaries
from central.services.branches import add_branch
from protocol.events import CustomerReturnRecorded, ReceiptRecorded
from protocol.masterdata import bucket_of
from tests.central.reports_history import build_history
from tests.central.summaries import summary_rows

D2, D3 = date(2026, 11, 2), date(2026, 11, 3)


async def _catalog(session: AsyncSession) -> None:
    session.add_all(
        [Category(code="DAIRY", name="Dairy"), Category(code="FRUIT", name="Fruit")]
        + [
            Product(sku=sku, name=sku, category_code=cat, vat_rate_bp=vat, bucket=bucket_of(sku))
            for sku, cat, vat in (("A", "DAIRY", 2000), ("B", "DAIRY", 1000), ("W", "FRUIT", 1000))
        ]
    )


@pytest.fixture
async def chain(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The history ingested in batches of 4 (so summaries are updated incrementally)."""
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="B1", name="Harbour", timezone="Europe/Berlin")
        await add_branch(session, code="B2", name="Station")
        await _catalog(session)
    worker = IngestWorker(sessionmaker)
    history = build_history()
    for batch in history.batches(4):
        stats = await worker.process(batch)
        assert stats.dead_letters == 0
    try:
        yield sessionmaker
    finally:
        await engine.dispose()


async def _sales_by_branch_with_previous_period(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    async with chain() as s:
        report = await service.sales_report(s, date_from=D2, date_to=D3)
    assert (report.previous_from, report.previous_to) == (date(2026, 10, 31), date(2026, 11, 1))
    rows = {r.branch: r for r in report.rows}
    b1 = rows["B1"].figures
    assert (b1.receipts, b1.revenue, b1.vat, b1.discounts, b1.qty_milli) == (3, 3065, 335, 60, 7754)
    assert (b1.returns, b1.returns_amount, b1.returns_vat, b1.net_sales) == (1, 450, 41, 2615)
    assert b1.avg_basket == 1022  # 30.65 / 3 = 10.2166.. -> 10.22
    assert b1.net_of_vat == 2730
    prev = rows["B1"].previous
    assert prev is not None
    assert (prev.receipts, prev.revenue, prev.vat) == (1, 398, 66)
    b2 = rows["B2"].figures
    assert (b2.receipts, b2.revenue, b2.vat) == (1, 249, 42)  # 0.415 rounds half-up
    assert rows["B2"].previous is None
    t = report.totals
    assert (t.receipts, t.revenue, t.vat, t.returns_amount, t.net_sales, t.avg_basket) == (
        4,
        3314,
        377,
        450,
        2864,
        829,
    )
    assert report.previous_totals is not None
    assert report.previous_totals.revenue == 398


async def _sales_by_day_hour_cashier_payment_product_category(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    async with chain() as s:
        by_day = await service.sales_report(
            s, date_from=D2, date_to=D3, branch="B1", group_by="day"
        )
        by_hour = await service.sales_report(
            s, date_from=D2, date_to=D3, branch="B1", group_by="day,hour"
        )
        by_cashier = await service.sales_report(
            s, date_from=D2, date_to=D3, branch="B1", group_by="cashier", compare=False
        )
        by_payment = await service.sales_report(
            s, date_from=D2, date_to=D3, branch="B1", group_by="payment_type"
        )
        by_product = await service.sales_report(
            s, date_from=D2, date_to=D3, branch="B1", group_by="product"
        )
        by_category = await service.sales_report(s, date_from=D2, date_to=D3, group_by="category")
    # r3 at 23:30 local is the 2nd; r4 at 00:30 local already the 3rd.
    assert [(r.local_date, r.figures.receipts, r.figures.revenue) for r in by_day.rows] == [
        (D2, 2, 2866),
        (D3, 1, 199),
    ]
    # Day-grouped rows compare with the same day of the previous period (2 days back).
    assert by_day.rows[0].previous is None
    assert [
        (r.local_date, r.hour, r.figures.receipts, r.figures.revenue, r.figures.returns_amount)
        for r in by_hour.rows
    ] == [
        (D2, 9, 1, 1966, 0),
        (D2, 23, 1, 900, 0),
        (D3, 0, 1, 199, 0),
        # Nothing sold at 10 on the 3rd, but the same hour two days earlier did: a row
        # of zeros beside the previous period's figures.
        (D3, 10, 0, 0, 0),
        (D3, 11, 0, 0, 450),
    ]
    quiet = by_hour.rows[3]
    assert quiet.previous is not None
    assert (quiet.previous.receipts, quiet.previous.revenue) == (1, 398)
    cashiers = {r.cashier: r.figures for r in by_cashier.rows}
    assert (cashiers["ann"].receipts, cashiers["ann"].revenue, cashiers["ann"].returns) == (
        1,
        1966,
        1,
    )
    assert (cashiers["bob"].receipts, cashiers["bob"].revenue) == (2, 1099)
    payments = {r.payment_type: r.figures for r in by_payment.rows}
    # Cash is net of change: 10.00 - 1.00 + 1.99.
    assert (payments["cash"].receipts, payments["cash"].revenue) == (2, 1099)
    assert (payments["cash"].returns, payments["cash"].returns_amount) == (1, 450)
    assert (payments["credit_card"].receipts, payments["credit_card"].revenue) == (1, 1966)
    assert sum(f.revenue for f in payments.values()) == by_payment.totals.revenue
    products = {r.sku: r.figures for r in by_product.rows}
    assert (products["A"].receipts, products["A"].qty_milli, products["A"].revenue) == (
        2,
        4000,
        736,
    )
    assert (products["A"].vat, products["A"].discounts) == (123, 60)
    assert (products["B"].revenue, products["B"].vat, products["B"].returns_amount) == (
        1350,
        123,
        450,
    )
    assert (products["W"].qty_milli, products["W"].revenue, products["W"].vat) == (754, 979, 89)
    categories = {r.category: r.figures for r in by_category.rows}
    # Chain-wide: B2 sold one A too.
    assert categories["DAIRY"].revenue == 736 + 249 + 1350
    assert categories["FRUIT"].revenue == 979
    assert categories["DAIRY"].receipts is None  # not additive over products


async def _stock_movement_identity_and_stock_on_hand(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    async with chain() as s:
        movement = await service.stock_movement(s, date_from=D2, date_to=D3, branch="B1")
        on_hand = await service.stock_on_hand(s, branch="B1")
        chain_on_hand = await service.stock_on_hand(s, group_by="branch")
        by_branch = await service.stock_movement(s, date_from=D2, date_to=D3)
        # An early start sums the movements before it; a late one takes today's balance
        # minus the movements since: both give the same stock.
        early = await service.stock_movement(
            s, date_from=date(2026, 10, 31), date_to=D3, branch="B1"
        )
    assert {r.sku: (r.closing_milli, r.closing_value) for r in early.rows} == {
        r.sku: (r.closing_milli, r.closing_value) for r in movement.rows
    }
    assert {r.sku: r.opening_milli for r in early.rows} == {"A": 10000, "B": 5000, "W": 2000}
    rows = {r.sku: r for r in movement.rows}
    a = rows["A"]
    assert (a.opening_milli, a.sales_milli, a.write_offs_milli, a.transfers_out_milli) == (
        8000,
        4000,
        1000,
        2000,
    )
    assert (a.closing_milli, a.opening_value, a.sales_value, a.closing_value) == (
        1000,
        960,
        480,
        120,
    )
    b = rows["B"]
    assert (b.opening_milli, b.sales_milli, b.customer_returns_milli) == (5000, 3000, 1000)
    assert (b.stocktake_difference_milli, b.supplier_returns_milli, b.closing_milli) == (
        -1000,
        1000,
        1000,
    )
    assert (b.sales_value, b.customer_returns_value, b.stocktake_difference_value) == (
        900,
        300,
        -300,
    )
    assert b.closing_value == 300
    w = rows["W"]
    assert (w.opening_milli, w.sales_milli, w.closing_milli, w.closing_value) == (
        2000,
        754,
        1246,
        561,
    )
    for row in [*movement.rows, *by_branch.rows, movement.totals]:
        for unit in ("milli", "value"):
            ins = sum(
                getattr(row, f"{n}_{unit}")
                for n in ("goods_received", "transfers_in", "customer_returns")
            )
            outs = sum(
                getattr(row, f"{n}_{unit}")
                for n in ("transfers_out", "sales", "supplier_returns", "write_offs")
            )
            adjust = sum(
                getattr(row, f"{n}_{unit}")
                for n in ("stocktake_difference", "cost_corrections", "other")
            )
            opening = getattr(row, f"opening_{unit}")
            assert opening + ins - outs + adjust == getattr(row, f"closing_{unit}")
    branches = {r.branch: r for r in by_branch.rows}
    assert branches["B2"].transfers_in_milli == 2000
    assert branches["B2"].transfers_in_value == 240  # at the sender's average cost
    # Closing of the movement report = stock on hand today.
    hand = {r.sku: r for r in on_hand.rows}
    assert {k: (v.qty_milli, v.value_at_cost) for k, v in hand.items()} == {
        "A": (1000, 120),
        "B": (1000, 300),
        "W": (1246, 561),
    }
    # At retail: the last selling price; W 1.246 kg x 12.99 = 16.18554 -> 16.19.
    assert {k: v.value_at_retail for k, v in hand.items()} == {"A": 199, "B": 450, "W": 1619}
    assert {v.retail_price_source for v in hand.values()} == {"last_sale"}
    assert (on_hand.totals.value_at_cost, on_hand.totals.value_at_retail) == (981, 2268)
    per_branch = {r.branch: r for r in chain_on_hand.rows}
    assert (per_branch["B2"].qty_milli, per_branch["B2"].value_at_cost) == (1000, 120)
    assert per_branch["B2"].value_at_retail == 249


async def _margin_abc_write_offs_shrinkage(chain: async_sessionmaker[AsyncSession]) -> None:
    async with chain() as s:
        by_branch = await service.gross_margin(s, date_from=D2, date_to=D3)
        by_product = await service.gross_margin(
            s, date_from=D2, date_to=D3, branch="B1", group_by="product"
        )
        by_category = await service.gross_margin(
            s, date_from=D2, date_to=D3, branch="B1", group_by="category"
        )
        abc = await service.abc_analysis(
            s, date_from=D2, date_to=D3, branch="B1", a_pct=50, b_pct=80
        )
        abc_margin = await service.abc_analysis(s, date_from=D2, date_to=D3, measure="margin")
        offs = await service.write_offs(s, date_from=D2, date_to=D3)
        shrink = await service.shrinkage(s, date_from=D2, date_to=D3, branch="B1")
    branches = {r.branch: r.figures for r in by_branch.rows}
    b1 = branches["B1"]
    assert (b1.net_sales, b1.cost_of_goods_sold, b1.margin, b1.margin_pct) == (
        2321,
        1419,
        902,
        "38.86",
    )
    assert (branches["B2"].net_sales, branches["B2"].cost_of_goods_sold) == (207, 120)
    assert by_branch.totals.margin == 902 + 87
    products = {r.sku: r.figures for r in by_product.rows}
    assert {k: (v.net_sales, v.cost_of_goods_sold, v.margin) for k, v in products.items()} == {
        "A": (613, 480, 133),
        "B": (818, 600, 218),
        "W": (890, 339, 551),
    }
    categories = {r.category: r.figures.margin for r in by_category.rows}
    assert categories == {"DAIRY": 351, "FRUIT": 551}
    assert [(r.sku, r.value, r.share_pct, r.cumulative_pct, r.abc_class) for r in abc.rows] == [
        ("W", 979, "37.44", "37.44", "A"),
        ("B", 900, "34.42", "71.85", "A"),
        ("A", 736, "28.15", "100.00", "B"),
    ]
    assert abc.total == 2615
    # Chain-wide margin: A 133 + 87 (B2) = 220, B 218, W 551.
    assert [(r.sku, r.value) for r in abc_margin.rows] == [("W", 551), ("A", 220), ("B", 218)]
    assert [(r.reason, r.qty_milli, r.value) for r in offs.rows] == [("damaged", 1000, 120)]
    assert [(r.branch, r.loss_milli, r.loss_value, r.net_value) for r in shrink.rows] == [
        ("B1", 1000, 300, -300)
    ]


async def _shift_and_z_reconciliation_lists_every_difference(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    async with chain() as s:
        report = await service.shift_reconciliation(s, date_from=D2, date_to=D3, branch="B1")
        only = await service.shift_reconciliation(
            s, date_from=D2, date_to=D3, branch="B1", only_differences=True
        )
    rows = {r.shift_id: r for r in report.rows}
    assert set(rows) == {"S2", "S3", "S4"}
    assert rows["S2"].differences == []
    assert (rows["S2"].z_turnover, rows["S2"].recorded_sales) == (1966, 1966)
    s3 = rows["S3"]
    assert (s3.recorded_receipts, s3.recorded_sales, s3.z_report_number) == (2, 1099, 8)
    assert [(d.field, d.source, d.recorded, d.reported, d.difference) for d in s3.differences] == [
        ("receipts", "fiscal_printer", 2, 1, -1),
        ("sales", "fiscal_printer", 1099, 1000, -99),
        ("payment:cash", "agent", 1099, 1000, -99),
    ]
    assert rows["S4"].closed is False
    assert rows["S4"].recorded_returns_total == 450
    assert (report.shifts, report.shifts_with_differences) == (3, 1)
    assert [r.shift_id for r in only.rows] == ["S3"]


async def _loss_prevention_flags_unusual_cashiers(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    async with chain() as s:
        report = await service.loss_prevention(
            s, date_from=D2, date_to=D3, branch="B1", factor=2, min_count=1
        )
        strict = await service.loss_prevention(
            s, date_from=D2, date_to=D3, branch="B1", factor=2, min_count=2
        )
    rows = {r.cashier: r for r in report.rows}
    ann = rows["ann"]
    assert (ann.receipts, ann.voided_lines, ann.returns, ann.manual_discount_lines) == (1, 1, 1, 1)
    assert (ann.manual_discount_amount, ann.voided_lines_rate) == (60, "100.00")
    assert ann.flags == ["voided_lines", "returns", "manual_discounts"]
    assert rows["bob"].flags == []
    assert report.median_voided_lines_rate == "50.00"
    assert all(r.flags == [] for r in strict.rows)


async def _sync_health_per_branch(chain: async_sessionmaker[AsyncSession]) -> None:
    async with chain() as s:
        report = await service.sync_health(s)
    rows = {r.branch: r for r in report.rows}
    assert (rows["B1"].contiguous_seq, rows["B1"].max_seq, rows["B1"].open_dead_letters) == (
        12,
        12,
        0,
    )
    assert rows["B2"].contiguous_seq == 2
    assert rows["B1"].last_event_at is not None
    assert rows["B1"].heartbeat_at is None  # no heartbeat received yet


async def _backlog(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(SummaryBacklog)) or 0)


async def test_rebuild_takes_the_backlog(
    db_url: str, chain: async_sessionmaker[AsyncSession]
) -> None:
    """A rebuild while rows wait in the backlog: they are the summaries of raw records
    the rebuild reads, so it empties the backlog and nothing is counted twice."""
    engine = chain.kw["bind"]
    assert (await _backlog(chain) > 0) == (engine.dialect.name == "postgresql")
    async with chain() as session, session.begin():
        await rebuild_summaries(session)
    assert await _backlog(chain) == 0
    rebuilt = await summary_rows(chain)
    assert rebuilt["rpt_sales_product_daily"]
    assert await apply_summary_backlog(engine) == 0
    assert await summary_rows(chain) == rebuilt


async def test_rebuild_equals_incremental(
    db_url: str, chain: async_sessionmaker[AsyncSession]
) -> None:
    engine = chain.kw["bind"]
    postgres = engine.dialect.name == "postgresql"
    # PostgreSQL leaves the per-product rows in the backlog; SQLite writes them at once.
    assert (await _backlog(chain) > 0) == postgres
    assert (await apply_summary_backlog(engine) > 0) == postgres
    assert await _backlog(chain) == 0
    incremental = await summary_rows(chain)
    assert incremental["rpt_sales_branch_daily"]
    assert incremental["rpt_sales_product_daily"]
    async with chain() as session, session.begin():
        counts = await rebuild_summaries(session)
    assert counts["rpt_sales_branch_daily"] == len(incremental["rpt_sales_branch_daily"])
    for name, rows in (await summary_rows(chain)).items():
        assert rows == incremental[name], name
    # Damaged summaries are repaired by the command line.
    async with chain() as session, session.begin():
        await session.execute(delete(SalesProductDaily))
        await session.execute(update(SalesBranchDaily).values(revenue=0))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "central",
        "reports",
        "rebuild",
        env={**os.environ, "BACKROOM_DATABASE_URL": db_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert json.loads(out)["rebuilt"]["rpt_sales_product_daily"] == len(
        incremental["rpt_sales_product_daily"]
    )
    for name, rows in (await summary_rows(chain)).items():
        assert rows == incremental[name], name


async def test_redelivery_and_a_crash_before_commit_count_once(db_url: str) -> None:
    """A batch that fails after the projection ran (a later handler, the database) is
    rolled back with its summary rows; its redelivery, and duplicates, count once."""
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="B1", name="B1")
        await add_branch(session, code="B2", name="B2")
    crashes = {"left": 1}

    @register_batch_handler(ReceiptRecorded, CustomerReturnRecorded, stage=1000)
    async def crash_once(session: Any, batch: Any, contexts: Any) -> None:
        if crashes["left"]:
            crashes["left"] -= 1
            raise ConnectionError("database connection lost")

    worker = IngestWorker(sessionmaker)
    history = build_history()
    messages = history.messages()
    try:
        with pytest.raises(ConnectionError):
            await worker.process(messages[:6])
        await worker.process(messages[:6])
        await worker.process(messages)  # the first six again, then the rest
        await worker.process(messages[3:9])
        async with sessionmaker() as s:
            report = await service.sales_report(s, date_from=D2, date_to=D3, compare=False)
        totals = report.totals
        assert (totals.receipts, totals.revenue, totals.vat, totals.returns_amount) == (
            4,
            3314,
            377,
            450,
        )
    finally:
        _REGISTRY[:] = [r for r in _REGISTRY if r.handler is not crash_once]
        await engine.dispose()


async def _bad_parameters_name_the_field(chain: async_sessionmaker[AsyncSession]) -> None:
    async with chain() as s:
        with pytest.raises(NotFoundError) as unknown:
            await service.sales_report(s, date_from=D2, date_to=D3, branch="NOPE")
        assert unknown.value.field == "branch"
        with pytest.raises(ValidationFailed) as reversed_dates:
            await service.sales_report(s, date_from=D3, date_to=D2)
        assert reversed_dates.value.field == "date_from"
        with pytest.raises(ValidationFailed) as too_long:
            await service.stock_movement(s, date_from=date(2025, 1, 1), date_to=D3)
        assert too_long.value.field == "date_to"
        with pytest.raises(ValidationFailed) as grouping:
            await service.sales_report(s, date_from=D2, date_to=D3, group_by="branch,weather")
        assert grouping.value.field == "group_by"
        with pytest.raises(ValidationFailed) as two_details:
            await service.sales_report(s, date_from=D2, date_to=D3, group_by="hour,cashier")
        assert two_details.value.field == "group_by"
        with pytest.raises(ValidationFailed) as measure:
            await service.abc_analysis(s, date_from=D2, date_to=D3, measure="weight")
        assert measure.value.field == "measure"


async def test_every_report_over_a_known_history(chain: async_sessionmaker[AsyncSession]) -> None:
    """One chain history (ingesting it is the slow part), every report checked on it."""
    await _sales_by_branch_with_previous_period(chain)
    await _sales_by_day_hour_cashier_payment_product_category(chain)
    await _stock_movement_identity_and_stock_on_hand(chain)
    await _margin_abc_write_offs_shrinkage(chain)
    await _shift_and_z_reconciliation_lists_every_difference(chain)
    await _loss_prevention_flags_unusual_cashiers(chain)
    await _sync_health_per_branch(chain)
    await _bad_parameters_name_the_field(chain)


async def test_concurrent_workers_add_up_exactly(db_url: str) -> None:
    """Two ingest workers at once, batches touching the same summary rows (same branch,
    day, hour, cashier, products): every sale counted once, the rebuild agrees."""
    from protocol import Payment
    from tests.central.reports_history import History, line, sale

    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="B1", name="B1")
    history = History()
    for n in range(1, 41):
        price = 100 + n
        history.add(
            "B1",
            f"2026-11-02T10:{n:02d}:00",
            sale(
                f"r{n}",
                "S1",
                "ann",
                (line(1, "A", 1000, price, price, 2000), line(2, "B", 2000, 50, 100, 1000)),
                (Payment(type="cash", amount=price + 100),),
            ),
        )
    messages = history.messages()
    workers = [IngestWorker(sessionmaker), IngestWorker(sessionmaker)]
    try:
        for start in range(0, 40, 10):
            await asyncio.gather(
                workers[0].process(messages[start : start + 5]),
                workers[1].process(messages[start + 5 : start + 10]),
            )
        async with sessionmaker() as s:
            report = await service.sales_report(
                s, date_from=D2, date_to=D2, group_by="product", branch="B1", compare=False
            )
        products = {r.sku: r.figures for r in report.rows}
        assert (products["A"].receipts, products["A"].revenue) == (40, sum(range(101, 141)))
        assert (products["B"].receipts, products["B"].qty_milli, products["B"].revenue) == (
            40,
            80000,
            4000,
        )
        assert report.totals.receipts == 40
        incremental = await summary_rows(sessionmaker)
        async with sessionmaker() as session, session.begin():
            await rebuild_summaries(session)
        assert await summary_rows(sessionmaker) == incremental
    finally:
        await engine.dispose()


async def _loss_prevention_rows(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> tuple[Any, list[Any]]:
    async with sessionmaker() as s:
        report = await service.loss_prevention(
            s, date_from=date(2026, 11, 1), date_to=D3, factor=2, min_count=1
        )
        cashier_rows = sorted(
            tuple(r) for r in (await s.execute(select(SalesCashierDaily.__table__))).all()
        )
    return report, cashier_rows


def _loss_history() -> Any:
    """Four cashiers over two days: voids, manual discounts, promotions, returns."""
    from protocol import Payment, ReceiptLine
    from tests.central.reports_history import History, sale

    h = History()
    n = 0
    # cashier: [(voided lines, manual discounts (amount per line), promoted lines)]
    plan: dict[str, list[tuple[int, list[int], int]]] = {
        "ann": [(0, [], 1), (1, [], 0), (0, [], 0)],
        "bob": [(2, [40], 0), (3, [25, 15], 1), (0, [], 0)],
        "cy": [(0, [], 0), (0, [10], 2)],
        "dee": [(1, [], 0)],
    }
    for cashier, receipts in plan.items():
        for k, (voided, manual, promoted) in enumerate(receipts):
            n += 1
            lines = []
            for no, discount in enumerate(manual, start=1):
                lines.append(
                    ReceiptLine(
                        line_no=no,
                        sku="A",
                        quantity_milli=1000,
                        unit_price=300,
                        discount=discount,
                        manual_discount=True,
                        vat_rate_bp=2000,
                        line_total=300 - discount,
                    )
                )
            for p in range(promoted):
                lines.append(
                    ReceiptLine(
                        line_no=len(lines) + 1,
                        sku="B",
                        quantity_milli=2000,
                        unit_price=100,
                        discount=50,
                        promotion_id=f"PROMO{p}",
                        vat_rate_bp=1000,
                        line_total=150,
                    )
                )
            lines.append(
                ReceiptLine(
                    line_no=len(lines) + 1,
                    sku="W",
                    quantity_milli=500,
                    unit_price=1000,
                    vat_rate_bp=1000,
                    line_total=500,
                )
            )
            total = sum(x.line_total for x in lines)
            h.add(
                "B1",
                f"2026-11-0{2 + k % 2}T1{k}:0{n % 10}:00",
                sale(
                    f"r{n}",
                    f"S{cashier}",
                    cashier,
                    tuple(lines),
                    (Payment(type="cash", amount=total),),
                    voided=voided,
                ),
            )
    h.add(
        "B1",
        "2026-11-03T15:00:00",
        CustomerReturnRecorded(
            till="T1",
            shift_id="Sdee",
            return_number=1,
            return_id="cr1",
            original_sale_id="r9",
            cashier="dee",
            lines=(
                ReceiptLine(
                    line_no=1,
                    sku="W",
                    quantity_milli=500,
                    unit_price=1000,
                    vat_rate_bp=1000,
                    line_total=500,
                ),
            ),
            refunds=(Payment(type="cash", amount=500),),
            total=500,
        ),
    )
    return h


async def test_rebuild_recomputes_loss_prevention_from_raw_rows(db_url: str) -> None:
    """Voided lines, manual discounts and promotions are stored on the raw rows; a rebuild
    of the cashier summary from scratch gives exactly the report ingestion produced."""
    from central.models import Receipt, ReceiptLineRow

    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        async with sessionmaker() as session, session.begin():
            await add_branch(session, code="B1", name="Harbour", timezone="Europe/Berlin")
        worker = IngestWorker(sessionmaker)
        for batch in _loss_history().batches(3):
            assert (await worker.process(batch)).dead_letters == 0
        ingested, ingested_rows = await _loss_prevention_rows(sessionmaker)
        rows = {r.cashier: r for r in ingested.rows}
        assert {
            c: (r.receipts, r.voided_lines, r.manual_discount_lines, r.manual_discount_amount)
            for c, r in rows.items()
        } == {"ann": (3, 1, 0, 0), "bob": (3, 5, 3, 80), "cy": (2, 0, 1, 10), "dee": (1, 1, 0, 0)}
        assert rows["dee"].returns == 1
        assert rows["bob"].flags == ["voided_lines", "manual_discounts"]
        async with sessionmaker() as s:
            stored = (
                await s.execute(select(Receipt.sale_id, Receipt.voided_lines).order_by(Receipt.id))
            ).all()
            flagged = (
                await s.execute(
                    select(
                        ReceiptLineRow.manual_discount, ReceiptLineRow.promotion_id, func.count()
                    )
                    .group_by(ReceiptLineRow.manual_discount, ReceiptLineRow.promotion_id)
                    .order_by(ReceiptLineRow.manual_discount, ReceiptLineRow.promotion_id)
                )
            ).all()
        assert [v for _, v in stored] == [0, 1, 0, 2, 3, 0, 0, 0, 1]
        assert sorted(((bool(m), p or "", int(c)) for m, p, c in flagged)) == [
            (False, "", 9),
            (False, "PROMO0", 3),
            (False, "PROMO1", 1),
            (True, "", 4),
        ]
        # The cashier summary lost entirely, then rebuilt from the raw rows alone.
        async with sessionmaker() as session, session.begin():
            await session.execute(delete(SalesCashierDaily))
        async with sessionmaker() as session, session.begin():
            await rebuild_summaries(session)
        rebuilt, rebuilt_rows = await _loss_prevention_rows(sessionmaker)
        assert rebuilt == ingested
        assert rebuilt_rows == ingested_rows
        # A receipt stored before central kept these fields (NULL, as migration 1102
        # leaves older rows): its cashier-day keeps what ingestion counted; every other
        # cashier-day is recomputed (a damaged counter is repaired).
        async with sessionmaker() as session, session.begin():
            await session.execute(
                update(Receipt).where(Receipt.sale_id == "r4").values(voided_lines=None)
            )
            await session.execute(
                update(ReceiptLineRow)
                .where(
                    ReceiptLineRow.receipt_id.in_(select(Receipt.id).where(Receipt.sale_id == "r4"))
                )
                .values(manual_discount=None)
            )
            await session.execute(
                update(SalesCashierDaily)
                .where(SalesCashierDaily.cashier == "cy")
                .values(voided_lines=7, manual_discount_lines=9)
            )
            await rebuild_summaries(session)
        kept, kept_rows = await _loss_prevention_rows(sessionmaker)
        assert kept == ingested
        assert kept_rows == ingested_rows
    finally:
        await engine.dispose()


async def test_stock_on_hand_at_head_office_prices(chain: async_sessionmaker[AsyncSession]) -> None:
    """Retail value at head office's price in force for each branch (branch > zone >
    chain, scheduled and local-time entries, withdrawn overrides), else the last
    selling price; every row says which."""
    from datetime import UTC, datetime, timedelta

    from central.models import PriceEntryRow
    from central.services.branches import BranchPatch, update_branch
    from central.services.pricing import (
        PriceChangeIn,
        PriceZoneIn,
        create_price_zone,
        set_price,
        withdraw_override,
    )
    from protocol.pricing import local_to_utc

    now = datetime.now(UTC)
    day = (now + timedelta(days=2)).date().isoformat()
    wall_clock = f"{day}T00:30:00"
    async with chain() as s:
        await create_price_zone(s, PriceZoneIn(code="Z1", name="North", timezone="Europe/Berlin"))
        # Through the service: it keeps the branch's scope history (prices of a moment
        # are resolved with the zone the branch had then).
        await update_branch(s, "B1", BranchPatch(price_zone="Z1"))
        await s.commit()
        for change in (
            PriceChangeIn(sku="A", price=229),
            # Half past midnight on each branch's own clock: Berlin's comes first.
            PriceChangeIn(sku="A", price=239, effective_local=wall_clock),
            PriceChangeIn(sku="A", price=249, scope="branch", scope_id="B2"),
            PriceChangeIn(sku="B", price=499, effective_at=now + timedelta(days=30)),
            PriceChangeIn(sku="W", price=1499),
            PriceChangeIn(sku="W", price=1349, scope="zone", scope_id="Z1"),
            PriceChangeIn(sku="W", price=1249, scope="branch", scope_id="B1"),
        ):
            await set_price(s, change)
        await withdraw_override(s, scope="branch", scope_id="B1", sku="W")
        # Older chain prices (history is kept): superseded by the later entries.
        for sku, price in (("A", 199), ("W", 999)):
            s.add(
                PriceEntryRow(
                    scope="all",
                    scope_id="",
                    sku=sku,
                    bucket=bucket_of(sku),
                    price=price,
                    effective_at=now - timedelta(days=10),
                    version=1,
                )
            )
        await s.commit()
    utc_moment = local_to_utc(datetime.fromisoformat(wall_clock), "UTC")
    at = utc_moment - timedelta(minutes=1)
    assert local_to_utc(datetime.fromisoformat(wall_clock), "Europe/Berlin") < at
    async with chain() as s:
        later = await service.stock_on_hand(s, at=at)
        today = await service.stock_on_hand(s, branch="B1")
        by_branch = await service.stock_on_hand(s, group_by="branch", at=at)
        by_product = await service.stock_on_hand(s, group_by="product", at=at)
        one_branch = await service.stock_on_hand(s, branch="B1", group_by="product")
    rows = {(r.branch, r.sku): r for r in later.rows}
    assert {
        k: (r.qty_milli, r.unit_price, r.value_at_retail, r.retail_price_source)
        for k, r in rows.items()
    } == {
        # The chain's local-time price is in force in Berlin, not yet in UTC.
        ("B1", "A"): (1000, 239, 239, "head_office"),
        # Head office's price for B starts next month: the last selling price.
        ("B1", "B"): (1000, 450, 450, "last_sale"),
        # The branch override was withdrawn: the zone's price beats the chain's.
        # 1.246 kg x 13.49 = 16.80854 -> 16.81.
        ("B1", "W"): (1246, 1349, 1681, "head_office"),
        # B2's own override beats the chain.
        ("B2", "A"): (1000, 249, 249, "head_office"),
    }
    assert later.totals.value_at_retail == 239 + 450 + 1681 + 249
    assert later.totals.value_at_cost == 981 + 120  # at cost nothing changes
    assert {r.sku: (r.unit_price, r.value_at_retail) for r in today.rows} == {
        "A": (229, 229),  # before half past midnight in Berlin: the chain's price
        "B": (450, 450),
        "W": (1349, 1681),
    }
    assert {r.branch: (r.value_at_retail, r.retail_price_source) for r in by_branch.rows} == {
        "B1": (2370, "mixed"),
        "B2": (249, "head_office"),
    }
    assert {r.sku: (r.value_at_retail, r.retail_price_source) for r in by_product.rows} == {
        "A": (488, "head_office"),
        "B": (450, "last_sale"),
        "W": (1681, "head_office"),
    }
    # A row holding one balance has its unit price whatever the grouping (one branch's
    # products: the prices of the rows by branch and product); a sum of several has none.
    assert [(r.sku, r.unit_price) for r in one_branch.rows] == [
        (r.sku, r.unit_price) for r in today.rows
    ]
    assert {r.branch: r.unit_price for r in by_branch.rows} == {"B1": None, "B2": 249}
    assert {r.sku: r.unit_price for r in by_product.rows} == {"A": None, "B": 450, "W": 1349}
