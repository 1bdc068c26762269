"""Report outputs checked to the cent: the sales groupings with their previous period,
sync health, shift and Z reconciliation with returns, write-offs and shrinkage per
product, the CSV downloads, and bad parameters of the stock and shift reports.

The known history of ``reports_history`` (2026-11-02..03, figures worked out there)
is extended here, on later days so those figures stay as they are, by:

B1 (UTC+1), stock after 11-03: A 1 @ 1.20, B 1 @ 3.00, W 1.246 kg worth 5.61.
  11-05 G2 goods in: A 4 @ 1.50 (A 5 worth 7.20), B 2 @ 3.30 (B 3 worth 9.60).
  11-05 WO2 written off "expired": A 1 (7.20 x 1/5 = 1.44), B 0.5 (9.60 x 0.5/3 = 1.60).
  11-05 r6 (S5, ann, T1): A x2 @ 1.99 = 3.98 (VAT 0.66), B x1 4.50 (VAT 0.41): 8.48,
        cash 10.00, change 1.52. Cost A 5.76 x 2/4 = 2.88, B 8.00 x 1/2.5 = 3.20.
  11-05 r7 (S5, ann, T1): W 0.4 kg @ 12.99 = 5.20 (VAT 0.47), credit card. Cost 1.80.
  11-05 cr2 (S5, ann): B x1 back, 4.50 (VAT 0.41), refunded cash; in at average 3.20.
  11-05 S5 closed: the till says 3 receipts, 13.68 sales, no returns, card 5.00; the
        Z says 2 receipts, turnover 13.68, storno 4.00; cash expected 3.98 (8.48 less the
        4.50 refunded), counted 3.90: 0.08 short.
  11-06 ST2 stocktake: A +0.5 (gain at average 1.44: 0.72), W -0.246 (3.81 x 246/846
        = 1.1079 -> 1.11), B -0.5 (8.00 x 0.5/2.5 = 1.60).
B2 (UTC): A 1 @ 1.20 after 11-03.
  11-05 WO3 written off "Damaged " (typed otherwise: the same reason): A 1 (all of
        it: 1.20).
  11-06 ST3 stocktake: A +1 (gain at the last average 1.20).
Then a heartbeat of B1 and three undecodable messages (two on B1's subject).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.ingest.worker import IngestWorker, MessageIn
from central.models import BranchStatus
from central.reports import service
from central.reports.schemas import SalesFigures
from central.services.branches import add_branch
from central.services.masterdata_publisher import current_version, marked_version
from protocol import HEARTBEAT_KIND, BranchHeartbeat, Payment, encode, up_subject
from protocol.events import (
    CustomerReturnRecorded,
    ShiftClosed,
    StockDocumentLine,
    ZReportTotals,
)
from tests.central.reports_history import History, at, build_history, doc, line, sale
from tests.central.test_reports import _catalog

D2, D3, D4, D5, D6 = (date(2026, 11, day) for day in (2, 3, 4, 5, 6))
PERIOD = "date_from=2026-11-02&date_to=2026-11-03"
STOCK_PERIOD = "date_from=2026-11-02&date_to=2026-11-06"
HEARTBEAT_SENT = at("2026-11-06T12:00:00")


def moved(sku: str, qty_milli: int, unit_cost: int | None = None) -> StockDocumentLine:
    return StockDocumentLine(sku=sku, quantity_milli=qty_milli, unit_cost=unit_cost)


def counted(sku: str, expected: int, found: int) -> StockDocumentLine:
    return StockDocumentLine(
        sku=sku, quantity_milli=found - expected, expected_milli=expected, counted_milli=found
    )


def extended_history() -> History:
    h = build_history()
    z = ZReportTotals(
        report_number=9,
        turnover_by_vat_group={"A": 398, "B": 970},
        storno_by_vat_group={"B": 400},
        receipts_count=2,
    )
    events: list[tuple[str, str, Any]] = [
        (
            "B1",
            "05T07:00",
            doc("G2", "goods_receipt", (moved("A", 4000, 150), moved("B", 2000, 330))),
        ),
        (
            "B1",
            "05T08:00",
            doc("WO2", "write_off", (moved("A", -1000), moved("B", -500)), reason="expired"),
        ),
        (
            "B1",
            "05T10:00",
            sale(
                "r6",
                "S5",
                "ann",
                (line(1, "A", 2000, 199, 398, 2000), line(2, "B", 1000, 450, 450, 1000)),
                (Payment(type="cash", amount=1000),),
                change=152,
            ),
        ),
        (
            "B1",
            "05T10:30",
            sale(
                "r7",
                "S5",
                "ann",
                (line(1, "W", 400, 1299, 520, 1000),),
                (Payment(type="credit_card", amount=520),),
            ),
        ),
        (
            "B1",
            "05T11:00",
            CustomerReturnRecorded(
                till="T1",
                shift_id="S5",
                return_number=2,
                return_id="cr2",
                original_sale_id="r6",
                cashier="ann",
                lines=(line(1, "B", 1000, 450, 450, 1000),),
                refunds=(Payment(type="cash", amount=450),),
                total=450,
            ),
        ),
        (
            "B1",
            "05T16:00",
            ShiftClosed(
                till="T1",
                shift_id="S5",
                cashier="ann",
                receipts_count=3,
                sales_total=1368,
                returns_total=0,
                payments_by_type={"cash": 848, "credit_card": 500},
                z_report=z,
                counted_cash=390,
                expected_cash=398,
            ),
        ),
        (
            "B1",
            "06T09:00",
            doc(
                "ST2",
                "stocktake",
                (counted("A", 2000, 2500), counted("W", 846, 600), counted("B", 2500, 2000)),
            ),
        ),
        ("B2", "05T10:00", doc("WO3", "write_off", (moved("A", -1000),), reason="Damaged ")),
        ("B2", "06T10:00", doc("ST3", "stocktake", (counted("A", 0, 1000),))),
    ]
    for branch, when, body in events:
        h.add(branch, f"2026-11-{when}:00", body)
    return h


def sync_messages() -> list[MessageIn]:
    heartbeat = BranchHeartbeat(
        branch="B1",
        sent_at=HEARTBEAT_SENT,
        utc_offset_min=60,
        outbox_backlog=5,
        last_acked_seq=19,
        last_recorded_seq=22,
        applied_version=42,
        agent_version="1.4.2",
        # Two events too big for the branch's NATS server, held there.
        outbox_held=(20, 21),
        # The store server's clock a minute and a half behind central's.
        clock_offset_ms=-95_000,
    )
    return [
        MessageIn(subject=up_subject("B1", HEARTBEAT_KIND), data=encode(heartbeat)),
        MessageIn(subject=up_subject("B1", "receipt_recorded"), data=b"\x00not an event"),
        MessageIn(subject=up_subject("B1", "shift_closed"), data=b"\xc1"),
        MessageIn(subject=up_subject("B9", "receipt_recorded"), data=b"\x00unknown branch"),
    ]


async def load(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="B1", name="Harbour", timezone="Europe/Berlin")
        await add_branch(session, code="B2", name="Station")
        await _catalog(session)
    worker = IngestWorker(sessionmaker)
    for batch in extended_history().batches(4):
        assert (await worker.process(batch)).dead_letters == 0
    stats = await worker.process(sync_messages())
    assert (stats.heartbeats, stats.dead_letters) == (1, 3)


def fig(f: SalesFigures | None) -> tuple[Any, ...] | None:
    """(receipts, avg_basket, qty_milli, revenue, vat, net_of_vat, discounts, returns,
    returns_amount, returns_vat, net_sales)"""
    if f is None:
        return None
    return (
        f.receipts,
        f.avg_basket,
        f.qty_milli,
        f.revenue,
        f.vat,
        f.net_of_vat,
        f.discounts,
        f.returns,
        f.returns_amount,
        f.returns_vat,
        f.net_sales,
    )


def sold(receipts: int | None, qty: int | None, revenue: int, vat: int | None, **kw: int) -> Any:
    """The figure tuple of sales (and returns) worked out by hand."""
    discounts = kw.get("discounts", 0 if vat is not None else None)
    returns_amount = kw.get("returns_amount", 0)
    returns_vat = kw.get("returns_vat", 0 if vat is not None else None)
    return (
        receipts,
        None if not receipts else (2 * revenue + receipts) // (2 * receipts),
        qty,
        revenue,
        vat,
        None if vat is None else revenue - vat,
        discounts,
        kw.get("returns", 0),
        returns_amount,
        returns_vat,
        revenue - returns_amount,
    )


# r1 (the previous period, 11-01, B1, ann): A x2 = 3.98, VAT 0.66, cash net 3.98.
R1 = sold(1, 2000, 398, 66)
RETURN_B = {"returns": 1, "returns_amount": 450, "returns_vat": 41}


async def _sales(s: AsyncSession, group_by: str, **kw: Any) -> dict[tuple[Any, ...], Any]:
    report = await service.sales_report(s, date_from=D2, date_to=D3, group_by=group_by, **kw)
    assert (report.previous_from, report.previous_to) == (date(2026, 10, 31), date(2026, 11, 1))
    names = [
        "sku" if g == "product" else "local_date" if g == "day" else g for g in group_by.split(",")
    ]
    return {
        tuple(getattr(r, n) for n in names): (fig(r.figures), fig(r.previous)) for r in report.rows
    }


async def test_sales_by_branch_and_day_and_by_branch_and_product(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    async with chain() as s:
        by_day = await _sales(s, "branch,day")
        by_product = await _sales(s, "branch,product")
        chain_product = await _sales(s, "product")
    assert by_day == {
        # r2 19.66 (VAT 2.20, manual discount 0.60) + r3 9.00 (VAT 0.82): basket 14.33.
        ("B1", D2): (sold(2, 6754, 2866, 302, discounts=60), None),
        # r4 1.99 (VAT 0.33) and cr1 4.50 back; compared with 11-01 (r1).
        ("B1", D3): (sold(1, 1000, 199, 33, **RETURN_B), R1),
        ("B2", D3): (sold(1, 1000, 249, 42), None),
    }
    assert by_day[("B1", D3)][0] == (1, 199, 1000, 199, 33, 166, 0, 1, 450, 41, -251)
    assert by_product == {
        # r2 A x3 5.37 (VAT 0.90, discount 0.60) + r4 A 1.99 (0.33): basket 3.68.
        ("B1", "A"): (sold(2, 4000, 736, 123, discounts=60), R1),
        # r2 B 4.50 (0.41) + r3 B x2 9.00 (0.82); cr1 brings one back.
        ("B1", "B"): (sold(2, 3000, 1350, 123, **RETURN_B), None),
        ("B1", "W"): (sold(1, 754, 979, 89), None),
        ("B2", "A"): (sold(1, 1000, 249, 42), None),
    }
    assert by_product[("B1", "B")][0] == (2, 675, 3000, 1350, 123, 1227, 0, 1, 450, 41, 900)
    # Chain-wide: A in three receipts, 9.85 / 3 = 3.2833 -> 3.28.
    assert chain_product == {
        ("A",): ((3, 328, 5000, 985, 165, 820, 60, 0, 0, 0, 985), R1),
        ("B",): (sold(2, 3000, 1350, 123, **RETURN_B), None),
        ("W",): (sold(1, 754, 979, 89), None),
    }


async def test_sales_by_branch_and_category(chain: async_sessionmaker[AsyncSession]) -> None:
    async with chain() as s:
        rows = await _sales(s, "branch,category")
    # Receipts (and so the basket) are not additive over a category's products.
    assert rows == {
        ("B1", "DAIRY"): (
            (None, None, 7000, 2086, 246, 1840, 60, 1, 450, 41, 1636),
            (None, None, 2000, 398, 66, 332, 0, 0, 0, 0, 398),
        ),
        ("B1", "FRUIT"): ((None, None, 754, 979, 89, 890, 0, 0, 0, 0, 979), None),
        ("B2", "DAIRY"): ((None, None, 1000, 249, 42, 207, 0, 0, 0, 0, 249), None),
    }


async def test_sales_by_day_and_cashier_and_by_day_and_payment_type(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    async with chain() as s:
        cashiers = await _sales(s, "day,cashier")
        payments = await _sales(s, "day,payment_type")
    assert cashiers == {
        (D2, "ann"): (sold(1, 4754, 1966, 220, discounts=60), None),
        (D2, "bob"): (sold(1, 2000, 900, 82), None),
        (D3, "ann"): ((0, None, 0, 0, 0, 0, 0, 1, 450, 41, -450), R1),
        (D3, "bob"): (sold(1, 1000, 199, 33), None),
        (D3, "cy"): (sold(1, 1000, 249, 42), None),
    }
    # Payment figures carry no goods (quantity, VAT, discounts); cash is net of change.
    assert payments == {
        (D2, "cash"): ((1, 900, None, 900, None, None, None, 0, 0, None, 900), None),
        (D2, "credit_card"): ((1, 1966, None, 1966, None, None, None, 0, 0, None, 1966), None),
        (D3, "cash"): (
            (1, 199, None, 199, None, None, None, 1, 450, None, -251),
            (1, 398, None, 398, None, None, None, 0, 0, None, 398),
        ),
        (D3, "debit_card"): ((1, 249, None, 249, None, None, None, 0, 0, None, 249), None),
    }


async def test_sales_comparison_keeps_groups_sold_only_in_the_previous_period(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    """Expected behaviour being fixed: bob sold on 11-02..03 (r3, r4) but not on
    11-04..05; he must still be a row, with zero current figures."""
    async with chain() as s:
        report = await service.sales_report(
            s, date_from=D4, date_to=D5, branch="B1", group_by="cashier"
        )
    rows = {r.cashier: r for r in report.rows}
    # ann: r6 8.48 + r7 5.20, cr2 4.50 back; before: r2 19.66 and cr1 4.50 back.
    assert (fig(rows["ann"].figures), fig(rows["ann"].previous)) == (
        sold(2, 3400, 1368, 154, **RETURN_B),
        sold(1, 4754, 1966, 220, discounts=60, **RETURN_B),
    )
    assert set(rows) == {"ann", "bob"}
    bob = rows["bob"]
    assert (bob.figures.receipts, bob.figures.revenue, bob.figures.returns_amount) == (0, 0, 0)
    assert bob.figures.net_sales == 0
    assert fig(bob.previous) == sold(2, 3000, 1099, 115)  # 10.99 / 2 = 5.495 -> 5.50


async def test_sync_health_every_field(chain: async_sessionmaker[AsyncSession]) -> None:
    async with chain() as s:
        first = {r.branch: r for r in (await service.sync_health(s)).rows}
        received = first["B1"].last_received_at
        assert received is not None
        now = received + timedelta(seconds=90)
        report = await service.sync_health(s, now=now)
        status = await s.get(BranchStatus, "B1")
        assert status is not None
        published = await marked_version(s)
        central = await current_version(s)
    assert report.generated_at == now
    rows = {r.branch: r for r in report.rows}
    b1, b2 = rows["B1"], rows["B2"]
    assert (b1.name, b1.active, b1.last_event_at) == ("Harbour", True, at("2026-11-06T09:00:00"))
    assert (b1.last_received_at, b1.receive_age_s) == (received, 90)
    # 19 events stored in order; the heartbeat says the branch recorded 22: 3 behind.
    assert (b1.contiguous_seq, b1.max_seq, b1.seq_lag) == (19, 19, 3)
    assert (b1.heartbeat_at, b1.outbox_backlog, b1.applied_version) == (HEARTBEAT_SENT, 5, 42)
    assert b1.agent_version == "1.4.2"
    assert b1.heartbeat_age_s == int((now - status.received_at).total_seconds())
    assert 85 <= b1.heartbeat_age_s <= 90  # received with the last batch, just after
    # Two undecodable messages on B1's subject; the one of an unknown branch is nobody's.
    assert b1.open_dead_letters == 2
    assert b1.outbox_held == [20, 21]
    assert (b1.clock_offset_ms, b1.clock_off) == (-95_000, True)
    assert published < 42
    # Applied 42, a version central never gave (its counter is below): a stale or
    # foreign database published into the stream, so not up to date.
    assert central < 42
    assert (b1.published_version, b1.up_to_date) == (published, False)
    assert (b2.published_version, b2.up_to_date) == (published, published == 0)
    assert (b2.name, b2.contiguous_seq, b2.max_seq) == ("Station", 4, 4)
    assert b2.last_event_at == at("2026-11-06T10:00:00")
    # No heartbeat from B2: what only a heartbeat tells is unknown, not zero.
    assert (b2.heartbeat_at, b2.heartbeat_age_s, b2.seq_lag) == (None, None, None)
    assert (b2.outbox_backlog, b2.applied_version, b2.agent_version) == (None, None, None)
    assert b2.open_dead_letters == 0
    assert b2.outbox_held == []
    assert (b2.clock_offset_ms, b2.clock_off) == (None, False)


async def test_closed_shift_with_returns_and_a_differing_z(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    async with chain() as s:
        report = await service.shift_reconciliation(s, date_from=D5, date_to=D5, branch="B1")
        only = await service.shift_reconciliation(
            s, date_from=D2, date_to=D6, branch="B1", only_differences=True
        )
    assert (report.shifts, report.shifts_with_differences) == (1, 1)
    assert (report.counted_shifts, report.cash_difference_total) == (1, -8)
    (s5,) = report.rows
    assert (s5.branch, s5.shift_id, s5.till, s5.cashier) == ("B1", "S5", "T1", "ann")
    assert (s5.local_date, s5.closed) == (D5, True)
    # Recorded: r6 8.48 + r7 5.20 = 13.68 in 2 receipts, cr2 4.50 back.
    assert (s5.recorded_receipts, s5.recorded_sales, s5.recorded_returns_total) == (2, 1368, 450)
    assert (s5.reported_receipts, s5.reported_sales, s5.reported_returns_total) == (3, 1368, 0)
    assert (s5.z_report_number, s5.z_receipts, s5.z_turnover, s5.z_storno) == (9, 2, 1368, 400)
    assert [(d.field, d.source, d.recorded, d.reported, d.difference) for d in s5.differences] == [
        ("receipts", "agent", 2, 3, 1),
        ("returns", "agent", 450, 0, -450),
        ("returns", "fiscal_printer", 450, 400, -50),
        # Cash 10.00 - 1.52 change = 8.48 agrees (the 4.50 refund is apart); card does not.
        ("payment:credit_card", "agent", 520, 500, -20),
    ]
    assert [r.shift_id for r in only.rows] == ["S3", "S5"]


async def test_write_offs_by_product_and_by_branch_and_product(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    async with chain() as s:
        by_product = await service.write_offs(s, date_from=D2, date_to=D6, group_by="product")
        by_branch_product = await service.write_offs(
            s, date_from=D2, date_to=D6, group_by="branch,product"
        )
        by_reason = await service.write_offs(s, date_from=D2, date_to=D6)
        b2 = await service.write_offs(s, date_from=D2, date_to=D6, branch="B2", group_by="product")
    # WO1 B1 A 1 @ 1.20 (damaged); WO2 B1 A 1 @ 1.44, B 0.5 for 1.60 (expired); WO3 B2 A 1.20
    # ("Damaged ": one reason with "damaged", shown in its first spelling).
    assert [(r.sku, r.qty_milli, r.value) for r in by_product.rows] == [
        ("A", 3000, 384),
        ("B", 500, 160),
    ]
    assert [(r.branch, r.sku, r.qty_milli, r.value) for r in by_branch_product.rows] == [
        ("B1", "A", 2000, 264),
        ("B1", "B", 500, 160),
        ("B2", "A", 1000, 120),
    ]
    assert [(r.reason, r.qty_milli, r.value) for r in by_reason.rows] == [
        ("Damaged", 2000, 240),
        ("expired", 1500, 304),
    ]
    for report in (by_product, by_branch_product, by_reason):
        assert (report.totals.qty_milli, report.totals.value) == (3500, 544)
    assert [(r.sku, r.qty_milli, r.value) for r in b2.rows] == [("A", 1000, 120)]


async def test_shrinkage_with_gains_and_losses_by_product(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    async with chain() as s:
        by_product = await service.shrinkage(s, date_from=D2, date_to=D6, group_by="product")
        by_branch_product = await service.shrinkage(
            s, date_from=D2, date_to=D6, group_by="branch,product"
        )

    def figures(r: Any) -> tuple[int, ...]:
        return (r.loss_milli, r.loss_value, r.gain_milli, r.gain_value, r.net_milli, r.net_value)

    # ST1 B -1 (3.00); ST2 A +0.5 (0.72), W -0.246 (1.11), B -0.5 (1.60); ST3 B2 A +1 (1.20).
    assert {r.sku: figures(r) for r in by_product.rows} == {
        "A": (0, 0, 1500, 192, 1500, 192),
        "B": (1500, 460, 0, 0, -1500, -460),
        "W": (246, 111, 0, 0, -246, -111),
    }
    assert [r.sku for r in by_product.rows] == ["A", "B", "W"]
    assert figures(by_product.totals) == (1746, 571, 1500, 192, -246, -379)
    assert {(r.branch, r.sku): figures(r) for r in by_branch_product.rows} == {
        ("B1", "A"): (0, 0, 500, 72, 500, 72),
        ("B1", "B"): (1500, 460, 0, 0, -1500, -460),
        ("B1", "W"): (246, 111, 0, 0, -246, -111),
        ("B2", "A"): (0, 0, 1000, 120, 1000, 120),
    }


# --- the routes: CSV downloads and problems ---------------------------------------------

Client = Callable[[str | None], Awaitable[Any]]


def split(text: str) -> list[str]:
    return text.split(",")


def fields(item: str) -> dict[str, str]:
    """One listed difference, "field=returns source=agent ...", as a dict."""
    return dict(part.split("=", 1) for part in item.split(" "))


async def _csv(client: Any, path: str) -> tuple[list[str], list[dict[str, str]]]:
    response = await client.get(f"/api/v1/reports/{path}&format=csv")
    assert response.status_code == 200, (path, response.text)
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    reader = csv.DictReader(io.StringIO(response.text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


async def test_csv_downloads_to_the_cent(central: Any, client_as: Client) -> None:
    await load(central.sessionmaker)
    client = await client_as("analyst")

    header, rows = await _csv(client, f"gross-margin?{PERIOD}")
    assert header == [
        "branch",
        "net_sales",
        "cost_of_goods_sold",
        "margin",
        "margin_pct",
        "cost_corrections",
    ]
    # B1: 30.65 - 3.35 VAT - 4.50 returned + 0.41 = 23.21; cost 14.19; 9.02 / 23.21.
    assert rows[0] == {
        "branch": "B1",
        "net_sales": "23.21",
        "cost_of_goods_sold": "14.19",
        "margin": "9.02",
        "margin_pct": "38.86",
        "cost_corrections": "0.00",
    }
    assert rows[1]["branch"] == "B2"
    assert (rows[1]["net_sales"], rows[1]["margin"]) == ("2.07", "0.87")

    header, rows = await _csv(client, f"abc?{PERIOD}&branch=B1&a_pct=50&b_pct=80")
    assert header == ["sku", "value", "share_pct", "cumulative_pct", "abc_class"]
    assert [list(r.values()) for r in rows] == [
        ["W", "9.79", "37.44", "37.44", "A"],
        ["B", "9.00", "34.42", "71.85", "A"],
        ["A", "7.36", "28.15", "100.00", "B"],
    ]

    header, rows = await _csv(client, f"write-offs?{STOCK_PERIOD}&group_by=branch,product")
    assert header == ["branch", "sku", "qty", "value"]
    assert rows[0] == {"branch": "B1", "sku": "A", "qty": "2.000", "value": "2.64"}
    assert rows[1] == {"branch": "B1", "sku": "B", "qty": "0.500", "value": "1.60"}

    header, rows = await _csv(client, f"shrinkage?{STOCK_PERIOD}&group_by=product")
    assert header == split("sku,loss_qty,loss_value,gain_qty,gain_value,net_qty,net_value")
    by_sku = {r["sku"]: list(r.values()) for r in rows}
    assert by_sku["A"] == split("A,0.000,0.00,1.500,1.92,1.500,1.92")
    assert by_sku["W"] == split("W,0.246,1.11,0.000,0.00,-0.246,-1.11")

    header, rows = await _csv(client, "shifts?date_from=2026-11-05&date_to=2026-11-05&branch=B1")
    assert header == split(
        "branch,shift_id,till,cashier,local_date,closed,z_report_number,recorded_receipts,"
        "recorded_sales,recorded_returns_total,reported_receipts,reported_sales,"
        "reported_returns_total,z_receipts,z_turnover,z_storno,differences,id_conflicts,"
        "recorded_no_receipt_returns_total,expected_cash,counted_cash,cash_difference,z_printed"
    )
    (s5,) = rows
    # Counts stay integers; money (sales, returns, turnover, storno) is decimal text.
    assert [v for k, v in s5.items() if k != "differences"] == [
        *split(
            "B1,S5,T1,ann,2026-11-05,true,9,2,13.68,4.50,3,13.68,0.00,2,13.68,4.00,0,0.00,"
            "3.98,3.90,-0.08"
        ),
        "",  # z_printed: the close carries its Z
    ]

    header, rows = await _csv(client, f"loss-prevention?{PERIOD}&branch=B1&factor=2&min_count=1")
    ann = {r["cashier"]: r for r in rows}["ann"]
    assert header == split(
        "branch,cashier,receipts,voided_lines,returns,returns_amount,manual_discount_lines,"
        "manual_discount_amount,voided_lines_rate,returns_rate,manual_discounts_rate,flags,"
        "no_receipt_returns,no_receipt_returns_rate"
    )
    assert list(ann.values()) == [
        *split("B1,ann,1,1,1,4.50,1,0.60,100.00,100.00,100.00"),
        "voided_lines; returns; manual_discounts",
        "0",
        "0.00",
    ]

    header, rows = await _csv(client, "sync-health?")
    assert header == split(
        "branch,name,active,last_event_at,last_received_at,receive_age_s,contiguous_seq,"
        "max_seq,seq_lag,heartbeat_at,heartbeat_age_s,outbox_backlog,applied_version,"
        "agent_version,open_dead_letters,recorded_again_open,outbox_held,agent_replaced_at,lost_events,"
        "agent_restart_reason,clock_offset_ms,clock_off,agent_conflict_at,"
        "published_version,up_to_date,timezone,agent_timezone,timezone_mismatch"
    )
    b1, b2 = rows
    assert (b1["branch"], b1["name"], b1["active"]) == ("B1", "Harbour", "true")
    assert b1["last_event_at"] == "2026-11-06T09:00:00+00:00"
    assert (b1["contiguous_seq"], b1["max_seq"], b1["seq_lag"]) == ("19", "19", "3")
    assert (b1["heartbeat_at"], b1["outbox_backlog"], b1["applied_version"]) == (
        "2026-11-06T12:00:00+00:00",
        "5",
        "42",
    )
    assert (b1["agent_version"], b1["open_dead_letters"]) == ("1.4.2", "2")
    assert (b1["outbox_held"], b2["outbox_held"]) == ("20; 21", "")
    assert (b1["clock_offset_ms"], b1["clock_off"]) == ("-95000", "true")
    assert (b2["clock_offset_ms"], b2["clock_off"]) == ("", "false")
    # Central's record of each branch's zone; no agent said its own (agent_timezone empty).
    assert (b1["timezone"], b1["agent_timezone"], b1["timezone_mismatch"]) == (
        "Europe/Berlin",
        "",
        "false",
    )
    # No agent database replaced: its columns are there, empty.
    assert (b1["agent_replaced_at"], b1["lost_events"]) == ("", "0")
    assert (b1["published_version"], b2["published_version"]) == ("0", "0")  # a count
    assert b1["receive_age_s"].isdigit()
    assert b1["heartbeat_age_s"].isdigit()
    assert [b2[k] for k in ("branch", "seq_lag", "outbox_backlog", "open_dead_letters")] == [
        *("B2", "", "", "0")
    ]


async def test_shift_differences_in_csv_are_decimal_money(central: Any, client_as: Client) -> None:
    """Expected behaviour being fixed: money in a difference is decimal text like every
    other money cell; receipt counts stay integers."""
    await load(central.sessionmaker)
    client = await client_as("analyst")
    _, rows = await _csv(client, "shifts?date_from=2026-11-05&date_to=2026-11-05&branch=B1")
    assert [fields(item) for item in rows[0]["differences"].split("; ")] == [
        fields("field=receipts source=agent recorded=2 reported=3 difference=1"),
        fields("field=returns source=agent recorded=4.50 reported=0.00 difference=-4.50"),
        fields("field=returns source=fiscal_printer recorded=4.50 reported=4.00 difference=-0.50"),
        fields(
            "field=payment:credit_card source=agent recorded=5.20 reported=5.00 difference=-0.20"
        ),
    ]


async def test_bad_parameters_of_stock_shift_and_loss_reports_are_problems(
    central: Any, client_as: Client
) -> None:
    async with central.sessionmaker() as session, session.begin():
        await add_branch(session, code="B1", name="Harbour", timezone="Europe/Berlin")
    client = await client_as("merchandiser")
    reversed_dates = "date_from=2026-11-03&date_to=2026-11-02"
    too_long = "date_from=2025-01-01&date_to=2026-11-02"  # 671 days, 366 allowed
    cases: list[tuple[str, int, str]] = []
    for report in ("write-offs", "shrinkage", "shifts", "loss-prevention"):
        ok = await client.get(f"/api/v1/reports/{report}?{PERIOD}&branch=B1")
        assert ok.status_code == 200, (report, ok.text)
        cases += [
            (f"{report}?{reversed_dates}", 422, "date_from"),
            (f"{report}?{too_long}", 422, "date_to"),
            (f"{report}?{PERIOD}&branch=NOPE", 404, "branch"),
        ]
    cases += [
        (f"write-offs?{PERIOD}&group_by=weather", 422, "group_by"),
        (f"shrinkage?{PERIOD}&group_by=reason", 422, "group_by"),  # write-offs only
        (f"shrinkage?{PERIOD}&group_by=product,product", 422, "group_by"),
        (f"loss-prevention?{PERIOD}&factor=0", 422, "factor"),
        (f"loss-prevention?{PERIOD}&min_count=-1", 422, "min_count"),
        (f"shifts?{PERIOD}&format=xml", 422, "format"),
    ]
    for path, status, field in cases:
        response = await client.get(f"/api/v1/reports/{path}")
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json"), path
        problem = response.json()
        assert problem["status"] == status, path
        assert problem["instance"] == f"/api/v1/reports/{path.split('?')[0]}"
        assert problem["title"], path
        assert problem["detail"], path
        assert [e["field"] for e in problem["errors"]] == [field], path
